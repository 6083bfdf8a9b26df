"""What the fault tests share: chat clients that keep posting through faults (reconnecting with
``?after=`` and re-sending what was not acknowledged), a background ``/livez`` prober, and the
checks run after every fault.

The checks, after each fault (CONTRACT.md §4):

* the room's history (``GET /api/rooms/{room}/messages``) holds ids 1..N once each, each
  ``client_id`` once, and every acknowledged post under the id its acknowledgement gave;
* every client, over all its sessions (each opened with ``?after=<last id seen>``), has received
  1..N in order, once each. The one allowed repeat: the stored event sent again in answer to a
  re-sent ``client_id`` (the contract's "the sender gets the stored event again");
* every surviving server answered ``GET /livez`` with 200 throughout.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import websockets

from tests.live.servers import HubbubServer, history
from tests.live.wsclient import Socket

POST_GAP = 0.11  # between one poster's posts: under the contract's 10 messages/s per connection


# -- /livez in a background thread ----------------------------------------------------------------


class LivezProbe:
    """Polls ``GET /livez`` of the servers it watches every ``interval`` s from its own thread
    (the test's event loop may block; the probe must not). Watch only servers that must stay up:
    ``unwatch`` a server before killing it."""

    def __init__(self, servers: Sequence[HubbubServer], interval: float = 0.2, timeout: float = 2.0) -> None:
        self.watched: dict[str, HubbubServer] = {s.name: s for s in servers}
        self.interval = interval
        self.timeout = timeout
        self.probes = 0
        self.failures: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="livez-probe", daemon=True)

    def watch(self, server: HubbubServer) -> None:
        with self._lock:
            self.watched[server.name] = server

    def unwatch(self, server: HubbubServer) -> None:
        with self._lock:
            self.watched.pop(server.name, None)

    def _run(self) -> None:
        with httpx.Client(timeout=self.timeout) as http:
            while not self._stop.is_set():
                with self._lock:
                    servers = list(self.watched.values())
                for server in servers:
                    try:
                        status = http.get(server.http + "/livez").status_code
                        problem = None if status == 200 else f"status {status}"
                    except httpx.HTTPError as exc:
                        problem = repr(exc)
                    with self._lock:
                        if server.name not in self.watched:
                            continue  # unwatched while we asked (about to be killed)
                        self.probes += 1
                        if problem:
                            self.failures.append(f"{time.strftime('%H:%M:%S')} {server.name}: {problem}")
                self._stop.wait(self.interval)

    def __enter__(self) -> LivezProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(10)

    def check(self) -> None:
        assert self.probes > 0, "the /livez probe never ran"
        assert not self.failures, (
            f"/livez failed {len(self.failures)} of {self.probes} times: {self.failures[:10]}")


@contextlib.contextmanager
def probing(servers: Sequence[HubbubServer]) -> Iterator[LivezProbe]:
    with LivezProbe(servers) as probe:
        yield probe


# -- chat clients ---------------------------------------------------------------------------------


@dataclass
class Session:
    socket: Socket
    after: int  # the ?after= it was opened with
    server: str


@dataclass
class ChatClient:
    """A client that reads a room and, if ``posting``, posts into it one message at a time.

    When its socket dies it reconnects (to its home server if it is up, else to another) with
    ``?after=<last id seen>`` and re-sends the post that was not answered, with the same
    ``client_id``. A ``server_error`` answer (the database was unreachable) is retried the same
    way on the same socket.
    """

    tag: str
    token: str | None
    room: str
    home: HubbubServer
    posting: bool = True
    gap: float = POST_GAP
    sessions: list[Session] = field(default_factory=list)
    acked: dict[str, int] = field(default_factory=dict)  # client_id -> acknowledged id
    pending: str | None = None  # sent, not yet answered
    resent: set[str] = field(default_factory=set)  # client_ids sent more than once
    n: int = 0
    server_errors: int = 0
    rate_limited: int = 0
    reconnects: int = 0

    @property
    def sock(self) -> Socket:
        return self.sessions[-1].socket

    @property
    def open(self) -> bool:
        return bool(self.sessions) and self.sock.closed_code is None and self.sock.conn.state.name == "OPEN"

    def last_seen(self) -> int:
        ids = [i for s in self.sessions for i in s.socket.ids()]
        return max(ids, default=0)

    async def connect(self, servers: Sequence[HubbubServer], deadline: float = 30.0) -> None:
        """Open a new session with ``?after=<last id seen>`` on the first server that takes it
        (home first)."""
        candidates = [self.home] + [s for s in servers if s is not self.home]
        after = self.last_seen()
        give_up = time.monotonic() + deadline
        while True:
            for server in candidates:
                if server.proc is None:
                    continue
                try:
                    sock = await Socket.open(server.ws, self.room, token=self.token, after=after)
                except (OSError, websockets.InvalidHandshake, TimeoutError):
                    continue
                if self.sessions:
                    self.reconnects += 1
                self.sessions.append(Session(sock, after, server.name))
                return
            assert time.monotonic() < give_up, f"{self.tag}: no server took a connection for {deadline}s"
            await asyncio.sleep(0.2)

    async def run(self, stop: asyncio.Event, servers: Sequence[HubbubServer]) -> None:
        """Post (or just stay connected) until ``stop``; then finish the post in flight."""
        while True:
            if not self.open:
                await self.connect(servers)
            if stop.is_set() and self.pending is None:
                return
            if not self.posting:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.1)
                continue
            await self.post_once()
            await asyncio.sleep(self.gap)

    async def post_once(self) -> None:
        """Send the pending post (or a new one) and handle its answer."""
        if self.pending is None:
            self.pending = f"{self.tag}-{self.n}"
            self.n += 1
        else:
            self.resent.add(self.pending)
        cid = self.pending
        try:
            answer = await self.sock.post_or_error(f"text of {cid}", cid, timeout=15)
        except (AssertionError, websockets.ConnectionClosed):
            if not self.open:
                return  # the socket died; reconnect and send again
            raise
        if answer["type"] == "error":
            if answer["code"] == "rate_limited":
                self.rate_limited += 1
                await asyncio.sleep(float(answer["retry_after"]))
            elif answer["code"] == "server_error":
                self.server_errors += 1
                await asyncio.sleep(0.2)
            else:
                raise AssertionError(f"{self.tag}: unexpected error {answer}")
            return
        assert answer["client_id"] == cid, answer
        if cid in self.acked:
            assert self.acked[cid] == answer["id"], (
                f"{cid} acknowledged as {self.acked[cid]} then {answer['id']}")
        self.acked[cid] = answer["id"]
        self.pending = None

    def check_stream(self, n: int) -> int:
        """Every id 1..n received once, in order, over the sessions; how many ids were checked."""
        expected = 1
        own_repeats = {self.acked[c] for c in self.resent if c in self.acked}
        for number, session in enumerate(self.sessions):
            assert session.after == expected - 1, (
                f"{self.tag}: session {number} opened with after={session.after}, had seen {expected - 1}")
            skipped: set[int] = set()
            for i in session.socket.ids():
                if i == expected:
                    expected += 1
                elif i in own_repeats and i not in skipped:
                    skipped.add(i)  # the stored event sent again in answer to a re-sent post
                else:
                    raise AssertionError(
                        f"{self.tag} session {number} on {session.server}: got id {i}, expected {expected} "
                        f"(ids {session.socket.ids()[:50]}...)")
        assert expected - 1 == n, f"{self.tag}: received up to {expected - 1}, the room holds {n}"
        return n

    async def close(self) -> None:
        for session in self.sessions:
            with contextlib.suppress(Exception):
                await session.socket.close()


# -- a room under load ----------------------------------------------------------------------------


@dataclass
class Figures:
    """What one fault test measured; printed for the report."""

    name: str
    faults: list[str] = field(default_factory=list)
    acknowledged: int = 0
    stored: int = 0
    ids_checked: int = 0
    clients: int = 0
    reconnects: int = 0
    server_errors: int = 0
    livez_probes: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def print(self) -> None:
        extra = "".join(f", {k}={v}" for k, v in self.extra.items())
        print(f"\nFAULT FIGURES {self.name}: faults={len(self.faults)} ({'; '.join(self.faults)}), "
              f"acknowledged={self.acknowledged}, stored={self.stored}, clients={self.clients}, "
              f"ids checked on sockets={self.ids_checked}, reconnects={self.reconnects}, "
              f"server_errors retried={self.server_errors}, livez probes={self.livez_probes}{extra}")


class Load:
    """Posters and readers on every server of ``servers``, posting continuously into ``room``."""

    def __init__(self, servers: Sequence[HubbubServer], room: str, token: str | None,
                 posters_per_server: int = 2, readers_per_server: int = 1, gap: float = POST_GAP) -> None:
        self.servers = list(servers)  # the servers clients may (re)connect to; edit on a kill
        self.room = room
        self.token = token
        self.clients: list[ChatClient] = []
        for server in servers:
            for i in range(posters_per_server):
                self.clients.append(ChatClient(f"{server.name}-p{i}", token, room, server, gap=gap))
            for i in range(readers_per_server):
                self.clients.append(ChatClient(f"{server.name}-r{i}", token, room, server, posting=False))
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        for client in self.clients:
            await client.connect(self.servers)
        self.tasks = [asyncio.ensure_future(c.run(self.stop, self.servers)) for c in self.clients]

    def drop(self, server: HubbubServer) -> None:
        """``server`` is about to die: no client may pick it on reconnecting."""
        self.servers.remove(server)

    def alive(self) -> None:
        """Fail early if a client task died."""
        for task in self.tasks:
            if task.done() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]

    async def finish(self, timeout: float = 60) -> None:
        self.stop.set()
        await asyncio.wait_for(asyncio.gather(*self.tasks), timeout)

    async def caught_up(self, upto: int, within: float, what: str) -> None:
        """Every client has seen ``upto`` within ``within`` seconds (its socket staying open)."""
        deadline = time.monotonic() + within
        for client in self.clients:
            await client.sock.wait_until(lambda c=client: c.last_seen() >= upto,
                                         timeout=max(0.01, deadline - time.monotonic()),
                                         what=f"{client.tag} to see {upto} {what}")

    def acked(self) -> dict[str, int]:
        return {cid: i for c in self.clients for cid, i in c.acked.items()}

    async def verify(self, via: HubbubServer, figures: Figures, catch_up: float = 15) -> list[dict[str, Any]]:
        """The checks of the module docstring (call after ``finish``); fills ``figures``."""
        for client in self.clients:
            assert client.pending is None, f"{client.tag}: {client.pending} never answered"
        stored = await history(via.http, self.room, self.token)
        n = len(stored)
        assert [m["id"] for m in stored] == list(range(1, n + 1)), "history ids are not 1..N"
        cids = [m["client_id"] for m in stored if m["client_id"] is not None]
        assert len(cids) == len(set(cids)), "a client_id is stored twice"
        by_cid = {m["client_id"]: m["id"] for m in stored}
        acked = self.acked()
        assert acked, "nothing was acknowledged"
        wrong = {cid: (i, by_cid.get(cid)) for cid, i in acked.items() if by_cid.get(cid) != i}
        assert not wrong, f"acknowledged (id) but stored (id): {wrong}"
        # Every post the clients sent and that was stored was acknowledged (nothing half-done).
        ours = {c for c in cids if any(c.startswith(cl.tag + "-") for cl in self.clients)}
        assert ours == set(acked), f"stored but never acknowledged: {sorted(ours - set(acked))[:10]}"

        for client in self.clients:
            if not client.open:
                await client.connect(self.servers)
            await client.sock.wait_until(lambda c=client: c.last_seen() >= n, timeout=catch_up,
                                         what=f"{client.tag} catching up to {n}")
        await asyncio.sleep(0.5)  # room for a late duplicate
        checked = sum(client.check_stream(n) for client in self.clients)
        figures.acknowledged = len(acked)
        figures.stored = n
        figures.ids_checked += checked
        figures.clients = len(self.clients)
        figures.reconnects = sum(c.reconnects for c in self.clients)
        figures.server_errors = sum(c.server_errors for c in self.clients)
        return stored

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for client in self.clients:
            await client.close()
