"""Faults in a two-instance cluster (CONTRACT.md §4): an instance killed with SIGKILL while clients
post through both, and the shared Redis stopped and started again. The database is the truth: no
acknowledged message may be lost or stored twice, and every reader ends with ids 1..N once each."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import httpx
import pytest
import websockets

from tests.live.conftest import Cluster
from tests.live.servers import HubbubServer, history
from tests.live.wsclient import Socket

pytestmark = [pytest.mark.live]

POST_GAP = 0.11  # between one poster's posts: under the contract's 10 messages/s per connection


@dataclass
class Client:
    """A chat client that may post; it keeps every session's socket and every acknowledgement."""

    tag: str
    token: str | None
    sessions: list[Socket] = field(default_factory=list)
    acked: dict[str, int] = field(default_factory=dict)  # client_id -> acknowledged id
    pending: str | None = None  # a client_id sent but never answered (its instance died)
    resent_id: int | None = None  # the id answered to the re-sent pending post
    n: int = 0

    @property
    def sock(self) -> Socket:
        return self.sessions[-1]

    def last_seen(self) -> int:
        ids = [i for s in self.sessions for i in s.ids()]
        return max(ids, default=0)

    async def connect(self, server: HubbubServer, room: str, after: int | None = None) -> None:
        self.sessions.append(await Socket.open(server.ws, room, token=self.token, after=after))

    async def post_until(self, stop: asyncio.Event) -> None:
        """Post, one message in flight, until ``stop`` or until the socket dies under us (the
        unanswered client_id is then kept in ``pending``, to be sent again after reconnecting)."""
        while not stop.is_set():
            resend = self.pending is not None
            cid = self.pending or f"{self.tag}-{self.n}"
            self.pending = cid
            try:
                answer = await self.sock.post_or_error(f"text of {cid}", cid, timeout=10)
            except (AssertionError, websockets.ConnectionClosed):
                if self.sock.closed_code is not None or self.sock.conn.state.name != "OPEN":
                    return  # the instance died; `pending` stays set
                raise
            if answer["type"] == "error":
                assert answer["code"] == "rate_limited", answer
                await asyncio.sleep(float(answer["retry_after"]))
                continue
            self.acked[cid] = answer["id"]
            if resend:
                self.resent_id = answer["id"]
            if cid == f"{self.tag}-{self.n}":
                self.n += 1
            self.pending = None
            await asyncio.sleep(POST_GAP)

    def all_ids(self) -> list[int]:
        """Every id this client received over all its sessions, the repeat answer to a re-sent
        post (the contract: "the sender gets the stored event again") counted once."""
        out: list[int] = []
        for sock in self.sessions:
            ids = sock.ids()
            if self.resent_id is not None and sock is self.sessions[-1] and ids.count(self.resent_id) == 2:
                second = len(ids) - 1 - ids[::-1].index(self.resent_id)
                del ids[second]
            out.extend(ids)
        return out


async def test_kill_9_while_posting_through_both_loses_and_duplicates_nothing(cluster: Cluster) -> None:
    room = "kill9"
    victim, survivor = cluster.a, cluster.b
    token = victim.make_user("poster")  # one user; client_ids differ per poster
    posters: list[tuple[Client, HubbubServer]] = []
    for server in (victim, survivor):
        for i in range(3):
            client = Client(f"{server.name}{i}", token)
            await client.connect(server, room)
            posters.append((client, server))
    readers = [(Client(f"r-{s.name}", None), s) for s in (victim, survivor)]
    for reader, server in readers:
        await reader.connect(server, room)

    stop = asyncio.Event()
    tasks = {id(c): asyncio.ensure_future(c.post_until(stop)) for c, _ in posters}
    await asyncio.sleep(2.0)
    cluster.a.kill9()
    killed_at = time.monotonic()

    # The victim's posters notice, reconnect to the survivor from their last id, send again
    # what was unanswered and go on posting.
    for client, server in posters:
        if server is victim:
            await tasks[id(client)]
            assert client.pending is not None or client.sock.closed_code is not None
            await client.connect(survivor, room, after=client.last_seen())
            tasks[id(client)] = asyncio.ensure_future(client.post_until(stop))
    # Every reader reconnects to the survivor with ?after= its last id.
    for reader, _ in readers:
        await reader.sessions[-1].close()
        await reader.connect(survivor, room, after=reader.last_seen())
    await asyncio.sleep(max(0.0, killed_at + 2.0 - time.monotonic()))
    stop.set()
    await asyncio.gather(*tasks.values())
    for client, _ in posters:
        assert client.pending is None, f"{client.tag}: {client.pending} never answered"
        assert client.sock.closed_code is None

    stored = await history(survivor.http, room, token)
    n = len(stored)
    assert [m["id"] for m in stored] == list(range(1, n + 1)), "history ids are not 1..N"
    cids = [m["client_id"] for m in stored]
    assert len(cids) == len(set(cids)), "a client_id is stored twice"
    by_cid = {m["client_id"]: m["id"] for m in stored}
    acked = {cid: i for client, _ in posters for cid, i in client.acked.items()}
    assert len(acked) > 30
    missing = {cid: i for cid, i in acked.items() if by_cid.get(cid) != i}
    assert not missing, f"acknowledged but not stored under that id: {missing}"

    for client, _ in posters + readers:
        await client.sock.wait_ids(n)
    await asyncio.sleep(0.5)  # room for a late duplicate
    for client, _ in posters + readers:
        assert client.all_ids() == list(range(1, n + 1)), client.tag
    for client, _ in posters + readers:
        for sock in client.sessions:
            await sock.close()
    assert "Traceback" not in survivor.log_tail(400), survivor.log_tail()


