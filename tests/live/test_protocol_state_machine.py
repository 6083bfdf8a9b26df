"""A property-based test of the chat protocol (CONTRACT.md §4) against live servers.

Hypothesis drives several clients (two users, two clients each) through random sequences of
connect (with or without ``?after=0``) / post (with a ``client_id``; or every connected client
at the same moment) / re-send a ``client_id``
(the same user's: nothing new is stored; another user's: a new message) / drop (the TCP
connection aborted, no close frame) / reconnect with ``?after=<last id seen>`` / restart an
instance (SIGTERM or SIGKILL, then start it again), against a two-instance cluster with a private
Redis and a fresh PostgreSQL database (or, without them, the embedded server alone).

After every step:

* every connected client has received, since it connected, exactly the ids after its starting
  point up to the room's last, in order, once each (the one allowed repeat: the stored event
  sent again in answer to its own re-send);
* the room's history holds ids 1..N, N being the number of posts acknowledged as new; each
  acknowledged post under its id, each (user, client_id) once;
* a re-send was answered with the id of the first acknowledgement.

The servers are started once for the module; each example gets a new room and new clients.
The test prints how many steps, posts and ids it checked.
"""

from __future__ import annotations

import asyncio
import collections
import shutil
import threading
import time
import uuid
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from tests.live.servers import HubbubServer, history, new_data_dir, postgres_database, redis_for_tests
from tests.live.wsclient import Socket

pytestmark = [pytest.mark.live]

T = TypeVar("T")

USERS = ("ursula", "victor")
CLIENTS_PER_USER = 2
MAX_RESTARTS = 1  # per example: a restart costs a server start (1-3 s)
EXAMPLES = 12
STEPS = 20


# -- the world the machine runs in: servers and an event loop of its own ---------------------------


