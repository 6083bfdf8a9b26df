"""The process-wide fan-out hub.

One hub per server process. It is the only user of the channel layer on the message path:

* It holds **one layer channel** and adds it to a room's group when the first local socket joins
  that room, so Redis sees one SUBSCRIBE per room per process and one PUBLISH per event, whatever
  the number of sockets (channels_redis' ``RedisPubSubChannelLayer``; its per-member
  ``group_send`` alternative costs Redis work per member and drops members over capacity).
* An event arriving once per process is handed, already encoded, to every local socket of the room
  (``Consumer.offer``): no JSON and no Redis work per member.
* Events published by this process are dispatched locally at once and then published; copies that
  come back from Redis are skipped. Local sockets therefore keep working while Redis is down.
* Live delivery may still be lost (a Redis restart, a full buffer). The database is the truth: the
  watcher compares each local room's last stored id with what the hub has seen and tells sockets
  to fill the gap from the database, so messages posted elsewhere during a Redis outage arrive
  within a couple of seconds of it (and of Redis coming back).
* Presence lives in the database with heartbeats (rows of a dead instance go stale within
  ``PRESENCE_TTL``); the hub recomputes a room's list when told it changed and on every heartbeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import uuid
from typing import Any, Protocol

from channels.db import database_sync_to_async
from channels.layers import BaseChannelLayer, InMemoryChannelLayer, get_channel_layer

from hubbub import metrics
from hubbub.realtime.events import is_job_room

log = logging.getLogger(__name__)

WATCH_INTERVAL = 1.0  # seconds between checks of the database for undelivered messages
HEARTBEAT_INTERVAL = 10.0  # presence heartbeat; PRESENCE_TTL (30 s) covers two missed beats
PUBLISH_TIMEOUT = 2.0
PUBLISH_QUEUE_LIMIT = 10_000


class Subscriber(Protocol):
    """What the hub needs of a socket (the chat consumer)."""

    conn_id: str
    rich: bool
    actor_key: str

    def offer(self, event: dict[str, Any]) -> None: ...


class Hub:
    def __init__(self) -> None:
        self.instance = uuid.uuid4().hex[:16]
        self.loop: asyncio.AbstractEventLoop | None = None
        self.layer: BaseChannelLayer | None = None
        self.channel: str | None = None
        self.rooms: dict[str, set[Subscriber]] = {}
        self.seen: dict[str, int] = {}  # room -> highest message id this hub has dispatched
        self.db_seen: dict[str, int] = {}  # room -> last id the watcher read from the database
        self.unsubscribed: set[str] = set()  # rooms whose SUBSCRIBE failed; retried by the watcher
        self.subscribing: dict[str, asyncio.Future[None]] = {}
        self.presence_sent: dict[str, list[str]] = {}
        self.presence_dirty: set[str] = set()
        self._presence_wakeup = asyncio.Event()
        self._outgoing: asyncio.Queue[dict[str, Any]] = asyncio.Queue(PUBLISH_QUEUE_LIMIT)
        self._tasks: list[asyncio.Task[None]] = []
        self.redis_ok = True

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def started(self) -> bool:
        return self.loop is not None

    async def start(self, *, serve: bool = True) -> None:
        """Start. ``serve=False``: a publisher only (a process without sockets, see
        :func:`publish_threadsafe`): no subscription, no watcher, no presence."""
        if self.started:
            return
        self.loop = asyncio.get_running_loop()
        layer = get_channel_layer()
        # The in-memory layer cannot reach another process: local dispatch is all there is.
        if layer is not None and not isinstance(layer, InMemoryChannelLayer):
            self.layer = layer
            self._spawn(self._publish_loop())
            if serve:
                self.channel = await layer.new_channel(prefix="hub.")
                self._spawn(self._receive_loop())
        if serve:
            self._spawn(self._watch_loop())
            self._spawn(self._presence_loop())
        log.log(logging.INFO if serve else logging.DEBUG, "hub %s started (%s)", self.instance,
                "redis" if self.layer else "in-memory")

    def _spawn(self, coro: Any) -> None:
        self._tasks.append(asyncio.ensure_future(coro))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self.started:
            from hubbub.chat import services

            with contextlib.suppress(Exception):
                await database_sync_to_async(services.presence_drop_instance)(instance=self.instance)
        if self.layer is not None:
            with contextlib.suppress(Exception):
                await self.layer.flush()
        self.loop = None

    # -- membership of local sockets ---------------------------------------------------------

    async def join(self, room: str, sub: Subscriber) -> None:
        await self.start()
        members = self.rooms.get(room)
        if members is None:
            members = self.rooms[room] = set()
            self.subscribing[room] = asyncio.ensure_future(self._subscribe(room))
        members.add(sub)
        metrics.WS_CONNECTIONS.inc()
        pending = self.subscribing.get(room)
        if pending is not None:
            # Every joiner waits for the room's SUBSCRIBE, not only the first: a socket must not
            # read the room's last id before the news of later messages can reach this process.
            await asyncio.shield(pending)
            self.subscribing.pop(room, None)

    async def leave(self, room: str, sub: Subscriber) -> None:
        members = self.rooms.get(room)
        if members is None or sub not in members:
            return
        members.discard(sub)
        metrics.WS_CONNECTIONS.dec()
        if not members:
            del self.rooms[room]
            for state in (self.seen, self.db_seen, self.presence_sent):
                state.pop(room, None)
            self.unsubscribed.discard(room)
            self.subscribing.pop(room, None)
            if self.layer is not None and self.channel is not None:
                from hubbub.realtime.events import group_name

                with contextlib.suppress(Exception):
                    await self.layer.group_discard(group_name(room), self.channel)

    async def _subscribe(self, room: str) -> None:
        if self.layer is None or self.channel is None:
            return
        from hubbub.realtime.events import group_name

        try:
            await asyncio.wait_for(self.layer.group_add(group_name(room), self.channel), PUBLISH_TIMEOUT)
            self.unsubscribed.discard(room)
        except Exception as exc:
            # The watcher keeps the room in sync from the database meanwhile and retries.
            log.warning("subscribe to %s failed: %r", room, exc)
            self.unsubscribed.add(room)

    def note_seq(self, room: str, seq: int) -> None:
        """A socket read ``seq`` as the room's last id when it joined."""
        if seq > self.seen.get(room, 0):
            self.seen[room] = seq

    # -- publishing --------------------------------------------------------------------------

    def publish(self, event: dict[str, Any]) -> None:
        """Dispatch ``event`` to this process's sockets now and queue it for the other processes.

        Call on the hub's loop (see :func:`publish_threadsafe` from other threads).
        """
        event["origin"] = self.instance
        self._dispatch(event)
        if self.layer is not None:
            try:
                self._outgoing.put_nowait(event)
            except asyncio.QueueFull:
                # Redis is far behind or down; the other processes' watchers fill from the DB.
                metrics.PUBLISH_FAILURES.inc()

    async def _publish_loop(self) -> None:
        from hubbub.realtime.events import group_name

        assert self.layer is not None
        while True:
            event = await self._outgoing.get()
            try:
                await asyncio.wait_for(
                    self.layer.group_send(group_name(event["room"]), event), PUBLISH_TIMEOUT
                )
                metrics.EVENTS_PUBLISHED.inc()
                self.redis_ok = True
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # The message is stored; other instances will read it from the database.
                metrics.PUBLISH_FAILURES.inc()
                if self.redis_ok:
                    log.warning("publish failed, other instances will catch up from the DB: %r", exc)
                self.redis_ok = False
            finally:
                self._outgoing.task_done()

    async def flush(self) -> None:
        """Wait until every queued event has been handed to the channel layer (or failed)."""
        await self._outgoing.join()

    # -- receiving ---------------------------------------------------------------------------

    async def _receive_loop(self) -> None:
        assert self.layer is not None and self.channel is not None
        while True:
            try:
                event = await self.layer.receive(self.channel)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("hub receive failed")
                await asyncio.sleep(1)
                continue
            if event.get("origin") != self.instance:
                self._dispatch(event)

    def _dispatch(self, event: dict[str, Any]) -> None:
        kind = event.get("kind")
        room = event.get("room")
        if not isinstance(room, str):
            return
        members = self.rooms.get(room)
        if kind == "message":
            seq = event["id"]
            if seq > self.seen.get(room, 0):
                self.seen[room] = seq
            if members:
                out = {"type": "hub.message", "id": seq, "text": event["text"]}
                for sub in list(members):
                    sub.offer(out)
        elif kind == "presence":
            if members:
                self.presence_dirty.add(room)
                self._presence_wakeup.set()
        elif kind == "typing":
            if members:
                out = {"type": "hub.text", "text": event["text"]}
                for sub in list(members):
                    if sub.rich and sub.conn_id != event.get("conn"):
                        sub.offer(out)
        elif kind == "job" and members:
            out = {"type": "hub.job", "progress": event.get("progress", 0),
                   "final": event.get("final", False), "text": event["text"]}
            for sub in list(members):
                sub.offer(out)
        elif kind == "revoke" and members:
            for sub in list(members):
                if sub.actor_key == event.get("user_key"):
                    sub.offer({"type": "hub.revoke"})

    def presence_changed(self, room: str) -> None:
        """This process changed who is in ``room``: recompute here now, tell the others."""
        self.publish({"kind": "presence", "room": room})

    # -- the database watcher ----------------------------------------------------------------

    async def _watch_loop(self) -> None:
        from hubbub.chat import selectors

        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            for room in list(self.unsubscribed):
                if room in self.rooms:
                    await self._subscribe(room)
            names = [name for name in self.rooms if not is_job_room(name)]
            if not names:
                continue
            try:
                latest = await database_sync_to_async(selectors.room_last_seqs)(names=names)
            except Exception as exc:
                log.warning("watcher cannot read the database: %r", exc)
                continue
            self.check_gaps(latest)

    def check_gaps(self, latest: dict[str, int]) -> None:
        """Tell sockets to fill from the database what live delivery has not brought.

        A room counts as behind only when an id the previous check already read (at least one
        interval ago) has still not been dispatched: a message committed a moment ago and still
        on its way through Redis does not cost every socket a database read.
        """
        for room, last in latest.items():
            previous = self.db_seen.get(room, 0)
            if previous > self.seen.get(room, 0):
                metrics.GAP_SYNCS.inc()
                self.seen[room] = previous
                out = {"type": "hub.sync", "upto": previous}
                for sub in list(self.rooms.get(room, ())):
                    sub.offer(out)
            self.db_seen[room] = last

    # -- presence ----------------------------------------------------------------------------

    async def _presence_loop(self) -> None:
        from hubbub.chat import services

        loop = asyncio.get_running_loop()
        next_beat = loop.time() + HEARTBEAT_INTERVAL
        while True:
            timeout = max(0.0, next_beat - loop.time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._presence_wakeup.wait(), timeout)
            self._presence_wakeup.clear()
            full = loop.time() >= next_beat
            try:
                if full:
                    next_beat = loop.time() + HEARTBEAT_INTERVAL
                    await database_sync_to_async(services.presence_heartbeat)(instance=self.instance)
                    rooms = [name for name in self.rooms if not is_job_room(name)]
                else:
                    # Coalesce a burst of joins and leaves into one query.
                    await asyncio.sleep(0.05)
                    rooms = [r for r in self.presence_dirty if r in self.rooms]
                self.presence_dirty.clear()
                if rooms:
                    names = await database_sync_to_async(services.presence_names)(room_names=rooms)
                    self._send_presence(names)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("presence update failed: %r", exc)

    def _send_presence(self, names: dict[str, list[str]]) -> None:
        from hubbub.realtime.events import presence_event

        for room, users in names.items():
            members = self.rooms.get(room)
            if not members:
                continue
            changed = self.presence_sent.get(room) != users
            self.presence_sent[room] = users
            out = {"type": "hub.presence", "text": presence_event(users), "changed": changed}
            for sub in list(members):
                if sub.rich:
                    sub.offer(out)