async def test_redis_outage_delays_but_loses_nothing(cluster: Cluster) -> None:
    if cluster.redis is None:
        pytest.skip("no private redis-server to stop (REDIS_URL from the environment is shared)")
    room = "outage"
    readers = [await Socket.open(s.ws, room) for s in cluster.servers for _ in range(2)]
    posters = [Client(f"{s.name}{i}", None) for s in cluster.servers for i in range(2)]
    for client, server in zip(posters, [s for s in cluster.servers for _ in range(2)], strict=True):
        await client.connect(server, room)

    probes: dict[str, list[tuple[str, int]]] = {s.name: [] for s in cluster.servers}
    probing = asyncio.Event()

    async def probe() -> None:
        async with httpx.AsyncClient(timeout=5) as http:
            while not probing.is_set():
                for server in cluster.servers:
                    for path in ("/livez", "/readyz"):
                        try:
                            status = (await http.get(server.http + path)).status_code
                        except httpx.HTTPError as exc:
                            status = -1
                            print(f"{server.name}{path}: {exc!r}")
                        probes[server.name].append((path, status))
                await asyncio.sleep(0.2)

    stop = asyncio.Event()
    tasks = [asyncio.ensure_future(c.post_until(stop)) for c in posters]
    prober = asyncio.ensure_future(probe())
    await asyncio.sleep(1.5)
    cluster.redis.stop()
    down_at = time.monotonic()
    await asyncio.sleep(4.0)
    during = {name: len(p) for name, p in probes.items()}
    cluster.redis.start()  # the same port
    up_at = time.monotonic()
    print(f"redis down for {up_at - down_at:.1f}s")
    await asyncio.sleep(1.0)
    stop.set()
    await asyncio.gather(*tasks)
    acked = sorted(i for c in posters for i in c.acked.values())
    n = acked[-1]
    assert acked == list(range(1, n + 1)), "acknowledged ids are not 1..N"

    everyone = readers + [c.sock for c in posters]
    for sock in everyone:
        await sock.wait_ids(n, timeout=max(0.5, up_at + 10 - time.monotonic()))
    await asyncio.sleep(0.5)  # room for a late duplicate
    for sock in everyone:
        assert sock.ids() == list(range(1, n + 1))
        assert sock.closed_code is None

    # Posts after the outage still cross instances, in both directions.
    for sender, receiver in ((posters[0].sock, readers[-1]), (posters[-1].sock, readers[0])):
        ack = await sender.post("after the outage", f"late-{sender.conn.id}")
        await receiver.wait_ids(ack["id"], timeout=5)
    # And soon through Redis again, not only through the database watcher (which needs 1-2 s):
    # the subscriptions came back by themselves.
    await asyncio.sleep(2.0)
    for n_probe, (sender, receiver) in enumerate(
        ((posters[0].sock, readers[-1]), (posters[-1].sock, readers[0])) * 2
    ):
        started = time.monotonic()
        ack = await sender.post("through redis", f"redis-{n_probe}")
        await receiver.wait_ids(ack["id"], timeout=5)
        assert time.monotonic() - started < 0.9, "live delivery did not come back after the outage"

    # Ready again once Redis is back.
    async with httpx.AsyncClient(timeout=5) as http:
        for server in cluster.servers:
            deadline = time.monotonic() + 10
            while (await http.get(server.http + "/readyz")).status_code != 200:
                assert time.monotonic() < deadline, f"{server.name} not ready again"
                await asyncio.sleep(0.2)
    probing.set()
    await prober
    for server in cluster.servers:
        seen = probes[server.name]
        livez = [s for p, s in seen if p == "/livez"]
        readyz = [s for p, s in seen[: during[server.name]] if p == "/readyz"]
        assert set(livez) == {200}, f"{server.name} /livez: {livez}"
        assert 503 in readyz, f"{server.name} /readyz never said 503 while Redis was down: {readyz}"
        assert "Traceback" not in server.log_tail(400), server.log_tail()
    for sock in everyone:
        await sock.close()
