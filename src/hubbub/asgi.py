"""The ASGI application: HTTP through Django, sockets through Channels, lifespan for the hub."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from typing import Any

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hubbub.settings")

from django.core.asgi import get_asgi_application

django_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter  # noqa: E402
from django.conf import settings  # noqa: E402

from hubbub.conversions.consumers import JobSocket  # noqa: E402
from hubbub.realtime.consumers import ChatSocket, refuse_socket  # noqa: E402
from hubbub.realtime.hub import get_hub  # noqa: E402
from hubbub.realtime.middleware import OriginCheckMiddleware, SocketRouter  # noqa: E402

log = logging.getLogger(__name__)

# The room pattern is deliberately wide: a bad name gets close code 4400 from the socket (a clear
# answer) instead of a routing failure. Any other path is refused at the handshake (HTTP 403).
sockets = OriginCheckMiddleware(SocketRouter(
    [(r"^ws/chat/(?P<room>[^/]*)/?$", ChatSocket.as_asgi()),
     (r"^ws/jobs/(?P<job_id>[^/]+)/?$", JobSocket.as_asgi())],
    fallback=refuse_socket,
))

router = ProtocolTypeRouter({"http": django_app, "websocket": sockets})


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    if scope["type"] == "http" and scope["method"] == "POST" and scope["path"].rstrip("/") == UPLOAD_PATH:
        await _limited_upload(scope, receive, send)
        return
    await router(scope, receive, send)


UPLOAD_PATH = "/api/conversions"
ENVELOPE = 64 * 1024  # the multipart headers around the file


async def _too_large(send: Any) -> None:
    body = json.dumps({"error": "too_large",
                       "detail": f"the upload is over {settings.HUBBUB_MAX_UPLOAD_MB} MB"}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def _limited_upload(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Refuse an upload over HUBBUB_MAX_UPLOAD_MB at once: from its Content-Length before a byte
    of the body is read (Django's ASGI handler reads the whole body before any middleware runs),
    and, for a body without a length, as soon as it passes the limit. The connection is kept
    open: the server reads and drops the rest of the body (never storing it), because closing a
    socket with unread data resets it and the client would lose the 413 already sent."""
    limit = int(settings.HUBBUB_MAX_UPLOAD_MB) * 1024 * 1024 + ENVELOPE
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                if int(value) > limit:
                    await _too_large(send)
                    return
            except ValueError:
                pass
    received = 0
    exceeded = False

    async def limited_receive() -> dict[str, Any]:
        nonlocal received, exceeded
        message: dict[str, Any] = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                exceeded = True
                return {"type": "http.disconnect"}  # Django stops reading and answers nothing
        return message

    await router(scope, limited_receive, send)
    if exceeded:
        await _too_large(send)


async def _lifespan(receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            try:
                await get_hub().start()
                if not settings.HUBBUB_REDIS_URL:
                    # The embedded default converts in-process; with Redis, `hubbub worker`s do.
                    from hubbub.conversions.worker import start_embedded

                    start_embedded()
            except Exception as exc:
                log.exception("start-up failed")
                await send({"type": "lifespan.startup.failed", "message": str(exc)})
                return
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            from hubbub.conversions.worker import stop_embedded

            await asyncio.get_running_loop().run_in_executor(None, stop_embedded)
            await get_hub().stop()
            await send({"type": "lifespan.shutdown.complete"})
            return
