"""Domain errors. Services raise them; the HTTP API and the WebSocket consumer turn them into
``{"error": code, "detail": text}`` answers with the status or close code that fits."""

from __future__ import annotations


class HubbubError(Exception):
    code = "bad_request"
    status = 400

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class Invalid(HubbubError):
    code = "invalid"
    status = 400


class Unauthorized(HubbubError):
    code = "unauthorized"
    status = 401


class Forbidden(HubbubError):
    code = "forbidden"
    status = 403


class NotFound(HubbubError):
    code = "not_found"
    status = 404


class Conflict(HubbubError):
    code = "conflict"
    status = 409


class EmptyMessage(HubbubError):
    code = "empty_message"
    status = 400


class TooLong(HubbubError):
    code = "too_long"
    status = 400


class UnsupportedConversion(HubbubError):
    code = "unsupported_conversion"
    status = 400


class BadOption(HubbubError):
    code = "bad_option"
    status = 400


class TooLarge(HubbubError):
    code = "too_large"
    status = 413


class NotReady(HubbubError):
    code = "not_ready"
    status = 409


class RateLimited(HubbubError):
    """Too many attempts: try again in ``retry_after`` seconds (also sent as ``Retry-After``)."""

    code = "rate_limited"
    status = 429

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail)
        self.retry_after = retry_after
