"""A real nginx, configured by deploy/nginx/hubbub.conf itself, in front of three `hubbub serve`
instances sharing Redis and PostgreSQL: it balances HTTP and WebSockets, and when an instance is
killed with SIGKILL under load its clients reconnect through nginx with ?after=<last id> and catch
up with no gap and no duplicate (docs/deployment.md)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.live.scaleout_kit import NGINX_SITE, Nginx, Poster, check_room, metric
from tests.live.servers import HubbubServer, history, postgres_database, redis_for_tests

pytestmark = [pytest.mark.live]


def test_the_deployment_config_passes_nginx_t() -> None:
    nginx = Nginx(["127.0.0.1:8001", "127.0.0.1:8002"])
    try:
        checked = nginx.check()
        assert checked.returncode == 0, checked.stderr
        assert "syntax is ok" in checked.stderr and "test is successful" in checked.stderr
    finally:
        nginx.stop()
    site = NGINX_SITE.read_text()
    for directive in ("proxy_set_header Upgrade $http_upgrade;",
                      "proxy_set_header Connection $connection_upgrade;", "proxy_http_version 1.1;"):
        assert directive in site


@dataclass
class Front:
    nginx: Nginx
    servers: list[HubbubServer]


@pytest.fixture
def front(data_dir: Path) -> Iterator[Front]:
    with redis_for_tests(data_dir) as (redis_url, _redis), postgres_database() as database_url:
        env = {"REDIS_URL": redis_url, "DATABASE_URL": database_url}
        servers = [HubbubServer(data_dir / n, env, name=n) for n in ("a", "b", "c")]
        for server in servers:
            server.start(wait=False)
        nginx = Nginx([f"127.0.0.1:{s.port}" for s in servers])
        try:
            for server in servers:
                server.wait_ready()
            nginx.start()
            yield Front(nginx, servers)
        finally:
            nginx.stop()
            for server in servers:
                server.stop()


async def http_poster(base: str, room: str, token: str, stop: asyncio.Event,
                      acked: dict[str, int], answers: dict[int, int]) -> None:
    """Posts over HTTP through nginx; a 502 (the request died with its instance) is retried with
    the same client_id, as the contract asks."""
    n = 0
    async with httpx.AsyncClient(base_url=base, timeout=10,
                                 headers={"Authorization": f"Bearer {token}"}) as http:
        while not stop.is_set():
            cid = f"http-{n}"
            while True:
                resp = await http.post(f"/api/rooms/{room}/messages",
                                       json={"message": f"text of {cid}", "client_id": cid})
                answers[resp.status_code] = answers.get(resp.status_code, 0) + 1
                if resp.status_code in (200, 201):
                    acked[cid] = resp.json()["id"]
                    break
                assert resp.status_code in (502, 503, 504, 429), resp.text
                await asyncio.sleep(0.2)
            n += 1
            await asyncio.sleep(0.1)


def http_posts(servers: list[HubbubServer]) -> list[float]:
    return [metric(s.get("/metrics").text, 'hubbub_messages_posted_total{via="http"}') for s in servers]


async def test_instance_killed_behind_nginx_clients_reconnect_through_it_and_catch_up(
    front: Front,
) -> None:
    nginx, servers = front.nginx, front.servers
    token = servers[0].make_user("poster")
    rooms = [f"lb{i}" for i in range(4)]
    clients = [Poster(f"{room}-{j}", room, gap=0.25) for room in rooms for j in range(5)]
    for client in clients:
        await client.connect(nginx.ws)

    # nginx spread the sockets over every instance (least_conn).
    per_instance = [metric(s.get("/metrics").text, "hubbub_ws_connections") for s in servers]
    print(f"sockets per instance through nginx: {per_instance}")
    assert sum(per_instance) == len(clients)
    assert all(count >= 3 for count in per_instance), per_instance
    async with httpx.AsyncClient(base_url=nginx.http, timeout=5) as http:
        assert (await http.get("/readyz")).status_code == 200
        assert (await http.get("/metrics")).status_code == 404  # not for the public

    stop = asyncio.Event()
    http_acked: dict[str, int] = {}
    answers: dict[int, int] = {}
    tasks = {c.tag: asyncio.ensure_future(c.post_until(stop)) for c in clients}
    http_task = asyncio.ensure_future(http_poster(nginx.http, rooms[0], token, stop, http_acked, answers))
    await asyncio.sleep(4.0)
    # least_conn sends the HTTP posts to the instance with the fewest open sockets: kill that one,
    # so that HTTP must move to the others too.
    http_per_instance = http_posts(servers)
    assert sum(http_per_instance) > 0, http_per_instance
    victim = servers[http_per_instance.index(max(http_per_instance))]
    survivors = [s for s in servers if s is not victim]
    before = sum(len(c.acked) for c in clients) + len(http_acked)
    victim.kill9()
    killed_at = time.monotonic()

    # The victim's clients see their socket close, reconnect through nginx after their last id,
    # re-send what was unanswered and go on posting.
    reconnected = 0
    recovered = 0.0
    while any(t.done() for t in tasks.values()) or time.monotonic() < killed_at + 3:
        for client in clients:
            task = tasks[client.tag]
            if task.done():
                task.result()
                await client.reconnect(nginx.ws)
                reconnected += 1
                recovered = time.monotonic() - killed_at
                tasks[client.tag] = asyncio.ensure_future(client.post_until(stop))
        await asyncio.sleep(0.05)
    await asyncio.sleep(2.0)
    stop.set()
    await asyncio.gather(*tasks.values(), http_task)
    after = sum(len(c.acked) for c in clients) + len(http_acked) - before
    assert reconnected >= 3, "no client was on the killed instance"
    for client in clients:
        assert client.pending is None, f"{client.tag}: {client.pending} never answered"
    http_after = http_posts(survivors)
    assert sum(http_after) > 10, f"HTTP posts did not move to the surviving instances: {http_after}"

    total = 0
    for room in rooms:
        members = [c for c in clients if c.room == room]
        stored = await history(nginx.http, room, token)
        for client in members:
            await client.sock.wait_ids(len(stored), timeout=15)
        await asyncio.sleep(0.3)  # room for a late duplicate
        total += check_room(stored, members)
        if room == rooms[0]:
            by_cid = {m["client_id"]: m["id"] for m in stored}
            assert http_acked and all(by_cid.get(cid) == i for cid, i in http_acked.items())
    print(f"nginx scale-out: {len(clients)} sockets + 1 HTTP poster over 3 instances "
          f"(sockets {per_instance}, HTTP posts {http_per_instance} before the kill, {http_after} "
          f"on the survivors after); "
          f"{before} acknowledged before the kill, {after} after; {reconnected} sockets "
          f"reconnected, the last {recovered:.2f}s after the kill; {total} messages stored, "
          f"each received once by every socket of its room; HTTP answers {answers}")
    assert after > 50
    for client in clients:
        for sock in client.sessions:
            await sock.close()
    assert "[emerg]" not in nginx.error_log()
