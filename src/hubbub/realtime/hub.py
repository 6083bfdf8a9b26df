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
import atexit
import contextlib
import logging
import threading
import uuid
from typing import Any, Protocol

from channels.layers import BaseChannelLayer, InMemoryChannelLayer, get_channel_layer
from django.conf import settings

from hubbub import metrics
from hubbub.realtime import db, protocol
from hubbub.realtime.events import group_name, is_job_room

log = logging.getLogger(__name__)

WATCH_INTERVAL = 1.0  # seconds between checks of the database for undelivered messages
HEARTBEAT_INTERVAL = 10.0  # presence heartbeat; PRESENCE_TTL (30 s) covers two missed beats
PUBLISH_TIMEOUT = 2.0
PUBLISH_QUEUE_LIMIT = 10_000
REORDER_WAIT = 0.05  # seconds an early message waits for the ones before it before a DB read
REVALIDATE_EVERY = 15.0  # seconds between checks that sockets' sessions and users still exist
FILL_BATCH = 1000
CONTROL_GROUP = "hubbub.control"  # every serving hub: events about users and sessions, not rooms
CONTROL_KINDS = frozenset({"logout", "user_gone"})
# Posts per second shared by all of one user's sockets on an instance (each socket also has its
# own 12/s, burst 24): several sockets cannot multiply a user's rate without bound.
USER_RATE, USER_BURST = 30.0, 60.0


class Subscriber(Protocol):
    """What the hub needs of a socket (the chat consumer)."""

    conn_id: str
    rich: bool
    actor_key: str
    session_key: str | None

    def offer(self, event: dict[str, Any]) -> None: ...

    def close_soon(self, code: int) -> None: ...


