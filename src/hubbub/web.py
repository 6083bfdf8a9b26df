"""The page served at ``/``. The full browser client comes with the web UI issue; until then this
page says what is running and where the API and the socket endpoints are."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import ensure_csrf_cookie

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Hubbub</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{font:16px/1.5 system-ui,sans-serif;max-width:40rem;margin:3rem auto;padding:0 1rem}
code{background:#8882;padding:0 .2em;border-radius:3px}</style></head>
<body><h1>Hubbub is running</h1>
<p>Chat sockets: <code>/ws/chat/&lt;room&gt;/</code> (subprotocol <code>hubbub.v1</code> for the
rich mode). HTTP API: <code>/api/</code>, schema at <a href="/api/openapi.json">/api/openapi.json</a>.
Health: <a href="/livez">/livez</a>, <a href="/readyz">/readyz</a>, <a href="/metrics">/metrics</a>.</p>
</body></html>
"""


@ensure_csrf_cookie
def index(request: HttpRequest) -> HttpResponse:
    return HttpResponse(PAGE)
