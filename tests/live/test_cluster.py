"""Two instances sharing Redis and PostgreSQL: delivery, ordering, idempotency, presence."""

from __future__ import annotations

import asyncio

import pytest

from tests.live.conftest import Cluster
from tests.live.wsclient import Socket

pytestmark = [pytest.mark.live]


async def test_message_posted_on_one_instance_reaches_sockets_on_both(cluster: Cluster) -> None:
    on_a = await Socket.open(cluster.a.ws, "lobby")
    on_b = await Socket.open(cluster.b.ws, "lobby")
    ack = await on_a.post("hello from a", "c-1")
    assert ack["id"] == 1 and ack["message"] == "hello from a"
    got = await on_b.wait_for(lambda e: e.get("type") == "message")
    assert got == ack
    await on_a.close()
    await on_b.close()


async def test_concurrent_posts_on_both_instances_get_gapless_ids_in_order_everywhere(
    cluster: Cluster,
) -> None:
    readers = [await Socket.open(s.ws, "race") for s in cluster.servers]
    writers = [await Socket.open(s.ws, "race") for s in cluster.servers for _ in range(2)]

    async def write(i: int, sock: Socket) -> None:
        for n in range(15):
            await sock.post(f"w{i} n{n}", f"w{i}-{n}")

    await asyncio.gather(*(write(i, w) for i, w in enumerate(writers)))
    total = 15 * len(writers)
    for reader in readers:
        assert await reader.wait_ids(total) == list(range(1, total + 1))
    for sock in readers + writers:
        await sock.close()


async def test_a_message_posted_over_http_is_stored_and_delivered_live_on_every_instance(
    cluster: Cluster,
) -> None:
    token = cluster.a.make_user("poster")
    socks = [await Socket.open(s.ws, "http-room") for s in cluster.servers]
    answer = cluster.b.post("/api/rooms/http-room/messages", {"message": "over http", "client_id": "h1"},
                            token=token)
    assert answer.status_code == 201, answer.text
    event = answer.json()
    assert event["id"] == 1 and event["user"] == "poster"
    for sock in socks:
        assert await sock.wait_for(lambda e: e.get("type") == "message") == event
    again = cluster.a.post("/api/rooms/http-room/messages", {"message": "over http", "client_id": "h1"},
                           token=token)
    assert again.status_code == 200 and again.json() == event
    history = cluster.a.get("/api/rooms/http-room/messages?after=0").json()["messages"]
    assert history == [event]
    for sock in socks:
        await sock.close()


async def test_both_instances_are_ready_with_redis_and_postgres(cluster: Cluster) -> None:
    for server in cluster.servers:
        ready = server.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"] == {"database": "ok", "channel_layer": "ok"}
