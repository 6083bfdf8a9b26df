"""The raw design: a plain ``websockets`` server with Redis pub/sub and no Django (bench/).

* ``/ws/chat/<room>/``; a client frame ``{"message": TEXT}`` is encoded once as
  ``{"message": TEXT}`` and PUBLISHed once to Redis;
* each process holds one pub/sub connection with one SUBSCRIBE per room that has local sockets,
  and hands the received text to all of them with ``websockets.broadcast()`` (no backpressure: a
  slow socket's frames pile up in its write buffer);
* nothing is stored, numbered or replayed.

Same transport settings as ``hubbub serve``: uvloop, 64 KiB frames, no compression, 20 s pings.

    python -m bench.reference.raw --port 8201 --redis redis://127.0.0.1:6379/0
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import signal
import sys
from http import HTTPStatus
from typing import Any

import redis.asyncio as aioredis
import uvloop
from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

PATH_RE = re.compile(r"^/ws/chat/([A-Za-z0-9_-]{1,64})/?(?:\?.*)?$")
CHANNEL_PREFIX = "rawchat:"


class Fanout:
    """One Redis pub/sub connection per process; one SUBSCRIBE per room with local sockets."""

    def __init__(self, redis_url: str) -> None:
        # Publishers wait for one of 64 connections: redis-py 8's default pool raises
        # MaxConnectionsError past 100 concurrent commands.
        pool = aioredis.BlockingConnectionPool.from_url(redis_url, max_connections=64, timeout=None)
        self.redis = aioredis.Redis(connection_pool=pool)
        self.pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        self.rooms: dict[str, set[ServerConnection]] = {}
        self.reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.pubsub.subscribe(CHANNEL_PREFIX + "-")  # a connection for the reader to wait on
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while True:
            message = await self.pubsub.get_message(timeout=1.0)
            if message is None or message["type"] != "message":
                continue
            room = message["channel"].decode()[len(CHANNEL_PREFIX):]
            members = self.rooms.get(room)
            if members:
                broadcast(members, message["data"], text=True)

    async def join(self, room: str, ws: ServerConnection) -> None:
        members = self.rooms.get(room)
        if members is None:
            members = self.rooms[room] = set()
            await self.pubsub.subscribe(CHANNEL_PREFIX + room)
        members.add(ws)

    async def leave(self, room: str, ws: ServerConnection) -> None:
        members = self.rooms.get(room)
        if members is None:
            return
        members.discard(ws)
        if not members:
            del self.rooms[room]
            await self.pubsub.unsubscribe(CHANNEL_PREFIX + room)

    async def publish(self, room: str, text: str) -> None:
        await self.redis.publish(CHANNEL_PREFIX + room, text)


def refuse(connection: ServerConnection, request: Request) -> Response | None:
    if PATH_RE.match(request.path):
        return None
    return Response(HTTPStatus.FORBIDDEN.value, "Forbidden", Headers(), b"")


async def run(host: str, port: int, redis_url: str) -> None:
    fanout = Fanout(redis_url)
    await fanout.start()

    async def handler(ws: ServerConnection) -> None:
        match = PATH_RE.match(ws.request.path if ws.request else "")
        assert match is not None
        room = match.group(1)
        await fanout.join(room, ws)
        try:
            async for frame in ws:
                try:
                    data: Any = json.loads(frame)
                    text = json.dumps({"message": str(data["message"])})
                except (ValueError, KeyError, TypeError):
                    continue
                await fanout.publish(room, text)
        finally:
            await fanout.leave(room, ws)

    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set_result, None)
    async with serve(handler, host, port, process_request=refuse, compression=None,
                     max_size=64 * 1024, ping_interval=20, ping_timeout=20, server_header=None):
        print(f"raw: serving on ws://{host}:{port}", flush=True)
        await stop
    if fanout.reader is not None:
        fanout.reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await fanout.reader


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--redis", required=True)
    args = parser.parse_args()
    uvloop.run(run(args.host, args.port, args.redis))
    return 0


if __name__ == "__main__":
    sys.exit(main())
