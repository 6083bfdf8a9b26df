"""The ASGI application: HTTP through Django, sockets through Channels, lifespan for the hub."""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hubbub.settings")

from django.core.asgi import get_asgi_application

django_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.conf import settings  # noqa: E402
from django.urls import re_path  # noqa: E402

from hubbub.conversions.consumers import JobConsumer  # noqa: E402
from hubbub.realtime.consumers import ChatConsumer, RefuseConsumer  # noqa: E402
from hubbub.realtime.hub import get_hub  # noqa: E402
from hubbub.realtime.middleware import socket_stack  # noqa: E402

log = logging.getLogger(__name__)

# The room pattern is deliberately wide: a bad name gets close code 4400 from the consumer
# (a clear answer) instead of a routing failure.
websocket_urlpatterns = [
    re_path(r"^ws/chat/(?P<room>[^/]*)/?$", ChatConsumer.as_asgi()),
    re_path(r"^ws/jobs/(?P<job_id>[^/]+)/?$", JobConsumer.as_asgi()),
    re_path(r"", RefuseConsumer.as_asgi()),  # any other path: refused at the handshake (403)
]

router = ProtocolTypeRouter(
    {"http": django_app, "websocket": socket_stack(URLRouter(websocket_urlpatterns))}
)


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await _lifespan(receive, send)
        return
    await router(scope, receive, send)


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
