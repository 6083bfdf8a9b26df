"""The chat socket: decode → protocol → one service call → send.

Each socket keeps ``last_id``, the id of the last MessageEvent it sent. Every MessageEvent it
sends (catch-up, the sender's acknowledgement, live events, gap fills) goes through
:meth:`ChatSocket.offer`, which sends ids strictly in order: an id already sent is dropped; an id
after a gap waits in the socket's outbox while the gap is read from the database. The hub hands a
live event to every socket of the room synchronously (see :mod:`hubbub.realtime.sockets`): no
task, queue or thread per delivery.

The socket has no channel-layer channel of its own (that would be one Redis SUBSCRIBE per socket):
the hub holds one subscription per room per process.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from django.conf import settings

from hubbub import metrics
from hubbub.accounts.actors import Actor, actor_from
from hubbub.chat import selectors, services
from hubbub.errors import HubbubError
from hubbub.realtime import db, events, protocol
from hubbub.realtime.hub import get_hub
from hubbub.realtime.sockets import Socket

log = logging.getLogger(__name__)

FILL_BATCH = 1000
# The contract's floor is 10/s sustained with bursts of 20; a little headroom absorbs network jitter
# for a client that paces itself at exactly that rate.
MESSAGE_RATE, MESSAGE_BURST = 12.0, 24.0
FRAME_RATE, FRAME_BURST = 30.0, 60.0  # every frame, including typing, ping and history
TYPING_EVERY = 2.0  # seconds: a socket's typing is relayed at most this often
CLOSE_TOO_MANY_SOCKETS = 4429  # this user already has HUBBUB_MAX_SOCKETS_PER_USER sockets here
CLOSE_SERVER_ERROR = 1011


class ChatSocket(Socket):
    __slots__ = (
        "actor",
        "frame_bucket",
        "joined",
        "last_id",
        "last_typing",
        "message_bucket",
        "presence_seen",
        "room",
        "room_id",
    )
    room_id: int
    actor: Actor

    def __init__(self, scope: Any, receive: Any, send: Any) -> None:
        super().__init__(scope, receive, send)
        self.room = ""
        self.joined = False
        self.presence_seen = False
        self.last_id = 0
        self.last_typing = 0.0
        # Created at the first frame: most sockets only listen.
        self.message_bucket: protocol.TokenBucket | None = None
        self.frame_bucket: protocol.TokenBucket | None = None

    # -- connect / leave --------------------------------------------------------------------------

    async def connect(self) -> None:
        scope = self.scope
        room = scope["route"]["room"]
        self.rich = protocol.SUBPROTOCOL in (scope.get("subprotocols") or ())
        subprotocol = protocol.SUBPROTOCOL if self.rich else None
        if not protocol.valid_room_name(room):
            return await self.refuse(protocol.CLOSE_BAD_REQUEST, subprotocol)
        after = protocol.parse_after(scope.get("query_string", b""))
        if isinstance(after, protocol.ProtocolError):
            return await self.refuse(protocol.CLOSE_BAD_REQUEST, subprotocol)
        if scope.get("auth_error"):
            return await self.refuse(protocol.CLOSE_UNAUTHORIZED, subprotocol)
        self.session_key = scope.get("session_key")
        actor = actor_from(scope.get("user"), self.session_key, settings.HUBBUB_ALLOW_GUESTS)
        if actor is None:
            return await self.refuse(protocol.CLOSE_UNAUTHORIZED, subprotocol)
        hub = get_hub()
        if not hub.may_connect(actor.key):
            return await self.refuse(CLOSE_TOO_MANY_SOCKETS, subprotocol)
        self.actor, self.actor_key, self.room = actor, actor.key, room
        self.conn_id = uuid.uuid4().hex
        # Join before reading the room's last id: whatever is published after this point is
        # offered to us (and queued until we accept), whatever was stored before it is read from
        # the database.
        await hub.join(room, self)
        self.joined = True
        try:
            state = await db.run(services.socket_join)(
                actor=actor, name=room, conn_id=self.conn_id, instance=hub.instance)
        except HubbubError:
            return await self.refuse(protocol.CLOSE_FORBIDDEN, subprotocol)
        except Exception:
            log.exception("joining %s failed", room)
            return await self.refuse(CLOSE_SERVER_ERROR, subprotocol)
        self.room_id = state.id
        hub.note_seq(room, state.last_seq)
        self.last_id = state.last_seq if after is None else min(after, state.last_seq)
        if self.last_id < state.last_seq:
            self.offer({"type": "hub.sync", "upto": state.last_seq})  # catch-up, before live ones
        await self.accept(subprotocol)
        hub.presence_changed(room)

    async def leave(self) -> None:
        if not self.joined:
            return
        self.joined = False
        hub = get_hub()
        await hub.leave(self.room, self)
        if getattr(self, "room_id", None) is not None:
            try:
                await db.background(services.presence_leave)(conn_id=self.conn_id)
                if hub.started:
                    hub.presence_changed(self.room)
            except Exception as exc:  # the heartbeat's TTL cleans up after us
                log.warning("presence leave failed: %r", exc)

    # -- frames from the client -------------------------------------------------------------------

    async def frame(self, text: str | None, data: bytes | None) -> None:
        now = time.monotonic()
        if self.frame_bucket is None or self.message_bucket is None:
            self.frame_bucket = protocol.TokenBucket(FRAME_RATE, FRAME_BURST, now)
            self.message_bucket = protocol.TokenBucket(MESSAGE_RATE, MESSAGE_BURST, now)
        wait = self.frame_bucket.take(now)
        if wait:
            return self._error(protocol.rate_limited(wait))
        frame = protocol.parse_frame(text, data, max_chars=settings.HUBBUB_MAX_MESSAGE_CHARS)
        try:
            if isinstance(frame, protocol.ProtocolError):
                self._error(frame)
            elif isinstance(frame, protocol.PostFrame):
                wait = self.message_bucket.take(now) or get_hub().user_bucket(self.actor_key, now).take(now)
                if wait:
                    return self._error(protocol.rate_limited(wait))
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
                    self.offer({"type": "hub.text", "text": events.PONG})
            elif isinstance(frame, protocol.HistoryFrame):
                await self._history(frame)
        except HubbubError as exc:
            self._error(protocol.ProtocolError(exc.code, exc.detail))
        except Exception:
            log.exception("frame handling failed in %s", self.room)
            self._error(protocol.ProtocolError("server_error", "the server failed; try again"))

    async def _post(self, frame: protocol.PostFrame) -> None:
        posted = await db.run(services.message_store)(
            actor=self.actor, room_id=self.room_id, room_name=self.room, body=frame.message,
            client_id=frame.client_id,
        )
        # Readers stop showing us as typing when the message arrives: the next typing is news.
        self.last_typing = 0.0
        if not posted.created:
            self.offer({"type": "hub.text", "text": posted.text})  # a repeat: the stored event again
            return
        metrics.MESSAGES_POSTED.labels("ws").inc()
        # The acknowledgement is the MessageEvent itself, sent in id order like any other. The hub
        # offers it to every socket of the room, this one included, once the ids before it have
        # been dispatched (another instance's message may still be on its way through Redis); sent
        # from here only when it is next in line anyway, so that the sender does not read the gap
        # from the database by itself (the hub's copy is then a duplicate and dropped).
        if posted.seq == self.last_id + 1 or not get_hub().started:
            self.offer({"type": "hub.message", "id": posted.seq, "text": posted.text})

    async def _history(self, frame: protocol.HistoryFrame) -> None:
        if not self.rich:
            self._error(protocol.ProtocolError(
                "unknown_type", f"history needs the {protocol.SUBPROTOCOL} subprotocol"))
            return
        room = await db.run(selectors.room_for_reading)(actor=self.actor, name=self.room)
        messages = [] if room is None else await db.run(selectors.messages_page)(
            room=room, before=frame.before, limit=frame.limit
        )
        self.offer({"type": "hub.text", "text": events.encode({"type": "history", "messages": messages})})

    def _error(self, error: protocol.ProtocolError) -> None:
        metrics.WS_ERRORS.labels(error.code).inc()
        self.offer({"type": "hub.text", "text": events.encode(error.as_event())})

    # -- events, in order ---------------------------------------------------------------------------

    def _gap_before(self, event: dict[str, Any]) -> bool:
        """Stored messages this socket has not sent come before ``event``: read them first."""
        if event["type"] == "hub.message":
            return bool(event["id"] > self.last_id + 1)
        return event["type"] == "hub.sync" and bool(event["upto"] > self.last_id)

    def _due(self, event: dict[str, Any]) -> str | None:
        """The text to send for ``event`` (no gap before it), or None: an id already sent (our
        own acknowledgement, catch-up, or a fill), a presence list already shown, a sync."""
        kind = event["type"]
        if kind == "hub.message":
            if event["id"] <= self.last_id:
                return None
            self.last_id = event["id"]
            return str(event["text"])
        if kind == "hub.text":
            return str(event["text"])
        if kind == "hub.presence" and (event["changed"] or not self.presence_seen):
            self.presence_seen = True
            return str(event["text"])
        return None

    def handle_now(self, event: dict[str, Any]) -> bool:
        if not self.accepted or self._gap_before(event):
            return False  # not accepted yet, or a gap to read first: in order, in the drain
        if self._due(event) is not None:
            self.send_event(event)
        return True

    async def handle(self, event: dict[str, Any]) -> None:
        if self._gap_before(event):
            upto = event["upto"] if event["type"] == "hub.sync" else event["id"] - 1
            if not await self._fill(upto):
                return  # the database is unreachable: the hub's watcher offers it again later
        text = self._due(event)
        if text is not None:
            await self.send_text(text)

    async def _fill(self, upto: int) -> bool:
        """Send every stored message after ``last_id`` up to ``upto``, in order, from the DB."""
        while self.last_id < upto and not self.closing:
            try:
                batch = await db.run(selectors.message_texts_after)(
                    room_id=self.room_id, room_name=self.room, after=self.last_id,
                    limit=min(FILL_BATCH, upto - self.last_id),
                )
            except Exception as exc:
                log.warning("cannot fill %s after %d: %r", self.room, self.last_id, exc)
                return False
            if not batch:
                log.error("room %s: ids %d..%d missing from the database", self.room,
                          self.last_id + 1, upto)
                return False
            for seq, text in batch:
                self.last_id = seq
                await self.send_text(text)
        return True


async def refuse_socket(scope: Any, receive: Any, send: Any) -> None:
    """Sockets to a path Hubbub does not serve are refused at the handshake (HTTP 403)."""
    message = await receive()
    if message["type"] == "websocket.connect":
        await send({"type": "websocket.close", "code": 1000})
