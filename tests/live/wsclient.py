"""A recording WebSocket client for the live suites (the ``websockets`` library, a real socket)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection


class Socket:
    """Connects to a chat room and records every frame it receives, in order, in the background."""

    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn
        self.received: list[dict[str, Any]] = []
        self.closed_code: int | None = None
        self._changed = asyncio.Event()
        self._reader = asyncio.ensure_future(self._read())

    @classmethod
    async def open(cls, base: str, room: str, *, rich: bool = False, token: str | None = None,
                   origin: str | None = None, after: int | None = None,
                   headers: dict[str, str] | None = None,
                   ping_interval: float | None = 20.0) -> Socket:
        url = f"{base}/ws/chat/{room}/" + (f"?after={after}" if after is not None else "")
        extra = dict(headers or {})
        if token:
            extra["Authorization"] = f"Bearer {token}"
        conn = await websockets.connect(
            url, subprotocols=["hubbub.v1"] if rich else None,  # type: ignore[list-item]
            additional_headers=extra, origin=origin, max_size=None, open_timeout=10,  # type: ignore[arg-type]
            ping_interval=ping_interval,
        )
        return cls(conn)

    async def _read(self) -> None:
        try:
            async for frame in self.conn:
                self.received.append(json.loads(frame))
                self._changed.set()
        except websockets.ConnectionClosed:
            pass
        finally:
            rcvd = self.conn.protocol.close_rcvd
            self.closed_code = rcvd.code if rcvd is not None else 1006
            self._changed.set()

    async def send(self, obj: Any) -> None:
        await self.conn.send(obj if isinstance(obj, str | bytes) else json.dumps(obj))

    async def wait_for(self, predicate: Any, timeout: float = 10.0, what: str = "frame",
                       since: int = 0) -> Any:
        """The first received frame (from index ``since`` on) that satisfies ``predicate``."""
        deadline = time.monotonic() + timeout
        while True:
            for item in self.received[since:]:
                if predicate(item):
                    return item
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.closed_code is not None:
                raise AssertionError(f"no {what} within {timeout}s; got {self.received[-5:]}, "
                                     f"closed={self.closed_code}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def wait_closed(self, timeout: float = 10.0) -> int:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._reader), timeout)
        assert self.closed_code is not None, "socket still open"
        return self.closed_code

    async def wait_until(self, condition: Any, timeout: float = 10.0, what: str = "condition") -> None:
        """Wait until ``condition()`` holds, checking it whenever a frame arrives."""
        deadline = time.monotonic() + timeout
        while not condition():
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.closed_code is not None:
                raise AssertionError(f"no {what} within {timeout}s; got {self.received[-5:]}, "
                                     f"closed={self.closed_code}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    def latest(self, kind: str) -> dict[str, Any] | None:
        """The last received frame of ``type`` ``kind``, or None."""
        for item in reversed(self.received):
            if item.get("type") == kind:
                return item
        return None

    async def wait_presence(self, users: list[str], timeout: float = 10.0) -> list[str]:
        """Wait until the latest presence event lists exactly ``users`` (in any order)."""
        want = sorted(users)
        deadline = time.monotonic() + timeout
        while True:
            latest = self.latest("presence")
            if latest is not None and sorted(latest["users"]) == want:
                return list(latest["users"])
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.closed_code is not None:
                raise AssertionError(f"presence never became {want} within {timeout}s; latest "
                                     f"{latest}, closed={self.closed_code}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    def messages(self) -> list[dict[str, Any]]:
        return [e for e in self.received if e.get("type") == "message"]

    def ids(self) -> list[int]:
        return [e["id"] for e in self.messages()]

    async def wait_ids(self, upto: int, timeout: float = 15.0) -> list[int]:
        await self.wait_for(lambda e: e.get("type") == "message" and e["id"] >= upto, timeout,
                            what=f"message id {upto}")
        return self.ids()

    async def post(self, text: str, client_id: str, timeout: float = 10.0) -> dict[str, Any]:
        """Post and wait for the acknowledgement (our own MessageEvent)."""
        await self.send({"message": text, "client_id": client_id})
        return dict(await self.wait_for(
            lambda e: e.get("type") == "message" and e.get("client_id") == client_id, timeout,
            what=f"ack of {client_id}"))

    async def post_or_error(self, text: str, client_id: str, timeout: float = 10.0) -> dict[str, Any]:
        """Post and return what answers it: the acknowledgement or an ``error`` event. Only for
        a socket with one post in flight at a time (errors carry no client_id)."""
        start = len(self.received)
        await self.send({"message": text, "client_id": client_id})
        return dict(await self.wait_for(
            lambda e: e.get("type") == "error"
            or (e.get("type") == "message" and e.get("client_id") == client_id),
            timeout, what=f"answer to {client_id}", since=start))

    async def close(self) -> None:
        await self.conn.close()
        with contextlib.suppress(BaseException):
            await self._reader
