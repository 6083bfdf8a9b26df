"""Beyond one Redis (docs/deployment.md), with real processes: two `hubbub serve` instances on
PostgreSQL whose REDIS_URL is

* a list of three redis-servers (shards): every room lives on exactly one shard, chosen by
  channels_redis' consistent hash, each process subscribes once per room there, every shard
  carries traffic, and a shard that goes away degrades delivery to the database watcher and
  readiness to 503 until it is back;
* a Redis Sentinel set (master, replica, three Sentinels): a graceful failover and then a kill -9
  of the master, both under load; the instances follow the new master by themselves, and no
  acknowledged message is lost or doubled, ids stay gapless, /livez answers throughout.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from channels_redis.utils import _consistent_hash

from hubbub import config
from hubbub.redisconn import sync_primary
from tests.live.scaleout_kit import Poster, RedisNode, SentinelSet, check_room
from tests.live.servers import HubbubServer, history, postgres_database, wait_until
from tests.live.wsclient import Socket

pytestmark = [pytest.mark.live]


def group_channel(room: str) -> str:
    """The Redis channel of a room's group: the layer prefix "hubbub", channels_redis'
    "__group__", and Hubbub's group name "room.<room>" (realtime/events.py)."""
    return f"hubbub__group__room.{room}"


@pytest.fixture
def shards(data_dir: Path) -> Iterator[list[RedisNode]]:
    if not shutil.which("redis-server"):
        pytest.skip("redis-server is not installed: the sharding test needs three private ones")
    nodes = [RedisNode(data_dir) for _ in range(3)]
    try:
        for node in nodes:
            node.start()
        yield nodes
    finally:
        for node in nodes:
            node.stop()


def start_pair(data_dir: Path, env: dict[str, str]) -> list[HubbubServer]:
    servers = [HubbubServer(data_dir / n, env, name=n) for n in ("a", "b")]
    for server in servers:
        server.start(wait=False)
    for server in servers:
        server.wait_ready()
    return servers


def readyz(server: HubbubServer) -> tuple[int, str]:
    try:
        resp = server.get("/readyz")
    except httpx.HTTPError as exc:
        return -1, repr(exc)
    return resp.status_code, resp.json()["checks"]["channel_layer"]


async def test_rooms_are_spread_over_redis_shards_and_cross_instances(
    data_dir: Path, shards: list[RedisNode],
) -> None:
    with postgres_database() as database_url:
        redis_url = ",".join(n.url for n in shards)
        servers = start_pair(data_dir, {"REDIS_URL": redis_url, "DATABASE_URL": database_url})
        try:
            await _sharded(servers, shards)
        finally:
            for server in servers:
                server.stop()


