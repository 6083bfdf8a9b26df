"""ASGI middleware for sockets: the Origin check and bearer-token authentication."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from channels.auth import AuthMiddlewareStack
from channels.db import database_sync_to_async
from channels.security.websocket import WebsocketDenier
from django.conf import settings

from hubbub.accounts import services
from hubbub.errors import Unauthorized

Scope = dict[str, Any]


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value)
    return None


def host_allowed(host: str, allowed: list[str] | tuple[str, ...]) -> bool:
    """Exact host match (``.example.com`` also matches its subdomains; ``*`` matches all).

    Never a substring match: ``evil-localhost.com`` is not ``localhost``.
    """
    host = host.lower().strip("[]")
    for pattern in allowed:
        pattern = pattern.lower().strip("[]")
        if pattern == "*" or host == pattern:
            return True
        if pattern.startswith(".") and (host == pattern[1:] or host.endswith(pattern)):
            return True
    return False


def origin_allowed(origin: bytes | None, allowed: list[str] | tuple[str, ...]) -> bool:
    """Programs send no Origin and pass; a browser's Origin host must be an allowed host (the port
    is not compared)."""
    if origin is None:
        return True
    try:
        parts = urlsplit(origin.decode("latin-1").strip())
        host = parts.hostname
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not host:
        return False  # includes the opaque origin "null"
    return host_allowed(host, allowed)


class OriginCheckMiddleware:
    """Refuses, at the handshake (HTTP 403), sockets whose Origin host is not allowed.

    Channels' ``AllowedHostsOriginValidator`` also refuses handshakes without any Origin, which the
    contract lets programs make, hence this check of our own.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> Any:
        if scope["type"] == "websocket" and not origin_allowed(
            _header(scope, b"origin"), settings.ALLOWED_HOSTS
        ):
            return await WebsocketDenier()(scope, receive, send)
        return await self.app(scope, receive, send)


class TokenAuthMiddleware:
    """``Authorization: Bearer <token>`` in the handshake sets ``scope["user"]``; a token that
    does not authenticate sets ``scope["auth_error"]`` (the consumer closes with 4401). Tokens in
    the URL are never read."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> Any:
        header = _header(scope, b"authorization")
        if header is not None:
            scope = dict(scope)
            scheme, _, raw = header.decode("latin-1").partition(" ")
            if scheme.lower() != "bearer" or not raw.strip():
                scope["auth_error"] = "the Authorization header must be 'Bearer <token>'"
            else:
                try:
                    scope["user"] = await database_sync_to_async(services.token_authenticate)(
                        raw=raw.strip()
                    )
                except Unauthorized as exc:
                    scope["auth_error"] = exc.detail
        return await self.app(scope, receive, send)


def socket_stack(app: Any) -> Any:
    return OriginCheckMiddleware(AuthMiddlewareStack(TokenAuthMiddleware(app)))
