"""The chat socket: decode → protocol → one service call → send.

Each socket keeps ``last_id``, the id of the last MessageEvent it sent. Every path that sends a
MessageEvent (catch-up, the sender's acknowledgement, live events, database syncs) goes through
:meth:`ChatConsumer._deliver_upto` / :meth:`ChatConsumer.hub_message`, which send ids strictly in
order: an id already sent is dropped, a gap is filled from the database first. All of them run in
the consumer's one dispatch loop, one at a time, so there is nothing to race.

The consumer does not use a channel-layer channel of its own (that would be one Redis SUBSCRIBE
per socket): the hub offers it events through a bounded local queue, and a socket whose queue
overflows (a client that does not read) is closed with 1013 instead of growing memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from typing import Any

from channels.db import database_sync_to_async
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.utils import await_many_dispatch
from django.conf import settings

from hubbub import metrics
from hubbub.accounts.actors import Actor, actor_from
from hubbub.chat import selectors, services
from hubbub.errors import HubbubError
from hubbub.realtime import events, protocol
from hubbub.realtime.hub import get_hub

log = logging.getLogger(__name__)

OUTBOX_LIMIT = 2000  # events waiting for one socket; past this the socket is too slow
FILL_BATCH = 1000
# The contract's floor is 10/s sustained with bursts of 20; a little headroom absorbs network jitter
# for a client that paces itself at exactly that rate.
MESSAGE_RATE, MESSAGE_BURST = 12.0, 24.0
FRAME_RATE, FRAME_BURST = 30.0, 60.0  # every frame, including typing, ping and history
TYPING_EVERY = 2.0  # seconds: a socket's typing is relayed at most this often


class ChatConsumer(AsyncWebsocketConsumer):
    room: str
    room_id: int
    actor: Actor
    rich: bool
    last_id: int

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        # As AsyncConsumer.__call__, with the hub's local queue in place of a layer channel.
        self.scope = scope
        self.channel_layer = None
        self.base_send = send
        self.conn_id = uuid.uuid4().hex
        self.actor_key = ""
        self.rich = False
        self.joined = False
        self.closing = False
        self.presence_seen = False
        self.outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue(OUTBOX_LIMIT)
        try:
            await await_many_dispatch([receive, self.outbox.get], self.dispatch)
        except StopConsumer:
            pass
        finally:
            await self._leave()

    # -- hub side ----------------------------------------------------------------------------

    def offer(self, event: dict[str, Any]) -> None:
        """Called by the hub (on the event loop, never blocking)."""
        if self.closing:
            return
        try:
            self.outbox.put_nowait(event)
        except asyncio.QueueFull:
            self.closing = True
            metrics.SLOW_CLOSES.inc()
            log.info("closing slow socket %s in %s", self.conn_id, self.room)
            self.closer = asyncio.ensure_future(self._close_quietly(protocol.CLOSE_TRY_AGAIN_LATER))

    async def _close_quietly(self, code: int) -> None:
        with contextlib.suppress(Exception):  # the client may be gone already
            await self.close(code=code)

    # -- connect / disconnect ----------------------------------------------------------------

    async def connect(self) -> None:
        room = self.scope["url_route"]["kwargs"]["room"]
        offered = self.scope.get("subprotocols") or []
        self.rich = protocol.SUBPROTOCOL in offered
        subprotocol = protocol.SUBPROTOCOL if self.rich else None
        if not protocol.valid_room_name(room):
            return await self._refuse(subprotocol, protocol.CLOSE_BAD_REQUEST)
        after = protocol.parse_after(self.scope.get("query_string", b""))
        if isinstance(after, protocol.ProtocolError):
            return await self._refuse(subprotocol, protocol.CLOSE_BAD_REQUEST)
        if self.scope.get("auth_error"):
            return await self._refuse(subprotocol, protocol.CLOSE_UNAUTHORIZED)
        session = self.scope.get("session")
        actor = actor_from(
            self.scope.get("user"),
            getattr(session, "session_key", None),
            settings.HUBBUB_ALLOW_GUESTS,
        )
        if actor is None:
            return await self._refuse(subprotocol, protocol.CLOSE_UNAUTHORIZED)
        self.actor, self.actor_key, self.room = actor, actor.key, room
        hub = get_hub()
        # Join before reading the room's last id: whatever is published after this point is
        # queued for us, and whatever was stored before it is read from the database.
        await hub.join(room, self)
        self.joined = True
        try:
            state = await database_sync_to_async(services.room_open)(actor=actor, name=room)
        except HubbubError:
            return await self._refuse(subprotocol, protocol.CLOSE_FORBIDDEN)
        self.room_id = state.id
        hub.note_seq(room, state.last_seq)
        self.last_id = state.last_seq if after is None else min(after, state.last_seq)
        now = time.monotonic()
        self.message_bucket = protocol.TokenBucket(MESSAGE_RATE, MESSAGE_BURST, now)
        self.frame_bucket = protocol.TokenBucket(FRAME_RATE, FRAME_BURST, now)
        self.last_typing = 0.0
        await self.accept(subprotocol)
        await self._deliver_upto(state.last_seq)
        await database_sync_to_async(services.presence_enter)(
            conn_id=self.conn_id, room_id=self.room_id, name=actor.name, instance=hub.instance
        )
        hub.presence_changed(room)

    async def _refuse(self, subprotocol: str | None, code: int) -> None:
        # Accept, then close with an application code: the client learns why (a handshake
        # refusal would only tell it "403").
        await self.accept(subprotocol)
        self.closing = True
        await self.close(code=code)

    async def _leave(self) -> None:
        if not self.joined:
            return
        self.joined = False
        hub = get_hub()
        await hub.leave(self.room, self)
        if hasattr(self, "room_id"):
            try:
                await database_sync_to_async(services.presence_leave)(conn_id=self.conn_id)
                if hub.started:
                    hub.presence_changed(self.room)
            except Exception as exc:  # the heartbeat's TTL cleans up after us
                log.warning("presence leave failed: %r", exc)

    async def disconnect(self, code: int) -> None:
        self.closing = True

    # -- frames from the client ---------------------------------------------------------------

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.closing:
            return
        now = time.monotonic()
        wait = self.frame_bucket.take(now)
        if wait:
            return await self._error(protocol.rate_limited(wait))
        frame = protocol.parse_frame(text_data, bytes_data, max_chars=settings.HUBBUB_MAX_MESSAGE_CHARS)
        try:
            if isinstance(frame, protocol.ProtocolError):
                await self._error(frame)
            elif isinstance(frame, protocol.PostFrame):
                wait = self.message_bucket.take(now)
                if wait:
                    return await self._error(protocol.rate_limited(wait))
                await self._post(frame)
            elif isinstance(frame, protocol.TypingFrame):
                if now - self.last_typing >= TYPING_EVERY:
                    self.last_typing = now
                    get_hub().publish(
                        {"kind": "typing", "room": self.room, "conn": self.conn_id,
                         "text": events.typing_event(self.actor.name)}
                    )
            elif isinstance(frame, protocol.PingFrame):
                if self.rich:
                    await self._send_text(events.PONG)
            elif isinstance(frame, protocol.HistoryFrame):
                await self._history(frame)
        except HubbubError as exc:
            await self._error(protocol.ProtocolError(exc.code, exc.detail))
        except Exception:
            log.exception("frame handling failed in %s", self.room)
            await self._error(protocol.ProtocolError("server_error", "the server failed; try again"))

    async def _post(self, frame: protocol.PostFrame) -> None:
        posted = await database_sync_to_async(services.message_post)(
            actor=self.actor, room_name=self.room, body=frame.message, client_id=frame.client_id
        )
        # Readers stop showing us as typing when the message arrives: the next typing is news.
        self.last_typing = 0.0
        if not posted.created:
            await self._send_text(posted.text)  # a repeat: the stored event again
            return
        metrics.MESSAGES_POSTED.labels("ws").inc()
        # The acknowledgement is the MessageEvent itself, sent in id order like any other.
        if posted.seq == self.last_id + 1:
            await self._send_text(posted.text)
            self.last_id = posted.seq
        else:
            await self._deliver_upto(posted.seq)

    async def _history(self, frame: protocol.HistoryFrame) -> None:
        if not self.rich:
            await self._error(protocol.ProtocolError(
                "unknown_type", f"history needs the {protocol.SUBPROTOCOL} subprotocol"))
            return
        room = await database_sync_to_async(selectors.room_for_reading)(actor=self.actor, name=self.room)
        messages = [] if room is None else await database_sync_to_async(selectors.messages_page)(
            room=room, before=frame.before, limit=frame.limit
        )
        await self._send_text(events.encode({"type": "history", "messages": messages}))

    async def _error(self, error: protocol.ProtocolError) -> None:
        metrics.WS_ERRORS.labels(error.code).inc()
        await self._send_text(events.encode(error.as_event()))

    # -- events from the hub -----------------------------------------------------------------

    async def hub_message(self, event: dict[str, Any]) -> None:
        seq = event["id"]
        if seq <= self.last_id:
            return  # already sent (our own acknowledgement, catch-up, or a sync)
        if seq > self.last_id + 1 and not await self._deliver_upto(seq - 1):
            return
        await self._send_text(event["text"])
        self.last_id = seq

    async def hub_sync(self, event: dict[str, Any]) -> None:
        await self._deliver_upto(event["upto"])

    async def hub_text(self, event: dict[str, Any]) -> None:
        await self._send_text(event["text"])

    async def hub_presence(self, event: dict[str, Any]) -> None:
        if event["changed"] or not self.presence_seen:
            self.presence_seen = True
            await self._send_text(event["text"])

    async def hub_revoke(self, event: dict[str, Any]) -> None:
        """The owner removed this user from a private room: stop at once."""
        self.closing = True
        await self._close_quietly(protocol.CLOSE_FORBIDDEN)

    async def _deliver_upto(self, upto: int) -> bool:
        """Send every stored message after ``last_id`` up to ``upto``, in order, from the DB."""
        while self.last_id < upto:
            try:
                batch = await database_sync_to_async(selectors.message_texts_after)(
                    room_id=self.room_id, room_name=self.room, after=self.last_id,
                    limit=min(FILL_BATCH, upto - self.last_id),
                )
            except Exception as exc:
                # The database is unreachable: keep last_id, the watcher will ask again.
                log.warning("cannot fill %s after %d: %r", self.room, self.last_id, exc)
                return False
            if not batch:
                log.error("room %s: ids %d..%d missing from the database", self.room,
                          self.last_id + 1, upto)
                return False
            for seq, text in batch:
                await self._send_text(text)
                self.last_id = seq
        return True

    async def _send_text(self, text: str) -> None:
        if self.closing:
            return
        try:
            await self.send(text_data=text)
        except Exception:  # the client vanished mid-send; the disconnect event follows
            self.closing = True


class RefuseConsumer(AsyncWebsocketConsumer):
    """Sockets to a path Hubbub does not serve are refused at the handshake (HTTP 403)."""

    async def connect(self) -> None:
        await self.close()
