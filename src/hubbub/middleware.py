"""HTTP middleware."""

from __future__ import annotations

import json
from collections.abc import Callable
from http import HTTPStatus

from django.http import HttpRequest, HttpResponse

_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
          405: "method_not_allowed", 413: "too_large", 415: "unsupported_media_type"}


class JsonErrorsMiddleware:
    """Every error answer is ``{"error", "detail"}`` JSON, whichever layer produced it (a 405 from
    the router, a 403 from Django's CSRF check, …): programs never parse an HTML error page."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if response.status_code < 400 or response.get("Content-Type", "").startswith("application/json"):
            return response
        status = response.status_code
        try:
            phrase = HTTPStatus(status).phrase.lower()
        except ValueError:
            phrase = "error"
        if status == 405 and response.get("Allow"):
            phrase += f"; allowed: {response['Allow']}"
        body = {"error": _CODES.get(status, "server_error" if status >= 500 else "error"), "detail": phrase}
        replacement = HttpResponse(json.dumps(body), status=status, content_type="application/json")
        if response.get("Allow"):
            replacement["Allow"] = response["Allow"]
        return replacement