_hub: Hub | None = None


def get_hub() -> Hub:
    global _hub
    if _hub is None:
        _hub = Hub()
    return _hub


def reset_hub() -> None:
    """Forget the hub (tests run each case on a new event loop)."""
    global _hub
    _hub = None


def publish_threadsafe(event: dict[str, Any]) -> None:
    """Publish from any thread (services run in the database thread). Never blocks on Redis.

    In a server process this is the serving hub. In a process without one (a script, a job, a
    Django app using :mod:`hubbub.publish`) it is a publisher hub on one long-lived event loop in
    a daemon thread: ``async_to_sync`` per call would make an event loop per call, which breaks
    channels_redis' connections ("Event loop is closed", channels_redis#332).
    """
    hub = get_hub()
    if hub.loop is None:
        hub = background_publisher()
    assert hub.loop is not None
    hub.loop.call_soon_threadsafe(hub.publish, event)


_publisher: Hub | None = None
_publisher_lock = threading.Lock()


def background_publisher() -> Hub:
    global _publisher
    with _publisher_lock:
        if _publisher is None or _publisher.loop is None:
            hub = Hub()
            loop = asyncio.new_event_loop()
            ready = threading.Event()

            def run() -> None:
                asyncio.set_event_loop(loop)
                loop.run_until_complete(hub.start(serve=False))
                ready.set()
                loop.run_forever()

            threading.Thread(target=run, name="hubbub-publisher", daemon=True).start()
            if not ready.wait(10):
                raise RuntimeError("the Hubbub publisher thread did not start")
            _publisher = hub
        return _publisher


def flush_background(timeout: float) -> bool:
    """Wait up to ``timeout`` s for the background publisher to hand over what it has queued."""
    hub = _publisher
    if hub is None or hub.loop is None:
        return True
    future = asyncio.run_coroutine_threadsafe(hub.flush(), hub.loop)
    try:
        future.result(timeout)
    except TimeoutError:
        return False
    return True

