from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse
from django.urls import path

from hubbub import ops
from hubbub.api import api, json_error_view
from hubbub.web import views as web

urlpatterns = [
    path("api/", api.urls),
    path("livez", ops.livez),
    path("readyz", ops.readyz),
    path("metrics", ops.metrics_view),
    path("", web.app, name="app"),
    path("r/<str:room>/", web.app, name="room"),
]


# Errors outside the API are JSON too: programs never have to parse an HTML error page.
def handler400(request: HttpRequest, exception: Any = None) -> HttpResponse:
    return json_error_view(400, "bad_request", "bad request")


def handler403(request: HttpRequest, exception: Any = None) -> HttpResponse:
    return json_error_view(403, "forbidden", "forbidden")


def handler404(request: HttpRequest, exception: Any = None) -> HttpResponse:
    return json_error_view(404, "not_found", f"no such resource: {request.path}")


def handler500(request: HttpRequest) -> HttpResponse:
    return json_error_view(500, "server_error", "the server failed; try again")
