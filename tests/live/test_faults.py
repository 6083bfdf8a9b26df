"""Faults with real processes (CONTRACT.md §4, §6), each injected while clients post continuously
through both instances of a two-instance cluster (private redis-server, fresh PostgreSQL
database):

* an instance killed with SIGKILL (and started again);
* Redis stopped for five seconds and started again;
* a ``hubbub worker`` killed with SIGKILL in the middle of a job;
* PostgreSQL's connections reset, then refused for three seconds (a fault proxy between Hubbub
  and PostgreSQL);
* latency, a stall and reset connections between Hubbub and Redis (a fault proxy).

After each, the checks of tests/live/faults_kit.py: every acknowledged message stored once under
its id, ids 1..N, every client (reconnected with ``?after=``) has received 1..N once each in
order, every job ``done`` once (one result, one outcome message) or ``failed`` with a reason, and
every surviving server answered ``/livez`` throughout. Each test prints a ``FAULT FIGURES`` line.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from tests.live import conversions_kit as kit
from tests.live.conftest import Cluster
from tests.live.conversions_kit import Farm, farm
from tests.live.faultproxy import FaultProxy
from tests.live.faults_kit import Figures, Load, probing
from tests.live.servers import HubbubServer, RedisServer, history, postgres_database, redis_for_tests
from tests.live.wsclient import Socket

pytestmark = [pytest.mark.live]


async def readyz(server: HubbubServer) -> int:
    async with httpx.AsyncClient(timeout=5) as http:
        try:
            return (await http.get(server.http + "/readyz")).status_code
        except httpx.HTTPError:
            return -1


async def wait_ready(servers: list[HubbubServer], within: float) -> None:
    deadline = time.monotonic() + within
    for server in servers:
        while await readyz(server) != 200:
            assert time.monotonic() < deadline, f"{server.name} not ready again within {within}s"
            await asyncio.sleep(0.2)


async def crossing(senders: list[Socket], receivers: list[Socket], tag: str, within: float) -> float:
    """Post on each sender; every receiver must get it within ``within`` s. The slowest time."""
    slowest = 0.0
    for n, sender in enumerate(senders):
        started = time.monotonic()
        ack = await sender.post(f"probe {tag} {n}", f"{tag}-{n}")
        for receiver in receivers:
            await receiver.wait_ids(ack["id"], timeout=within)
        slowest = max(slowest, time.monotonic() - started)
    return slowest


# -- 1. an instance killed -------------------------------------------------------------------------


async def test_kill_9_an_instance_under_load_loses_and_duplicates_nothing(cluster: Cluster) -> None:
    victim, survivor = cluster.a, cluster.b
    token = victim.make_user("poster")  # one user; client_ids differ per poster
    figures = Figures("kill -9 an instance")
    load = Load(cluster.servers, "kill9", token, posters_per_server=3, readers_per_server=1)
    with probing(cluster.servers) as probe:
        await load.start()
        try:
            await asyncio.sleep(2.0)
            probe.unwatch(victim)
            load.drop(victim)
            victim.kill9()
            figures.faults.append("SIGKILL instance a")
            # The victim's clients notice, reconnect to the survivor from their last id, send
            # again what was unanswered and go on posting.
            await asyncio.sleep(2.5)
            load.alive()
            victim.start()  # the same port: back in the cluster
            load.servers.append(victim)
            probe.watch(victim)
            await asyncio.sleep(1.5)
            await load.finish()
            stored = await load.verify(survivor, figures)
            # The restarted instance serves the same history.
            assert await history(victim.http, load.room, token) == stored
        finally:
            await load.close()
        probe.check()
        figures.livez_probes = probe.probes
    moved = [c for c in load.clients if c.home is victim]
    assert all(c.reconnects >= 1 for c in moved), [(c.tag, c.reconnects) for c in moved]
    assert "Traceback" not in survivor.log_tail(400), survivor.log_tail()
    figures.print()


# -- 2. Redis stopped and started -----------------------------------------------------------------


async def test_redis_outage_under_load_delays_but_loses_nothing(cluster: Cluster) -> None:
    if cluster.redis is None:
        pytest.skip("no private redis-server to stop (REDIS_URL from the environment is shared)")
    token = cluster.a.make_user("poster")
    figures = Figures("Redis stopped for 5 s")
    load = Load(cluster.servers, "outage", token, posters_per_server=2, readers_per_server=2)
    readyz_during: dict[str, list[int]] = {s.name: [] for s in cluster.servers}
    with probing(cluster.servers) as probe:
        await load.start()
        try:
            await asyncio.sleep(1.5)
            cluster.redis.stop()
            figures.faults.append("redis-server stopped 5 s")
            down_at = time.monotonic()
            await asyncio.sleep(1.0)
            for server in cluster.servers:
                readyz_during[server.name].append(await readyz(server))
            # Messages keep crossing instances while Redis is down: each instance reads what it
            # missed from the database (docs/protocol.md: about 2 s after it was stored).
            upto = max(load.acked().values())
            marked = time.monotonic()
            await load.caught_up(upto, within=3.5, what="while Redis is down")
            figures.extra["delivered across instances during the outage within (s)"] = round(
                time.monotonic() - marked, 2)
            while time.monotonic() - down_at < 5.0:
                for server in cluster.servers:
                    readyz_during[server.name].append(await readyz(server))
                await asyncio.sleep(0.3)
            load.alive()
            cluster.redis.start()  # the same port
            up_at = time.monotonic()
            upto = max(load.acked().values())
            # Contract: what was posted while Redis was down reaches open sockets within 5 s.
            await load.caught_up(upto, within=5.0, what="within 5 s of Redis coming back")
            figures.extra["caught up after Redis returned (s)"] = round(time.monotonic() - up_at, 2)
            await asyncio.sleep(1.0)
            await load.finish()
            await load.verify(cluster.a, figures)
            # Live delivery crosses instances again through Redis, not only through the database
            # watcher (1-2 s): the subscriptions came back by themselves.
            await asyncio.sleep(2.0)
            a_side = [c.sock for c in load.clients if c.home is cluster.a]
            b_side = [c.sock for c in load.clients if c.home is cluster.b]
            slowest = max(await crossing(a_side[:1], b_side, "redis-ab", 5),
                          await crossing(b_side[:1], a_side, "redis-ba", 5))
            assert slowest < 0.9, f"live delivery through Redis did not come back ({slowest:.2f}s)"
            await wait_ready(cluster.servers, 10)
        finally:
            await load.close()
        probe.check()
        figures.livez_probes = probe.probes
    for server in cluster.servers:
        assert 503 in readyz_during[server.name], f"{server.name} /readyz during the outage: {readyz_during}"
        assert "Traceback" not in server.log_tail(400), server.log_tail()
    figures.print()


# -- 3. a worker killed mid-job -------------------------------------------------------------------


@pytest.fixture
def farm_no_workers(data_dir: Path) -> Iterator[Farm]:
    with farm(data_dir, workers=0) as made:
        yield made


@pytest.mark.timeout(240)
async def test_kill_9_a_worker_mid_job_under_load_each_job_ends_once(farm_no_workers: Farm) -> None:
    f = farm_no_workers
    first, second = f.add_worker(wait=False), f.add_worker(wait=False)
    first.wait_ready()
    second.wait_ready()
    token = f.a.make_user("owner")
    room = "jobs-under-load"
    figures = Figures("kill -9 a worker mid-job")
    load = Load([f.a, f.b], room, token, posters_per_server=2, readers_per_server=1, gap=0.3)
    with probing([f.a, f.b]) as probe:
        await load.start()
        try:
            jobs: list[str] = []
            for n in range(3):
                answer = await kit.upload(f.a if n % 2 else f.b, kit.heavy_pdf(80), f"doc{n}.pdf", "png",
                                          token=token, room=room)
                assert answer.status_code == 202, answer.text
                jobs.append(answer.json()["id"])
            watchers = {job: await kit.job_socket(f.b, job, token=token) for job in jobs}
            # Kill the worker holding a job that is well under way.
            victim_job = None
            deadline = time.monotonic() + 60
            while victim_job is None:
                assert time.monotonic() < deadline, f.logs()
                for job in jobs:
                    row = await asyncio.to_thread(f.row, job)
                    if row["state"] == "running" and row["progress"] > 10 and f.holder(job) is not None:
                        victim_job = job
                        break
                await asyncio.sleep(0.2)
            victim = f.holder(victim_job)
            assert victim is not None
            victim.kill9()
            killed = time.monotonic()
            figures.faults.append(f"SIGKILL {victim.name} holding job {victim_job[:8]}")
            finals = {}
            for job, sock in watchers.items():
                finals[job] = await kit.follow(sock, timeout=150)  # progress never went down
            figures.extra["killed job final after (s)"] = round(time.monotonic() - killed, 1)
            load.alive()
            await load.finish()
            stored = await load.verify(f.a, figures)
        finally:
            await load.close()
        probe.check()
        figures.livez_probes = probe.probes

    outcomes = {m["client_id"]: m for m in stored if str(m["client_id"]).startswith("job-")}
    done = failed = 0
    for job in jobs:
        row = await asyncio.to_thread(f.row, job)
        final = finals[job]
        assert final["state"] == row["state"] and row["state"] in ("done", "failed"), (final, row, f.logs())
        assert [m["client_id"] for m in stored].count(f"job-{job}") == 1, f"outcome messages of {job}"
        results = [name for name in f.results(job) if not name.startswith(".")]
        if row["state"] == "done":
            done += 1
            assert results == [f"{job}.zip"], f.results(job)
            assert outcomes[f"job-{job}"]["message"].startswith("converted "), outcomes[f"job-{job}"]
        else:
            failed += 1
            assert row["error"], f"{job} failed without a reason: {row}"
            assert results == [], f.results(job)
            assert outcomes[f"job-{job}"]["message"].startswith("could not convert"), outcomes[f"job-{job}"]
        await watchers[job].close()
    assert (await asyncio.to_thread(f.row, victim_job))["attempts"] == 2
    figures.extra["jobs done"] = done
    figures.extra["jobs failed with a reason"] = failed
    figures.print()


# -- 4 and 5. faults between Hubbub and PostgreSQL or Redis, through fault proxies ----------------


@dataclass
class Proxied:
    """Two instances whose DATABASE_URL and REDIS_URL point at fault proxies."""

    a: HubbubServer
    b: HubbubServer
    pg: FaultProxy
    redis: FaultProxy
    redis_server: RedisServer | None

    @property
    def servers(self) -> list[HubbubServer]:
        return [self.a, self.b]


def via(url: str, proxy: FaultProxy) -> str:
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = (userinfo + "@" if userinfo else "") + f"127.0.0.1:{proxy.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


@pytest.fixture
def proxied(data_dir: Path) -> Iterator[Proxied]:
    with redis_for_tests(data_dir) as (redis_url, redis), postgres_database() as database_url:
        pg_at, redis_at = urlsplit(database_url), urlsplit(redis_url)
        with FaultProxy(pg_at.hostname or "127.0.0.1", pg_at.port or 5432) as pg, \
                FaultProxy(redis_at.hostname or "127.0.0.1", redis_at.port or 6379) as rp:
            env = {"REDIS_URL": via(redis_url, rp), "DATABASE_URL": via(database_url, pg)}
            a = HubbubServer(data_dir / "a", env, name="a")
            b = HubbubServer(data_dir / "b", env, name="b")
            a.start(wait=False)
            b.start(wait=False)
            try:
                a.wait_ready()
                b.wait_ready()
                yield Proxied(a, b, pg, rp, redis)
            finally:
                a.stop()
                b.stop()


async def test_postgres_connections_cut_and_refused_under_load(proxied: Proxied) -> None:
    p = proxied
    token = p.a.make_user("poster")
    figures = Figures("PostgreSQL cut and refused")
    load = Load(p.servers, "pgfault", token, posters_per_server=2, readers_per_server=1)
    readyz_refused: list[int] = []
    with probing(p.servers) as probe:
        await load.start()
        try:
            await asyncio.sleep(2.0)
            reset = p.pg.cut()
            assert reset > 0, "no PostgreSQL connection went through the proxy"
            figures.faults.append(f"reset {reset} PostgreSQL connections")
            await asyncio.sleep(1.5)
            load.alive()
            with p.pg.refusing():
                figures.faults.append("PostgreSQL refused connections for 3 s (after a reset)")
                figures.extra["connections reset at refusal"] = p.pg.cut()
                refused_at = time.monotonic()
                while time.monotonic() - refused_at < 3.0:
                    readyz_refused += [await readyz(s) for s in p.servers]
                    await asyncio.sleep(0.3)
            load.alive()
            await asyncio.sleep(1.5)
            # A storm of resets: some land in the middle of a transaction or of its COMMIT.
            storm = 0
            for _ in range(8):
                storm += p.pg.cut()
                await asyncio.sleep(0.25)
            figures.faults.append(f"8 resets 0.25 s apart ({storm} connections)")
            load.alive()
            # A stall: queries hang (no answer, no error) for 2 s, then go through.
            p.pg.stall()
            figures.faults.append("PostgreSQL stalled 2 s")
            await asyncio.sleep(2.0)
            p.pg.resume()
            load.alive()
            back_at = time.monotonic()
            await asyncio.sleep(2.0)
            await load.finish()
            await load.verify(p.a, figures)
            await wait_ready(p.servers, max(1.0, back_at + 10 - time.monotonic()))
        finally:
            await load.close()
        probe.check()
        figures.livez_probes = probe.probes
    errors = sum(c.server_errors for c in load.clients)
    assert errors > 0, "no post met the outage: the fault was not felt"
    assert 503 in readyz_refused, f"/readyz while PostgreSQL refused: {readyz_refused}"
    for server in p.servers:  # the failures were logged (with tracebacks), the secrets were not
        log = server.log_path.read_text(errors="replace")
        assert "OperationalError" in log, server.log_tail()
        assert token not in log and token[-16:] not in log, f"{server.name} logged the token"
    figures.print()


async def test_redis_latency_stall_and_cut_through_a_proxy_under_load(proxied: Proxied) -> None:
    p = proxied
    token = p.a.make_user("poster")
    figures = Figures("Redis latency, stall, cut")
    load = Load(p.servers, "redisfault", token, posters_per_server=2, readers_per_server=1)
    with probing(p.servers) as probe:
        await load.start()
        try:
            await asyncio.sleep(1.5)
            p.redis.latency(0.3)
            figures.faults.append("300 ms Redis latency for 2 s")
            await asyncio.sleep(2.0)
            p.redis.latency(0)
            load.alive()
            p.redis.stall()
            figures.faults.append("Redis stalled 3 s")
            await asyncio.sleep(3.0)
            p.redis.resume()
            resumed = time.monotonic()
            upto = max(load.acked().values())
            await load.caught_up(upto, within=5.0, what="within 5 s of the stall ending")
            figures.extra["caught up after the stall (s)"] = round(time.monotonic() - resumed, 2)
            await asyncio.sleep(1.0)
            reset = p.redis.cut()
            assert reset > 0, "no Redis connection went through the proxy"
            figures.faults.append(f"reset {reset} Redis connections")
            cut_at = time.monotonic()
            await asyncio.sleep(0.5)
            upto = max(load.acked().values())
            await load.caught_up(upto, within=5.0, what="within 5 s of the reset")
            figures.extra["caught up after the reset (s)"] = round(time.monotonic() - cut_at, 2)
            await asyncio.sleep(1.5)
            await load.finish()
            await load.verify(p.a, figures)
            # Live delivery through Redis came back: well under the database watcher's pace.
            await asyncio.sleep(2.0)
            a_side = [c.sock for c in load.clients if c.home is p.a]
            b_side = [c.sock for c in load.clients if c.home is p.b]
            slowest = max(await crossing(a_side[:1], b_side, "back-ab", 5),
                          await crossing(b_side[:1], a_side, "back-ba", 5))
            assert slowest < 0.9, f"live delivery through Redis did not come back ({slowest:.2f}s)"
        finally:
            await load.close()
        probe.check()
        figures.livez_probes = probe.probes
    figures.print()
