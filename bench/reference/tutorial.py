"""The Channels tutorial's chat design, as a one-file Django + Channels project (the comparison
baseline of bench/).

* one ``AsyncWebsocketConsumer`` per socket at ``/ws/chat/<room>/``;
* ``group_add`` on connect, ``group_send({"type": "chat.message", "message": ...})`` on receive;
* ``chat_message`` encodes JSON per member: ``self.send(text_data=json.dumps({"message": ...}))``;
* ``channels_redis.core.RedisChannelLayer`` with its default capacity (100) and expiry.

It is served by uvicorn with the same flags as ``hubbub serve`` (uvloop, httptools,
websockets-sansio, 64 KiB frames, no per-message deflate, 20 s pings), so the server is not what
differs. Nothing is stored.

One deviation from the tutorial, needed to run at all: the hosts entry sets ``socket_timeout=10``.
With redis-py 8 the default socket timeout (5 s) equals the layer's ``BZPOPMIN`` timeout, so an
idle consumer dies with ``TimeoutError`` after 5 s (channels_redis#422, docs/decisions.md).

    python -m bench.reference.tutorial --port 8101 --redis redis://127.0.0.1:6379/0
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from typing import Any

import django
from django.conf import settings


def configure(redis_url: str) -> None:
    settings.configure(
        DEBUG=False,
        SECRET_KEY="bench-tutorial-not-secret",
        ALLOWED_HOSTS=["*"],
        INSTALLED_APPS=[
            "django.contrib.auth",
            "django.contrib.contenttypes",
            "django.contrib.sessions",
            "channels",
        ],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        ROOT_URLCONF=__name__,
        ASGI_APPLICATION=f"{__name__}.application",
        USE_TZ=True,
        CHANNEL_LAYERS={
            "default": {
                "BACKEND": "channels_redis.core.RedisChannelLayer",
                "CONFIG": {"hosts": [{"address": redis_url, "socket_timeout": 10}]},
            }
        },
        LOGGING={"version": 1, "disable_existing_loggers": False,
                 "root": {"handlers": [], "level": "WARNING"}},
    )
    django.setup()


urlpatterns: list[Any] = []


def build_application() -> Any:
    from channels.auth import AuthMiddlewareStack
    from channels.generic.websocket import AsyncWebsocketConsumer
    from channels.routing import ProtocolTypeRouter, URLRouter
    from channels.security.websocket import AllowedHostsOriginValidator
    from django.core.asgi import get_asgi_application
    from django.urls import re_path

    class ChatConsumer(AsyncWebsocketConsumer):
        room_group_name: str

        async def connect(self) -> None:
            room_name = self.scope["url_route"]["kwargs"]["room_name"]
            self.room_group_name = f"chat_{room_name}"
            await self.channel_layer.group_add(self.room_group_name, self.channel_name)
            await self.accept()

        async def disconnect(self, close_code: int) -> None:
            await self.channel_layer.group_discard(self.room_group_name, self.channel_name)

        async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
            text_data_json = json.loads(text_data or "{}")
            message = text_data_json["message"]
            await self.channel_layer.group_send(
                self.room_group_name, {"type": "chat.message", "message": message}
            )

        async def chat_message(self, event: dict[str, Any]) -> None:
            message = event["message"]
            await self.send(text_data=json.dumps({"message": message}))

    websocket_urlpatterns = [re_path(r"ws/chat/(?P<room_name>\w+)/$", ChatConsumer.as_asgi())]
    return ProtocolTypeRouter({
        "http": get_asgi_application(),
        "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    })


application: Any = None


def main() -> int:
    global application
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis", required=True)
    args = parser.parse_args()
    configure(args.redis)
    application = build_application()
    import uvicorn

    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    uvicorn.run(  # the flags of `hubbub serve` (src/hubbub/cli.py)
        application, host=args.host, port=args.port, loop="uvloop", http="httptools",
        ws="websockets-sansio", ws_max_size=64 * 1024, ws_per_message_deflate=False,
        ws_ping_interval=20.0, ws_ping_timeout=20.0, lifespan="off", timeout_graceful_shutdown=5,
        log_level="info", access_log=False, server_header=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
