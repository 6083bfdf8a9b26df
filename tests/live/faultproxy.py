"""A TCP fault proxy for the live suites: it sits between Hubbub and Redis or PostgreSQL and can
slow, stall, cut or refuse the traffic on command.

It runs an asyncio loop in a daemon thread of its own, so a test may drive it from synchronous
code or from a test's event loop (whose blocking calls must not freeze the proxy). Each accepted
connection opens one connection to the target and pumps bytes both ways; every chunk read is
queued with the time it may leave (now + latency), and a writer per direction sends it then,
unless the proxy is stalled.

Controls (safe from any thread):

* ``latency(seconds)``: delay every chunk, both ways, by that much (0: none).
* ``stall()``: stop forwarding; bytes already read are held (both ways) until ``resume()``.
* ``cut()``: reset every open connection at once (RST, no FIN), both sides.
* ``refuse()``: close the listening socket: new connections are refused (ECONNREFUSED; on some
  hosts the SYN goes unanswered and the client's connect times out). Open ones stay.
* ``resume()``: forward again, listen again on the same port, no latency.

``stats`` counts what happened (accepted connections, resets, bytes each way).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


@dataclass
class ProxyStats:
    accepted: int = 0
    failed_upstream: int = 0  # accepted, but the target did not answer
    cut: int = 0  # connections reset by cut()
    bytes_up: int = 0  # client -> target
    bytes_down: int = 0  # target -> client


Chunks = asyncio.Queue[tuple[float, bytes] | None]


class _Link:
    """One proxied connection: the client's stream pair and the target's."""

    def __init__(self, proxy: FaultProxy, client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
                 target: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
        self.proxy = proxy
        self.client = client
        self.target = target
        self.tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        for src, dst, up in ((self.client[0], self.target[1], True), (self.target[0], self.client[1], False)):
            queue: Chunks = asyncio.Queue()
            self.tasks.append(asyncio.ensure_future(self._read(src, queue)))
            self.tasks.append(asyncio.ensure_future(self._write(dst, queue, up)))

    async def _read(self, src: asyncio.StreamReader, queue: Chunks) -> None:
        try:
            while True:
                data = await src.read(65536)
                if not data:
                    break
                await queue.put((time.monotonic() + self.proxy._latency, data))
        except (ConnectionError, OSError):
            pass
        finally:
            await queue.put(None)

    async def _write(self, dst: asyncio.StreamWriter, queue: Chunks, up: bool) -> None:
        try:
            while True:
                item = await queue.get()
                if item is None:
                    break
                due, data = item
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                await self.proxy._flowing.wait()
                if up:
                    self.proxy.stats.bytes_up += len(data)
                else:
                    self.proxy.stats.bytes_down += len(data)
                dst.write(data)
                await dst.drain()
            # The source closed: pass the half-close on.
            with contextlib.suppress(OSError, RuntimeError):
                if dst.can_write_eof():
                    dst.write_eof()
        except (ConnectionError, OSError):
            pass
        finally:
            if all(t.done() or t is asyncio.current_task() for t in self.tasks[1::2]):
                self.close()

    def close(self) -> None:
        for _, writer in (self.client, self.target):
            writer.close()
        self.proxy._links.discard(self)

    def reset(self) -> None:
        """Close both sockets with RST: SO_LINGER on, timeout 0."""
        for _, writer in (self.client, self.target):
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        for task in self.tasks:
            task.cancel()
        self.proxy._links.discard(self)


class FaultProxy:
    """Forwards ``127.0.0.1:<port>`` to ``target_host:target_port``. Use as a context manager or
    call ``start()`` / ``close()``."""

    def __init__(self, target_host: str, target_port: int, port: int = 0) -> None:
        self.target = (target_host, target_port)
        self.port = port
        self.stats = ProxyStats()
        self._latency = 0.0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"faultproxy-{target_port}",
                                        daemon=True)
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._flowing = asyncio.Event()

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        self._thread.start()
        self._call(self._set_flowing, True)
        self._run(self._listen())
        return self

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        self._run(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- controls ----------------------------------------------------------------------------

    def latency(self, seconds: float) -> None:
        self._latency = max(0.0, seconds)

    def stall(self) -> None:
        self._call(self._set_flowing, False)

    def cut(self) -> int:
        """Reset every open connection; how many were reset."""
        return int(self._run(self._cut()))

    def refuse(self) -> None:
        self._run(self._unlisten())

    def resume(self) -> None:
        self._latency = 0.0
        self._call(self._set_flowing, True)
        self._run(self._listen())

    @property
    def open_connections(self) -> int:
        return len(self._links)

    @property
    def listening(self) -> bool:
        return self._server is not None

    @contextlib.contextmanager
    def refusing(self) -> Iterator[None]:
        self.refuse()
        try:
            yield
        finally:
            self.resume()

    # -- inside the proxy's loop -------------------------------------------------------------

    def _call(self, func: Any, *args: Any) -> None:
        self._run(_as_coro(func, *args))

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def _set_flowing(self, on: bool) -> None:
        if on:
            self._flowing.set()
        else:
            self._flowing.clear()

    async def _listen(self) -> None:
        if self._server is not None:
            return
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port, reuse_address=True)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _unlisten(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    async def _cut(self) -> int:
        links = list(self._links)
        for link in links:
            link.reset()
        self.stats.cut += len(links)
        return len(links)

    async def _shutdown(self) -> None:
        await self._unlisten()
        await self._cut()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._server is None:  # accepted just before refuse()
            writer.transport.abort()
            return
        self.stats.accepted += 1
        try:
            target = await asyncio.wait_for(asyncio.open_connection(*self.target), 5)
        except (OSError, TimeoutError):
            self.stats.failed_upstream += 1
            writer.transport.abort()
            return
        link = _Link(self, (reader, writer), target)
        self._links.add(link)
        link.start()


async def _as_coro(func: Any, *args: Any) -> None:
    func(*args)