class LoopThread:
    """An asyncio loop in a daemon thread: the (synchronous) state machine runs coroutines on it,
    and the sockets keep reading on it between steps."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="machine-loop", daemon=True)
        self.thread.start()

    def run(self, coro: Awaitable[T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@dataclass
class World:
    servers: list[HubbubServer]
    tokens: dict[str, str]
    loop: LoopThread
    mode: str
    counts: collections.Counter[str] = field(default_factory=collections.Counter)


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    root = new_data_dir()
    loop = LoopThread()
    servers: list[HubbubServer] = []
    try:
        with _backends(root) as env:
            if env is None:
                servers = [HubbubServer(root / "embedded", name="embedded")]
                mode = "embedded server (SQLite, in-memory layer): no redis-server or PostgreSQL"
            else:
                servers = [HubbubServer(root / name, env, name=name) for name in ("a", "b")]
                mode = "two instances, private Redis, fresh PostgreSQL database"
            for server in servers:
                server.start(wait=False)  # both migrate the empty database at once
            for server in servers:
                server.wait_ready()
            tokens = {name: servers[0].make_user(name) for name in USERS}
            yield World(servers, tokens, loop, mode)
    finally:
        for server in servers:
            server.stop()
        loop.close()
        shutil.rmtree(root, ignore_errors=True)


class _backends:
    """Redis + PostgreSQL for a cluster when both are available; else None (embedded)."""

    def __init__(self, root: Any) -> None:
        self.root = root
        self.stack: list[Any] = []

    def __enter__(self) -> dict[str, str] | None:
        try:
            redis = redis_for_tests(self.root)
            redis_url, _ = redis.__enter__()
            self.stack.append(redis)
            database = postgres_database()
            database_url = database.__enter__()
            self.stack.append(database)
        except pytest.skip.Exception as why:
            print(f"\nstate machine: falling back to the embedded server ({why})")
            self.__exit__(None, None, None)
            return None
        return {"REDIS_URL": redis_url, "DATABASE_URL": database_url}

    def __exit__(self, *exc: Any) -> None:
        while self.stack:
            self.stack.pop().__exit__(None, None, None)


# -- the model ------------------------------------------------------------------------------------


@dataclass
class Session:
    socket: Socket
    server: str
    start: int  # ids after this one are due to this session
    repeats: collections.Counter[int] = field(default_factory=collections.Counter)


@dataclass
class Client:
    name: str
    user: str
    token: str
    sessions: list[Session] = field(default_factory=list)
    n: int = 0

    @property
    def session(self) -> Session | None:
        if self.sessions and self.sessions[-1].socket.closed_code is None:
            return self.sessions[-1]
        return None

    def last_seen(self) -> int:
        """The last id of the stream received so far, repeats ignored."""
        if not self.sessions:
            return 0
        last = self.sessions[-1]
        return max([last.start, *last.socket.ids()])


def check_session(client: Client, session: Session, upto: int) -> int:
    """The session received start+1..upto in order, once each (its own re-sends' answers
    aside). How many ids it checked."""
    expected = session.start + 1
    repeats = collections.Counter(session.repeats)
    for i in session.socket.ids():
        if i == expected:
            expected += 1
        elif repeats[i] > 0:
            repeats[i] -= 1
        else:
            raise AssertionError(f"{client.name} on {session.server} (start {session.start}): got {i}, "
                                 f"expected {expected}; ids {session.socket.ids()}")
    assert expected - 1 == upto, f"{client.name}: received up to {expected - 1}, the room holds {upto}"
    return upto - session.start


class ProtocolMachine(RuleBasedStateMachine):
    world: World  # set by the test

    def __init__(self) -> None:
        super().__init__()
        w = self.world
        self.room = f"sm-{uuid.uuid4().hex[:12]}"
        self.clients = [Client(f"{user}{i}", user, w.tokens[user])
                        for user in USERS for i in range(CLIENTS_PER_USER)]
        self.n = 0  # messages stored in the room (each post waits for its answer)
        self.acked: dict[tuple[str, str], int] = {}  # (user, client_id) -> id
        self.restarts = 0
        w.counts["examples"] += 1

    def run(self, coro: Awaitable[T], timeout: float = 60) -> T:
        return self.world.loop.run(coro, timeout)

    def teardown(self) -> None:
        for client in self.clients:
            for session in client.sessions:
                self.run(session.socket.close())

    # -- helpers -------------------------------------------------------------------------------

    def connected(self) -> list[Client]:
        return [c for c in self.clients if c.session is not None]

    def open_session(self, client: Client, server: HubbubServer, after: int | None) -> None:
        sock = self.run(Socket.open(server.ws, self.room, token=client.token, after=after))
        client.sessions.append(Session(sock, server.name, self.n if after is None else after))

    def send(self, client: Client, cid: str) -> dict[str, Any]:
        return self.run(self.send_async(client, cid))

    async def send_async(self, client: Client, cid: str) -> dict[str, Any]:
        """Post ``cid`` and return its acknowledgement (waiting out a rate limit)."""
        session = client.session
        assert session is not None
        for _ in range(5):
            answer = await session.socket.post_or_error(f"{client.name} says {cid}", cid)
            if answer["type"] == "message":
                assert answer["client_id"] == cid and answer["room"] == self.room, answer
                assert answer["user"] == client.user, answer
                return answer
            assert answer["code"] == "rate_limited", answer
            self.world.counts["rate limited"] += 1
            await asyncio.sleep(float(answer["retry_after"]))
        raise AssertionError(f"{client.name}: still rate limited")

    # -- rules ---------------------------------------------------------------------------------

    @precondition(lambda self: any(not c.sessions for c in self.clients))
    @rule(data=st.data(), from_start=st.booleans())
    def connect(self, data: st.DataObject, from_start: bool) -> None:
        """A new client connects: with ?after=0 (everything stored, then live) or without
        (only what is posted from now on)."""
        client = data.draw(st.sampled_from([c for c in self.clients if not c.sessions]))
        server = data.draw(st.sampled_from(self.world.servers))
        self.open_session(client, server, 0 if from_start else None)
        self.world.counts["connects"] += 1

    @precondition(lambda self: any(c.sessions and c.session is None for c in self.clients))
    @rule(data=st.data())
    def reconnect(self, data: st.DataObject) -> None:
        """A dropped client comes back, on either instance, with ?after=<last id it saw>."""
        client = data.draw(st.sampled_from([c for c in self.clients if c.sessions and c.session is None]))
        server = data.draw(st.sampled_from(self.world.servers))
        self.open_session(client, server, client.last_seen())
        self.world.counts["reconnects"] += 1

    @precondition(lambda self: bool(self.connected()))
    @rule(data=st.data(), count=st.integers(1, 3))
    def post(self, data: st.DataObject, count: int) -> None:
        """A client posts ``count`` new messages, one after the other."""
        client = data.draw(st.sampled_from(self.connected()))
        for _ in range(count):
            cid = f"{client.name}-{client.n}"
            client.n += 1
            answer = self.send(client, cid)
            assert answer["id"] == self.n + 1, f"a new post got id {answer['id']}, the room held {self.n}"
            self.n += 1
            self.acked[(client.user, cid)] = answer["id"]
            self.world.counts["posts"] += 1

    @precondition(lambda self: len(self.connected()) >= 2)
    @rule()
    def post_together(self) -> None:
        """Every connected client posts at the same moment (on whichever instance it is): the
        acknowledgements take the next ids, each once."""
        clients = self.connected()
        cids = []
        for client in clients:
            cids.append(f"{client.name}-{client.n}")
            client.n += 1

        async def all_at_once() -> list[dict[str, Any]]:
            return list(await asyncio.gather(*(
                self.send_async(client, cid) for client, cid in zip(clients, cids, strict=True))))

        answers = self.run(all_at_once())
        ids = sorted(a["id"] for a in answers)
        assert ids == list(range(self.n + 1, self.n + len(clients) + 1)), (
            f"concurrent posts got ids {ids}, the room held {self.n}")
        self.n += len(clients)
        for client, cid, answer in zip(clients, cids, answers, strict=True):
            self.acked[(client.user, cid)] = answer["id"]
        self.world.counts["posts"] += len(clients)
        self.world.counts["concurrent post rounds"] += 1

    @precondition(lambda self: bool(self.connected()) and bool(self.acked))
    @rule(data=st.data())
    def resend(self, data: st.DataObject) -> None:
        """Post again with a client_id already acknowledged. The same user's (any of its
        clients'): the stored event again, nothing new. Another user's: a new message."""
        client = data.draw(st.sampled_from(self.connected()))
        _, cid = data.draw(st.sampled_from(sorted(self.acked)))
        answer = self.send(client, cid)
        session = client.session
        assert session is not None
        mine = (client.user, cid)
        if mine in self.acked:
            assert answer["id"] == self.acked[mine], (
                f"re-sent {cid} answered with id {answer['id']}, first acknowledged as {self.acked[mine]}")
            session.repeats[answer["id"]] += 1
            self.world.counts["re-sends (same user)"] += 1
        else:
            assert answer["id"] == self.n + 1, f"another user's client_id {cid} got id {answer['id']}"
            self.n += 1
            self.acked[mine] = answer["id"]
            self.world.counts["posts"] += 1
            self.world.counts["re-used client_ids (other user)"] += 1

    @precondition(lambda self: bool(self.connected()))
    @rule(data=st.data())
    def drop(self, data: st.DataObject) -> None:
        """The client's TCP connection ends without a close frame."""
        client = data.draw(st.sampled_from(self.connected()))
        session = client.session
        assert session is not None
        session.socket.conn.transport.abort()
        self.run(session.socket.wait_closed(10))
        self.world.counts["drops"] += 1

    @precondition(lambda self: self.restarts < MAX_RESTARTS)
    @rule(data=st.data(), kill=st.booleans())
    def restart_instance(self, data: st.DataObject, kill: bool) -> None:
        """SIGKILL or SIGTERM an instance, then start it again (same port)."""
        server = data.draw(st.sampled_from(self.world.servers))
        victims = [c for c in self.connected() if c.sessions[-1].server == server.name]
        if kill:
            server.kill9()
        else:
            assert server.stop() == 0, server.log_tail()
        for client in victims:
            code = self.run(client.sessions[-1].socket.wait_closed(10))
            if not kill:
                assert code == 1012, f"{client.name}: closed with {code} on SIGTERM"
        server.start()
        self.restarts += 1
        self.world.counts["restarts (SIGKILL)" if kill else "restarts (SIGTERM)"] += 1

    # -- invariants ----------------------------------------------------------------------------

    @invariant()
    def every_client_caught_up_without_gap_or_duplicate(self) -> None:
        for client in self.connected():
            session = client.session
            assert session is not None
            if self.n > session.start:
                self.run(session.socket.wait_until(lambda c=client: c.last_seen() >= self.n, timeout=10,
                                                   what=f"{client.name} to reach {self.n}"))
        for client in self.clients:
            for i, session in enumerate(client.sessions):
                if i == len(client.sessions) - 1 and client.session is not None:
                    self.world.counts["ids checked"] += check_session(client, session, self.n)
                else:  # a closed session: gapless and duplicate-free as far as it went
                    check_session(client, session, max([session.start, *session.socket.ids()]))
        self.world.counts["steps"] += 1

    @invariant()
    def every_acknowledged_post_is_stored_once(self) -> None:
        server = self.world.servers[self.world.counts["steps"] % len(self.world.servers)]
        stored = self.run(history(server.http, self.room, self.world.tokens[USERS[0]])) if self.n else []
        assert [m["id"] for m in stored] == list(range(1, self.n + 1)), (
            f"history ids {[m['id'] for m in stored]}, {self.n} acknowledged")
        keys = [(m["user"], m["client_id"]) for m in stored]
        assert len(keys) == len(set(keys)), f"a (user, client_id) stored twice: {keys}"
        by_key = {k: m["id"] for k, m in zip(keys, stored, strict=True)}
        assert by_key == self.acked, "the history does not match the acknowledgements"


def test_protocol_state_machine(world: World) -> None:
    ProtocolMachine.world = world
    started = time.monotonic()
    run_state_machine_as_test(
        ProtocolMachine,
        settings=settings(
            max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None, database=None,
            # A failure is reported with the steps that led to it; shrinking would restart
            # servers for minutes.
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        ),
    )
    counts = world.counts
    print(f"\nSTATE MACHINE FIGURES ({world.mode}): {counts['examples']} examples, "
          f"{counts['steps']} steps checked, {time.monotonic() - started:.0f} s; "
          + ", ".join(f"{k}={v}" for k, v in sorted(counts.items()) if k not in ("examples", "steps")))
    assert counts["posts"] > 0 and counts["steps"] >= EXAMPLES, counts