async def _sharded(servers: list[HubbubServer], shards: list[RedisNode]) -> None:
    for server in servers:
        assert readyz(server) == (200, "ok (3 shards)")
    rooms = [f"shard{i}" for i in range(18)]
    home = {room: _consistent_hash(group_channel(room), 3) for room in rooms}
    assert set(home.values()) == {0, 1, 2}, "the chosen rooms should land on every shard"

    socks = {room: [await Socket.open(s.ws, room) for s in servers] for room in rooms}

    async def talk(room: str) -> None:
        on_a, on_b = socks[room]
        for n in range(3):
            await on_a.post(f"{room} a{n}", f"{room}-a{n}")
            await on_b.post(f"{room} b{n}", f"{room}-b{n}")

    await asyncio.gather(*(talk(room) for room in rooms))
    for room in rooms:
        for sock in socks[room]:
            assert await sock.wait_ids(6) == [1, 2, 3, 4, 5, 6]

    # Each room's group is subscribed on its own shard only, once per process (not per socket),
    # and every shard carried publishes. The hubs' control group (logouts, deleted users) lives
    # on its own shard like any group.
    control = "hubbub__group__hubbub.control"
    for index, node in enumerate(shards):
        r = node.client()
        channels = set(r.pubsub_channels("hubbub__group__*"))
        expected = {group_channel(room) for room in rooms if home[room] == index}
        if _consistent_hash(control, 3) == index:
            expected.add(control)
        assert channels == expected, f"shard {index}: {sorted(channels)} != {sorted(expected)}"
        counts = dict(r.pubsub_numsub(*expected))
        assert set(counts.values()) == {2}, counts
        publishes = r.info("commandstats").get("cmdstat_publish", {}).get("calls", 0)
        assert publishes >= 6 * len(expected), f"shard {index}: {publishes} publishes"
        print(f"shard {index}: {len(expected)} rooms, {publishes} PUBLISH calls")

    # A shard that goes away: readiness says which one; its rooms still get their messages,
    # from the database watcher, until the shard is back and the processes subscribe again.
    lost = 2
    down_room = next(room for room in rooms if home[room] == lost)
    shards[lost].stop()
    for server in servers:
        await asyncio.to_thread(wait_until, lambda s=server: readyz(s)[0] == 503, 10, 0.1,
                                "readyz 503 without a shard")
        _, detail = readyz(server)
        assert detail.startswith("unreachable: 1 of 3 shards") and f":{shards[lost].port}" in detail
    on_a, on_b = socks[down_room]
    ack = await on_a.post("while the shard is down", "down-1")
    assert (await on_b.wait_for(lambda e: e.get("client_id") == "down-1", timeout=10)) == ack
    other_room = next(room for room in rooms if home[room] == 0)
    ack = await socks[other_room][1].post("other shards are fine", "up-1")
    await socks[other_room][0].wait_for(lambda e: e.get("client_id") == "up-1", timeout=5)

    shards[lost].start()  # the same port, empty
    for server in servers:
        await asyncio.to_thread(wait_until, lambda s=server: readyz(s) == (200, "ok (3 shards)"), 15,
                                0.1, "readyz back")
    r = shards[lost].client()
    expected = [group_channel(room) for room in rooms if home[room] == lost]
    await asyncio.to_thread(wait_until, lambda: set(dict(r.pubsub_numsub(*expected)).values()) == {2},
                            15, 0.1, "both processes subscribed again on the restarted shard")
    ack = await on_b.post("after the shard is back", "back-1")
    assert (await on_a.wait_for(lambda e: e.get("client_id") == "back-1", timeout=10)) == ack
    for room in rooms:
        for sock in socks[room]:
            await sock.close()


# -- Sentinel -------------------------------------------------------------------------------------


@pytest.fixture
def sentinels(data_dir: Path) -> Iterator[SentinelSet]:
    if not shutil.which("redis-server"):
        pytest.skip("redis-server is not installed: the Sentinel test needs a master, a replica "
                    "and three Sentinels (redis-server --sentinel or redis-sentinel)")
    made = SentinelSet(data_dir)
    try:
        made.start()
        yield made
    finally:
        made.stop()


async def test_sentinel_failover_under_load_loses_and_doubles_nothing(
    data_dir: Path, sentinels: SentinelSet,
) -> None:
    with postgres_database() as database_url:
        servers = start_pair(data_dir, {"REDIS_URL": sentinels.url, "DATABASE_URL": database_url})
        try:
            await _failovers(servers, sentinels)
        finally:
            for server in servers:
                server.stop()