class Hub:
    def __init__(self) -> None:
        self.instance = uuid.uuid4().hex[:16]
        self.loop: asyncio.AbstractEventLoop | None = None
        self.layer: BaseChannelLayer | None = None
        self.channel: str | None = None
        self.rooms: dict[str, set[Subscriber]] = {}
        self.seen: dict[str, int] = {}  # room -> every id up to this one has been dispatched
        self.held: dict[str, dict[int, str]] = {}  # room -> early messages waiting for a gap
        self.hold_timers: dict[str, asyncio.TimerHandle] = {}
        self.filling: set[str] = set()
        self.actors: dict[str, int] = {}  # actor key -> sockets on this process
        self.user_buckets: dict[str, protocol.TokenBucket] = {}
        self.control_ok = False
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
                await self._subscribe_control()
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
        for timer in self.hold_timers.values():
            timer.cancel()
        self.hold_timers.clear()
        if self.started:
            from hubbub.chat import services

            with contextlib.suppress(Exception):
                await db.background(services.presence_drop_instance)(instance=self.instance)
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
        self.actors[sub.actor_key] = self.actors.get(sub.actor_key, 0) + 1
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
        left = self.actors.get(sub.actor_key, 1) - 1
        if left > 0:
            self.actors[sub.actor_key] = left
        else:
            self.actors.pop(sub.actor_key, None)
            self.user_buckets.pop(sub.actor_key, None)
        metrics.WS_CONNECTIONS.dec()
        if not members:
            del self.rooms[room]
            for state in (self.seen, self.db_seen, self.presence_sent, self.held):
                state.pop(room, None)
            timer = self.hold_timers.pop(room, None)
            if timer is not None:
                timer.cancel()
            self.unsubscribed.discard(room)
            self.subscribing.pop(room, None)
            if self.layer is not None and self.channel is not None:
                with contextlib.suppress(Exception):
                    await self.layer.group_discard(group_name(room), self.channel)

    def may_connect(self, actor_key: str) -> bool:
        """False when this actor already has the most sockets allowed on this process."""
        return self.actors.get(actor_key, 0) < settings.HUBBUB_MAX_SOCKETS_PER_USER

    def user_bucket(self, actor_key: str, now: float) -> protocol.TokenBucket:
        bucket = self.user_buckets.get(actor_key)
        if bucket is None:
            bucket = self.user_buckets[actor_key] = protocol.TokenBucket(USER_RATE, USER_BURST, now)
        return bucket

    async def _subscribe_control(self) -> None:
        assert self.layer is not None and self.channel is not None
        try:
            await asyncio.wait_for(self.layer.group_add(CONTROL_GROUP, self.channel), PUBLISH_TIMEOUT)
            self.control_ok = True
        except Exception as exc:  # the watcher retries; revalidation covers the meantime
            log.warning("subscribe to %s failed: %r", CONTROL_GROUP, exc)

    async def _subscribe(self, room: str) -> None:
        if self.layer is None or self.channel is None:
            return
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
            self._release_held(room)

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
        assert self.layer is not None
        while True:
            event = await self._outgoing.get()
            group = CONTROL_GROUP if event.get("kind") in CONTROL_KINDS else group_name(event["room"])
            try:
                await asyncio.wait_for(self.layer.group_send(group, event), PUBLISH_TIMEOUT)
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
        if kind in CONTROL_KINDS:
            self._control(event)
            return
        room = event.get("room")
        if not isinstance(room, str):
            return
        members = self.rooms.get(room)
        if kind == "message":
            self._message(room, event["id"], event["text"])
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
                    sub.close_soon(protocol.CLOSE_FORBIDDEN)

    def _control(self, event: dict[str, Any]) -> None:
        """A session ended or a user is gone: close their sockets on this process (4401)."""
        session_key, user_key = event.get("session_key"), event.get("user_key")
        for members in list(self.rooms.values()):
            for sub in list(members):
                if (session_key and sub.session_key == session_key) or (
                    user_key and sub.actor_key == user_key
                ):
                    sub.close_soon(protocol.CLOSE_UNAUTHORIZED)

    # -- messages, in order, once per process ----------------------------------------------------

    def _message(self, room: str, seq: int, text: str) -> None:
        """Hand message ``seq`` to the room's sockets in id order.

        Instances post to a room in turn, so a message committed here can be dispatched before the
        one before it, committed elsewhere a moment earlier, arrives through Redis. Such an early
        message waits here (up to ``REORDER_WAIT``) instead of making every socket read the gap
        from the database; if the gap is still open then, it is read once for the whole room.
        """
        members = self.rooms.get(room)
        seen = self.seen.get(room, 0)
        if not members:
            if seq > seen:
                self.seen[room] = seq
            return
        if seq > seen + 1:
            held = self.held.setdefault(room, {})
            held[seq] = text
            if room not in self.hold_timers and room not in self.filling:
                assert self.loop is not None
                self.hold_timers[room] = self.loop.call_later(REORDER_WAIT, self._gap_timeout, room)
            return
        self._offer_message(members, seq, text)
        if seq == seen + 1:
            self.seen[room] = seq
            self._release_held(room)

    @staticmethod
    def _offer_message(members: set[Subscriber], seq: int, text: str) -> None:
        out = {"type": "hub.message", "id": seq, "text": text}
        for sub in list(members):
            sub.offer(out)

    def _release_held(self, room: str) -> None:
        held = self.held.get(room)
        if not held:
            return
        members = self.rooms.get(room) or set()
        seen = self.seen.get(room, 0)
        while held:
            first = min(held)
            if first > seen + 1:
                break
            text = held.pop(first)
            if first == seen + 1:
                seen = first
            self._offer_message(members, first, text)
        self.seen[room] = seen
        if not held:
            self.held.pop(room, None)
            timer = self.hold_timers.pop(room, None)
            if timer is not None:
                timer.cancel()

    def _gap_timeout(self, room: str) -> None:
        self.hold_timers.pop(room, None)
        held = self.held.get(room)
        if held and room in self.rooms:
            self.fill(room, min(held) - 1)

    def fill(self, room: str, upto: int) -> None:
        """Read ids after ``seen`` up to ``upto`` from the database once, for all local sockets."""
        if room in self.filling or upto <= self.seen.get(room, 0):
            return
        self.filling.add(room)
        task = asyncio.ensure_future(self._fill(room, upto))
        self._tasks.append(task)
        task.add_done_callback(self._tasks_done)

    def _tasks_done(self, task: asyncio.Task[None]) -> None:
        with contextlib.suppress(ValueError):
            self._tasks.remove(task)

    async def _fill(self, room: str, upto: int) -> None:
        from hubbub.chat import selectors

        try:
            while room in self.rooms and self.seen.get(room, 0) < upto:
                after = self.seen.get(room, 0)
                try:
                    batch = await db.run(selectors.message_texts_in)(
                        room_name=room, after=after, limit=min(FILL_BATCH, upto - after))
                except Exception as exc:
                    log.warning("cannot fill %s after %d: %r", room, after, exc)
                    break
                if not batch:
                    log.error("room %s: ids %d..%d missing from the database", room, after + 1, upto)
                    break
                for seq, text in batch:
                    if seq > self.seen.get(room, 0):
                        self.seen[room] = seq
                        self._offer_message(self.rooms.get(room) or set(), seq, text)
                self._release_held(room)
        finally:
            self.filling.discard(room)
        if room in self.rooms:
            self._release_held(room)
            held = self.held.get(room)
            if held and room not in self.hold_timers:
                # Still a gap (the database failed, or a later message overtook this fill):
                # try again after a pause; meanwhile sockets keep what they have.
                assert self.loop is not None
                self.hold_timers[room] = self.loop.call_later(
                    max(REORDER_WAIT, WATCH_INTERVAL / 2), self._gap_timeout, room)

    def presence_changed(self, room: str) -> None:
        """This process changed who is in ``room``: recompute here now, tell the others."""
        self.publish({"kind": "presence", "room": room})

    # -- the database watcher ----------------------------------------------------------------

    async def _watch_loop(self) -> None:
        from hubbub.chat import selectors

        next_revalidation = asyncio.get_running_loop().time() + REVALIDATE_EVERY
        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            if self.layer is not None and self.channel is not None and not self.control_ok:
                await self._subscribe_control()
            for room in list(self.unsubscribed):
                if room in self.rooms:
                    await self._subscribe(room)
            loop = asyncio.get_running_loop()
            if loop.time() >= next_revalidation:
                next_revalidation = loop.time() + REVALIDATE_EVERY
                await self._revalidate()
            names = [name for name in self.rooms if not is_job_room(name)]
            if not names:
                continue
            try:
                latest = await db.background(selectors.room_last_seqs)(names=names)
            except Exception as exc:
                log.warning("watcher cannot read the database: %r", exc)
                continue
            self.check_gaps(latest)

    def check_gaps(self, latest: dict[str, int]) -> None:
        """Fill from the database what live delivery has not brought (once per room).

        A room counts as behind only when an id the previous check already read (at least one
        interval ago) has still not been dispatched: a message committed a moment ago and still
        on its way through Redis does not cost a database read.
        """
        for room, last in latest.items():
            previous = self.db_seen.get(room, 0)
            if previous > self.seen.get(room, 0) and room in self.rooms:
                metrics.GAP_SYNCS.inc()
                self.fill(room, previous)
            self.db_seen[room] = last

    async def _revalidate(self) -> None:
        """Close sockets whose session was deleted or whose user was deleted or deactivated.

        Logout and user changes also publish an event that closes them at once; this check covers
        an event lost while Redis was unreachable.
        """
        from hubbub.accounts import services as accounts

        sessions = {s.session_key for m in self.rooms.values() for s in m if s.session_key}
        users = {k for k in self.actors if k.startswith("u:")}
        if not sessions and not users:
            return
        try:
            dead_sessions, dead_users = await db.background(accounts.gone)(
                session_keys=sessions, user_keys=users)
        except Exception as exc:
            log.warning("cannot revalidate sessions: %r", exc)
            return
        for key in dead_sessions:
            self._control({"session_key": key})
        for key in dead_users:
            self._control({"user_key": key})

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
                    await db.background(services.presence_heartbeat)(instance=self.instance)
                    rooms = [name for name in self.rooms if not is_job_room(name)]
                else:
                    # Coalesce a burst of joins and leaves into one query.
                    await asyncio.sleep(0.05)
                    rooms = [r for r in self.presence_dirty if r in self.rooms]
                self.presence_dirty.clear()
                if rooms:
                    names = await db.background(services.presence_names)(room_names=rooms)
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
            # A process that publishes and exits at once (a script, `hubbub manage`) must not drop
            # what is still queued: its daemon thread would die with it.
            atexit.register(flush_background, 2.0)
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

