"""ASGI middleware for sockets: the Origin check and authentication (bearer token or session)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import import_module
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.contrib.auth import get_user
from django.http.cookie import parse_cookie

from hubbub.accounts import services
from hubbub.errors import Unauthorized
from hubbub.realtime import db

SessionStore = import_module(settings.SESSION_ENGINE).SessionStore

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


def foreign_origin(scope: Scope) -> bool:
    """A handshake whose Origin host is not an allowed host (see :func:`origin_allowed`)."""
    return not origin_allowed(_header(scope, b"origin"), settings.ALLOWED_HOSTS)


class OriginCheckMiddleware:
    """Refuses, at the handshake (HTTP 403), sockets whose Origin host is not allowed.

    Channels' ``AllowedHostsOriginValidator`` also refuses handshakes without any Origin, which the
    contract lets programs make, hence this check of our own.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> Any:
        if scope["type"] == "websocket" and foreign_origin(scope):
            return await WebsocketDenier()(scope, receive, send)
        return await self.app(scope, receive, send)


@dataclass(frozen=True, slots=True)
class SocketAuth:
    user: Any  # an active User, or None (anonymous: a guest when guests are allowed)
    session_key: str | None  # the browser session the socket authenticated with
    error: str | None  # a bearer token that did not authenticate


def authenticate_socket(*, bearer: str | None, session_key: str | None) -> SocketAuth:
    """Who opens a socket, in one database call: ``Authorization: Bearer <token>`` first, else the
    session cookie (the same checks as Django's ``get_user``: the session's user exists, is
    active and the session hash still matches the password)."""
    if bearer is not None:
        scheme, _, raw = bearer.partition(" ")
        if scheme.lower() != "bearer" or not raw.strip():
            return SocketAuth(None, None, "the Authorization header must be 'Bearer <token>'")
        try:
            return SocketAuth(services.token_authenticate(raw=raw.strip()), None, None)
        except Unauthorized as exc:
            return SocketAuth(None, None, exc.detail)
    if not session_key:
        return SocketAuth(None, None, None)
    session = SessionStore(session_key)
    if not session.exists(session_key):
        return SocketAuth(None, None, None)
    user = get_user(SimpleNamespace(session=session))  # type: ignore[arg-type]
    return SocketAuth(user if user.is_authenticated else None, session_key, None)


def session_key_from(scope: Scope) -> str | None:
    cookie = _header(scope, b"cookie")
    if cookie is None:
        return None
    jar = parse_cookie(cookie.decode("latin-1"))
    return jar.get(settings.SESSION_COOKIE_NAME) or None


class SocketRouter:
    """Checks the Origin, routes a socket by path and authenticates it, then hands the connection
    to its :class:`~hubbub.realtime.sockets.Socket` class. Sets ``scope["route"]`` (the path's named
    groups), ``scope["user"]`` (or None), ``scope["session_key"]`` and, for a bearer token that does
    not authenticate, ``scope["auth_error"]`` (the socket closes with 4401). Tokens in the URL are
    never read.

    One database call per handshake, no copy of the scope and no middleware frames kept alive for
    the connection's lifetime: Channels' URLRouter, cookie, session and auth middlewares took a copy
    each and kept a session object per socket, several KB for every idle connection
    (docs/performance.md).
    """

    def __init__(self, routes: list[tuple[str, Any]], fallback: Any) -> None:
        self.routes = [(re.compile(pattern), cls) for pattern, cls in routes]
        self.fallback = fallback

    def _route(self, path: str) -> tuple[re.Match[str] | None, Any]:
        for pattern, cls in self.routes:
            match = pattern.match(path)
            if match is not None:
                return match, cls
        return None, None

    async def open(self, scope: Scope, receive: Any, send: Any) -> Any:
        """The Socket for this connection, or None when it was refused at the handshake."""
        if foreign_origin(scope):
            await WebsocketDenier()(scope, receive, send)
            return None
        match, cls = self._route(scope["path"].lstrip("/"))
        if match is None:
            await self.fallback(scope, receive, send)
            return None
        header = _header(scope, b"authorization")
        bearer = None if header is None else header.decode("latin-1")
        session_key = None if bearer is not None else session_key_from(scope)
        if bearer is None and session_key is None:
            auth = SocketAuth(None, None, None)
        else:
            auth = await db.run(authenticate_socket)(bearer=bearer, session_key=session_key)
        scope["route"] = match.groupdict()
        scope["user"], scope["session_key"] = auth.user, auth.session_key
        if auth.error is not None:
            scope["auth_error"] = auth.error
        return cls(scope, receive, send)
