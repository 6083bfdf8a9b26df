"""A small synchronous wrapper for scripts: the asyncio client on a private event-loop thread.

    from hubbub.client import Client
    with Client("http://127.0.0.1:8000", token=TOKEN) as hub:
        hub.send("lobby", "deploy finished")
        for message in hub.tail("lobby"):
            print(message.user, message.message)
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Coroutine, Iterator
from concurrent.futures import Future
from typing import Any, TypeVar

from hubbub.client.aio import HubbubClient, Message, Room

T = TypeVar("T")


class Client:
    def __init__(self, url: str = "http://127.0.0.1:8000", token: str | None = None,
                 *, timeout: float = 10.0) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="hubbub-client", daemon=True)
        self._thread.start()
        self._timeout = timeout
        self._async = self._call(self._make(url, token, timeout))
        self._rooms: dict[str, Room] = {}
        self._tails: dict[Any, queue.Queue[Any]] = {}  # running tail pumps -> their item queues

    @staticmethod
    async def _make(url: str, token: str | None, timeout: float) -> HubbubClient:
        return HubbubClient(url, token, timeout=timeout)

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for tail, items in list(self._tails.items()):
            tail.cancel()
            items.put(None)  # ends a tail iterating in another thread, whatever the loop does next
        for room in list(self._rooms.values()):
            self._call(room.close())
        self._rooms.clear()
        self._call(self._async.aclose())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def login(self, username: str, password: str) -> str:
        return self._call(self._async.login(username, password))

    def history(self, room: str, *, after: int | None = None, before: int | None = None,
                limit: int = 50) -> list[Message]:
        return self._call(self._async.history(room, after=after, before=before, limit=limit))

    def post(self, room: str, text: str, client_id: str | None = None) -> Message:
        """Post over HTTP, one request."""
        return self._call(self._async.post(room, text, client_id))

    def send(self, room: str, text: str, client_id: str | None = None, timeout: float = 30.0) -> Message:
        """Post over the room's socket (kept open for the next send) and wait for the
        acknowledgement; a reconnect in between is handled."""
        return self._call(self._send(room, text, client_id, timeout))

    async def _send(self, room: str, text: str, client_id: str | None, timeout: float) -> Message:
        connection = self._rooms.get(room)
        if connection is None:
            connection = self._async.room(room)
            await connection.connect()
            self._rooms[room] = connection
        return await connection.post(text, client_id=client_id, timeout=timeout)

    def tail(self, room: str, *, after: int | None = None) -> Iterator[Message]:
        """Every message of ``room`` (after ``after``, default: from now on), once, in order,
        for ever (across reconnects). Stop by breaking out of the loop."""
        items: queue.Queue[Message | BaseException | None] = queue.Queue()
        stop = threading.Event()

        async def pump() -> None:
            try:
                async with self._async.room(room, after=after) as connection:
                    async for message in connection:
                        items.put(message)
                        if stop.is_set():
                            return
            except asyncio.CancelledError:
                pass  # the client was closed: the tail simply ends
            except BaseException as exc:
                items.put(exc)
            finally:
                items.put(None)

        task = asyncio.run_coroutine_threadsafe(pump(), self._loop)
        self._tails[task] = items
        try:
            while True:
                item = items.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            task.cancel()
            self._tails.pop(task, None)
