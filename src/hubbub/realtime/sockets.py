"""A lean WebSocket connection object: the base of Hubbub's chat and job sockets.

Why not a Channels consumer: Channels (4.2+) makes every event a consumer handles wait for a round
trip through the one database thread (``aclose_old_connections`` in ``AsyncConsumer.dispatch``),
and its ``await_many_dispatch`` builds two tasks and an ``asyncio.wait`` per event. Profiled under
fan-out (docs/performance.md) that was ~150 µs of CPU per delivered frame and serialised every
delivery of a process through one thread. A Hubbub socket is a plain ASGI application instance:

* The connection's own task reads client frames (``receive``) and handles them one at a time.
* The hub hands it events with :meth:`Socket.offer`, synchronously, on the event loop. An event is
  sent at once when nothing is queued before it (:meth:`Socket._send_now`), without a task, a queue
  or a thread hop; otherwise it is queued in the socket's outbox, which one drain task sends in
  order. The same encoded ``str`` goes to every socket.
* The outbox is bounded: a client that does not read (its transport stays paused) is closed with
  1013 instead of growing memory.

**One frame for every socket.** Server frames are not masked, so the bytes of a text frame are the
same for every socket that receives it. When the server is uvicorn's ``websockets-sansio``
implementation (what ``hubbub serve`` runs), a socket whose connection is open and writable gets the
frame built once per event (cached on the event the hub hands to all of them) written straight to
its transport: no per-socket encoding at all. Anything else (a paused transport, a closing
connection, a negotiated extension, another server) takes the ASGI ``send`` path below.

**Sending without a task.** uvicorn's ``send`` for a text frame only suspends while the transport
is paused (``await self.writable.wait()``); otherwise it runs to completion synchronously. So
:meth:`_send_now` steps the ``send`` coroutine once by hand (what Python 3.12's eager tasks do):
when it finishes, the frame is written; when it suspends, the rest of it is handed to a task
(:class:`_Resume`) and later events queue behind it. Any ASGI server works; one whose ``send``
always suspends just takes the queued path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any

from hubbub import metrics
from hubbub.realtime import protocol

log = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Coroutine[Any, Any, None]]

HANDSHAKE_ONLY = ("headers", "user", "route", "subprotocols", "state", "extensions", "session_key",
                  "auth_error")
OUTBOX_LIMIT = 2000  # events waiting for one socket; past this the client is not reading


class _Resume:
    """Await a coroutine that was already stepped once and suspended on ``first`` (a future).

    The running task waits for ``first`` as if it had been yielded by an ordinary ``await``, then
    resumes the coroutine; from there on this is ``yield from``.
    """

    __slots__ = ("coro", "first")

    def __init__(self, coro: Any, first: Any) -> None:
        self.coro, self.first = coro, first

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, value = self.coro, self.first
        while True:
            try:
                sent = yield value
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # e.g. CancelledError thrown into the task
                try:
                    value = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    value = coro.send(sent)
                except StopIteration as stop:
                    return stop.value


class Socket:
    """One connection. Subclasses implement :meth:`connect`, :meth:`frame`, :meth:`handle`.

    Sockets use ``__slots__``: tens of thousands of idle ones are the common case.
    """

    __slots__ = (
        "_asgi_send",
        "_direct",
        "_receive",
        "accepted",
        "actor_key",
        "closing",
        "conn_id",
        "drainer",
        "outbox",
        "rich",
        "scope",
        "session_key",
    )

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scope = scope
        self._receive = receive
        self._asgi_send = send
        self._direct: Any = None  # the server's connection, when frames can be written to it
        self.accepted = False
        self.closing = False
        self.outbox: deque[dict[str, Any]] | None = None  # created when first needed
        self.drainer: asyncio.Task[None] | None = None
        # What the hub reads (see hub.Subscriber).
        self.conn_id = ""
        self.rich = False
        self.actor_key = ""
        self.session_key: str | None = None

    # -- the connection's task ------------------------------------------------------------------

    async def run(self) -> None:
        try:
            message = await self._receive()
            if message["type"] != "websocket.connect":
                return
            await self.connect()
            # What the handshake needed is not needed again, and an idle socket should not keep it
            # (the server keeps its own reference to this scope dict, for its logs: path, client).
            for key in HANDSHAKE_ONLY:
                self.scope.pop(key, None)
            while True:
                message = await self._receive()
                kind = message["type"]
                if kind == "websocket.receive":
                    if not self.closing:
                        await self.frame(message.get("text"), message.get("bytes"))
                elif kind == "websocket.disconnect":
                    break
        finally:
            self.closing = True
            if self.drainer is not None and not self.drainer.done():
                self.drainer.cancel()
                with contextlib.suppress(BaseException):
                    await self.drainer
            await self.leave()

    async def connect(self) -> None:
        raise NotImplementedError

    async def frame(self, text: str | None, data: bytes | None) -> None:
        """A frame from the client (not called once the socket is closing)."""

    async def leave(self) -> None:
        """The connection ended (called once, whatever happened)."""

    # -- handshake and close ----------------------------------------------------------------------

    async def accept(self, subprotocol: str | None = None) -> None:
        await self._asgi_send({"type": "websocket.accept", "subprotocol": subprotocol})
        self.accepted = True
        self._direct = _direct_connection(self._asgi_send)
        if self.outbox and self.drainer is None and not self.closing:
            self.drainer = asyncio.ensure_future(self._drain())  # what was offered meanwhile

    async def refuse(self, code: int, subprotocol: str | None = None) -> None:
        """Accept, then close with an application code: the client learns why (a handshake
        refusal would only tell it "403")."""
        if not self.accepted:
            await self.accept(subprotocol)
        await self.close(code)

    async def close(self, code: int) -> None:
        self.closing = True
        with contextlib.suppress(Exception):  # the client may be gone already
            await self._asgi_send({"type": "websocket.close", "code": code})

    def close_soon(self, code: int) -> None:
        """Close from synchronous code (the hub). What is queued is dropped; a send stuck on a
        client that reads nothing is abandoned (nothing of it was written yet)."""
        if self.closing:
            return
        self.closing = True
        if self.outbox:
            self.outbox.clear()
        task = asyncio.ensure_future(self._close_now(code))
        task.add_done_callback(_ignore_result)

    async def _close_now(self, code: int) -> None:
        drainer = self.drainer
        if drainer is not None and not drainer.done():
            drainer.cancel()
            with contextlib.suppress(BaseException):
                await drainer
        with contextlib.suppress(Exception):
            await self._asgi_send({"type": "websocket.close", "code": code})

    # -- events, in order ---------------------------------------------------------------------------

    def offer(self, event: dict[str, Any]) -> None:
        """Called by the hub and by the socket itself, on the event loop; never blocks.

        Handles ``event`` now when nothing is queued before it, else queues it.
        """
        if self.closing:
            return
        if self.drainer is None and not self.outbox and self.handle_now(event):
            return
        self._queue(event)

    def _queue(self, event: dict[str, Any]) -> None:
        outbox = self.outbox
        if outbox is None:
            outbox = self.outbox = deque()
        if len(outbox) >= OUTBOX_LIMIT:
            metrics.SLOW_CLOSES.inc()
            log.info("closing slow socket %s", self.conn_id)
            self.close_soon(protocol.CLOSE_TRY_AGAIN_LATER)
            return
        outbox.append(event)
        if self.drainer is None and self.accepted:  # before the accept, accept() starts it
            self.drainer = asyncio.ensure_future(self._drain())

    def handle_now(self, event: dict[str, Any]) -> bool:
        """Handle ``event`` synchronously if it needs no waiting; False: queue it instead."""
        return False

    async def handle(self, event: dict[str, Any]) -> None:
        """Handle a queued event (in order, one at a time)."""

    async def _drain(self, pending: _Resume | None = None) -> None:
        """The one task that sends what is queued, in order (``pending``: a send to finish first).

        ``drainer`` stays set while it runs, so :meth:`offer` queues behind it; the loop re-checks
        the outbox after every await, so nothing queued meanwhile is left behind.
        """
        try:
            if pending is not None:
                try:
                    await pending
                except Exception:
                    self.closing = True
            while self.outbox and not self.closing:
                await self.handle(self.outbox.popleft())
        finally:
            self.drainer = None

    # -- sending ------------------------------------------------------------------------------------

    def send_event(self, event: dict[str, Any]) -> None:
        """Send ``event["text"]`` now, from synchronous code, when nothing is queued before it:
        the frame built once for every socket (``event["frame"]``), written to the transport, when
        the connection allows it; else :meth:`send_now`."""
        if self.closing:
            return
        conn = self._direct
        if conn is not None and conn.writable.is_set() and not conn.close_sent:
            transport = conn.transport
            if not transport.is_closing():
                frame = event.get("frame")
                if frame is None:
                    frame = event["frame"] = text_frame(event["text"])
                transport.write(frame)
                return
        self.send_now(event["text"])

    def send_now(self, text: str) -> None:
        """Send ``text`` now, from synchronous code, when nothing is queued before it.

        Steps the ASGI ``send`` coroutine by hand; if the transport is paused it suspends, and the
        rest runs in the drain task, ahead of anything queued later.
        """
        if self.closing:
            return
        coro = self._asgi_send({"type": "websocket.send", "text": text})
        try:
            waiting = coro.send(None)
        except StopIteration:
            return
        except Exception:  # the client vanished; its disconnect event follows
            self.closing = True
            return
        # Suspended: finish it first in the drain task, then whatever gets queued meanwhile.
        self.drainer = asyncio.ensure_future(self._drain(_Resume(coro, waiting)))

    async def send_text(self, text: str) -> None:
        """Send from the socket's own async code (in a drain)."""
        if self.closing:
            return
        try:
            await self._asgi_send({"type": "websocket.send", "text": text})
        except Exception:
            self.closing = True


def text_frame(text: str) -> bytes:
    """An unmasked, unfragmented WebSocket text frame (RFC 6455 §5.2), as a server sends it."""
    data = text.encode()
    size = len(data)
    if size < 126:
        return bytes((0x81, size)) + data
    if size < 65536:
        return struct.pack("!BBH", 0x81, 126, size) + data
    return struct.pack("!BBQ", 0x81, 127, size) + data


_UVICORN_SANSIO = "uvicorn.protocols.websockets.websockets_sansio_impl"


def _direct_connection(send: Any) -> Any:
    """uvicorn's websockets-sansio connection object behind ``send`` (a bound method of it), if
    that is what serves this socket and no extension (compression) was negotiated; else None."""
    conn = getattr(send, "__self__", None)
    if conn is None or type(conn).__module__ != _UVICORN_SANSIO:
        return None
    protocol = getattr(conn, "conn", None)
    if not all(hasattr(conn, name) for name in ("transport", "writable", "close_sent")) or (
        protocol is None or getattr(protocol, "extensions", None)
    ):
        return None
    return conn


def _ignore_result(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()