async def _failovers(servers: list[HubbubServer], sentinels: SentinelSet) -> None:
    first = sentinels.master_port()
    # The direct uses (the workers' wake-up list) hold a client for the life of the process: it
    # must follow the failovers too. Made now, used again after both.
    target = config.load({"HUBBUB_DATA_DIR": str(servers[0].data_dir), "REDIS_URL": sentinels.url}).redis
    assert target is not None and target.mode == "sentinel"
    direct = sync_primary(target, socket_timeout=2)
    assert direct.lpush("hubbub:test:wake", 1) == 1
    for server in servers:
        assert readyz(server) == (200, f"ok (sentinel master 'hubbub' at 127.0.0.1:{first})")
    rooms = [f"sent{i}" for i in range(4)]
    clients = [Poster(f"{room}-{s.name}{j}", room) for room in rooms for s in servers for j in range(2)]
    homes = {c.tag: servers[(i // 2) % 2] for i, c in enumerate(clients)}
    for client in clients:
        await client.connect(homes[client.tag].ws)

    probes: list[tuple[str, str, int]] = []
    probing = asyncio.Event()

    async def probe() -> None:
        async with httpx.AsyncClient(timeout=3) as http:
            while not probing.is_set():
                for server in servers:
                    try:
                        status = (await http.get(server.http + "/livez")).status_code
                    except httpx.HTTPError:
                        status = -1
                    probes.append((server.name, "/livez", status))
                await asyncio.sleep(0.2)

    stop = asyncio.Event()
    tasks = [asyncio.ensure_future(c.post_until(stop)) for c in clients]
    prober = asyncio.ensure_future(probe())
    figures: list[str] = []

    def acked() -> int:
        return sum(len(c.acked) for c in clients)

    async def follow(old: int, how: str) -> int:
        """Wait for the Sentinels to name a new master, for both instances to report it ready,
        and for both processes to be subscribed to every room there. Returns the new port."""
        t0 = time.monotonic()
        before = acked()
        await asyncio.to_thread(wait_until, lambda: sentinels.master_port() not in (0, old), 30,
                                0.05, "the Sentinels to promote the replica")
        promoted = time.monotonic() - t0
        new = sentinels.master_port()
        want = f"ok (sentinel master 'hubbub' at 127.0.0.1:{new})"
        await asyncio.to_thread(wait_until, lambda: all(readyz(s) == (200, want) for s in servers), 30,
                                0.1, "both instances ready on the new master")
        ready = time.monotonic() - t0
        r = sentinels.node(new).client()
        channels = [group_channel(room) for room in rooms]
        await asyncio.to_thread(wait_until, lambda: set(dict(r.pubsub_numsub(*channels)).values()) == {2},
                                30, 0.1, "both processes subscribed to every room on the new master")
        subscribed = time.monotonic() - t0
        await asyncio.sleep(3.0)  # load on the new master
        figures.append(f"{how}: {before} acked before; new master named after {promoted:.1f}s, both "
                       f"instances ready on it after {ready:.1f}s, resubscribed after "
                       f"{subscribed:.1f}s; {acked() - before} acked since")
        return new

    await asyncio.sleep(3.0)
    sentinels.sentinel().execute_command("SENTINEL", "FAILOVER", "hubbub")
    second = await follow(first, "SENTINEL FAILOVER")
    # The demoted master is now a replica of the new one; wait until it is in sync, then kill -9
    # the new master.
    await asyncio.to_thread(
        wait_until, lambda: sentinels.node(second).client().info("replication")["connected_slaves"] >= 1,
        30, 0.1, "the old master to replicate from the new one")
    sentinels.node(second).kill9()
    await follow(second, "kill -9 of the master")
    stop.set()
    await asyncio.gather(*tasks)
    probing.set()
    await prober

    for client in clients:
        assert client.pending is None and client.sock.closed_code is None, client.tag
    # The long-lived direct client writes to the current master (a replica would refuse a write);
    # at most its first command after a failover meets a closed connection.
    for attempt in range(3):
        try:
            direct.lpush("hubbub:test:wake", 2)
            break
        except Exception:
            assert attempt < 2
            await asyncio.sleep(0.5)
    now = sentinels.node(sentinels.master_port()).client()
    assert now.lrange("hubbub:test:wake", 0, 0) == ["2"]
    total = 0
    for room in rooms:
        members = [c for c in clients if c.room == room]
        stored = await history(servers[0].http, room)
        for client in members:
            await client.sock.wait_ids(len(stored), timeout=15)
        await asyncio.sleep(0.3)  # room for a late duplicate
        total += check_room(stored, members)
    bad = [p for p in probes if p[2] != 200]
    assert not bad, f"/livez failed during the failovers: {bad[:5]}"
    print("sentinel: " + " | ".join(figures) + f" | {total} messages stored, gapless, each "
          f"received once by every socket of its room; {len(probes)} /livez probes all 200")
    for client in clients:
        await client.sock.close()
