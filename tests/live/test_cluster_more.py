"""Two instances sharing Redis and PostgreSQL (CONTRACT.md §4): catch-up at the seam, client_id
idempotency, presence, typing, private rooms and the Origin check, each seen across instances."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from websockets.exceptions import InvalidStatus

from tests.live.conftest import Cluster
from tests.live.servers import history
from tests.live.wsclient import Socket

pytestmark = [pytest.mark.live]

POST_GAP = 0.11  # between one poster's posts: under the contract's 10 messages/s per connection


async def _poster(sock: Socket, tag: str, stop: asyncio.Event, acked: list[int]) -> None:
    """Post until ``stop``, one message in flight; a ``rate_limited`` answer is retried."""
    n = 0
    while not stop.is_set():
        answer = await sock.post_or_error(f"{tag} #{n}", f"{tag}-{n}")
        if answer["type"] == "error":
            assert answer["code"] == "rate_limited", answer
            await asyncio.sleep(float(answer["retry_after"]))
            continue
        acked.append(answer["id"])
        n += 1
        await asyncio.sleep(POST_GAP)


async def _close_all(socks: list[Socket]) -> None:
    await asyncio.gather(*(s.close() for s in socks))


async def test_catch_up_with_after_has_no_gap_or_duplicate_at_the_seam(cluster: Cluster) -> None:
    room = "seam"
    posters = [await Socket.open(s.ws, room) for s in (cluster.a, cluster.b) for _ in range(3)]
    stop = asyncio.Event()
    acked: list[int] = []
    tasks = [asyncio.ensure_future(_poster(p, f"p{i}", stop, acked)) for i, p in enumerate(posters)]
    readers: list[tuple[int, Socket]] = []
    try:
        await posters[0].wait_until(lambda: len(acked) >= 15, 20, what="15 acknowledgements")
        # Readers join while six clients keep posting through both instances, each asking for a
        # different K: from the start, from the middle, at (and just before) the newest id.
        for n in range(10):
            newest = max(acked)
            after = [0, newest // 2, newest, newest - 1, newest - 3][n % 5]
            server = cluster.b if n % 2 == 0 else cluster.a
            readers.append((after, await Socket.open(server.ws, room, after=after)))
            await asyncio.sleep(0.13)
        await asyncio.sleep(0.5)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    last = max(acked)
    assert sorted(acked) == list(range(1, last + 1)), "acknowledged ids are not 1..N without gaps"
    for _, reader in readers:
        await reader.wait_ids(last)
    await asyncio.sleep(0.5)  # room for a late duplicate to show up
    for after, reader in readers:
        assert reader.ids() == list(range(after + 1, last + 1)), f"reader with after={after}"
        assert reader.closed_code is None
    for poster in posters:
        assert poster.ids() == list(range(1, last + 1))
    await _close_all([r for _, r in readers] + posters)


async def test_client_id_repeat_through_the_other_instance_stores_nothing_new(cluster: Cluster) -> None:
    room = "idem"
    alice = cluster.a.make_user("alice")
    bob = cluster.a.make_user("bob")
    watchers = [await Socket.open(s.ws, room) for s in cluster.servers]
    on_a = await Socket.open(cluster.a.ws, room, token=alice)
    first = await on_a.post("only once", "same-cid")
    assert first["id"] == 1 and first["user"] == "alice" and first["client_id"] == "same-cid"

    on_b = await Socket.open(cluster.b.ws, room, token=alice)
    again = await on_b.post("a different text, same client_id", "same-cid")
    assert again == first, "a repeat must answer with the stored event"
    over_http = cluster.b.post(f"/api/rooms/{room}/messages",
                               {"message": "and again", "client_id": "same-cid"}, token=alice)
    assert over_http.status_code == 200, over_http.text
    assert over_http.json() == first

    # The same client_id from another user is that user's own, new message.
    bob_on_b = await Socket.open(cluster.b.ws, room, token=bob)
    bobs = await bob_on_b.post("bob's", "same-cid")
    assert bobs["id"] == 2 and bobs["user"] == "bob"

    stored = await history(cluster.b.http, room, alice)
    assert [(m["id"], m["user"], m["message"]) for m in stored] == [
        (1, "alice", "only once"), (2, "bob", "bob's")]
    assert stored[0] == first
    for sock in [*watchers, on_a]:
        await sock.wait_ids(2)
    await asyncio.sleep(0.5)
    for sock in [*watchers, on_a]:
        assert sock.ids() == [1, 2]
    await _close_all([*watchers, on_a, on_b, bob_on_b])


async def test_presence_lists_users_of_both_instances_once_each(cluster: Cluster) -> None:
    room = "hall"
    alice = cluster.a.make_user("alice")
    bob = cluster.a.make_user("bob")
    a1 = await Socket.open(cluster.a.ws, room, token=alice, rich=True)
    a2 = await Socket.open(cluster.a.ws, room, token=alice, rich=True)
    a3 = await Socket.open(cluster.b.ws, room, token=alice, rich=True)
    b1 = await Socket.open(cluster.b.ws, room, token=bob, rich=True)
    b2 = await Socket.open(cluster.a.ws, room, token=bob, rich=True)
    everyone = [a1, a2, a3, b1, b2]
    for sock in everyone:
        await sock.wait_presence(["alice", "bob"])
    for sock in everyone:
        for event in sock.received:
            if event["type"] == "presence":
                assert len(event["users"]) == len(set(event["users"])), event

    # One of bob's two sockets goes: bob is still there.
    await b2.close()
    await asyncio.sleep(1.0)
    for sock in (a1, a2, a3, b1):
        assert sorted(sock.latest("presence")["users"]) == ["alice", "bob"]  # type: ignore[index]

    # Bob leaves on B (his last socket): he disappears on A as well.
    await b1.close()
    for sock in (a1, a2, a3):
        await sock.wait_presence(["alice"])
    # Alice leaves A but stays on B.
    await a1.close()
    await a2.close()
    await asyncio.sleep(1.0)
    await a3.wait_presence(["alice"], timeout=1)
    await a3.close()


async def test_a_killed_instances_users_leave_presence_within_60_seconds(cluster: Cluster) -> None:
    room = "crash"
    alice = cluster.a.make_user("alice")
    bob = cluster.a.make_user("bob")
    on_a = await Socket.open(cluster.a.ws, room, token=alice, rich=True)
    on_b = await Socket.open(cluster.b.ws, room, token=bob, rich=True)
    for sock in (on_a, on_b):
        await sock.wait_presence(["alice", "bob"])
    started = time.monotonic()
    cluster.a.kill9()
    assert await on_a.wait_closed(10) == 1006
    await on_b.wait_presence(["bob"], timeout=60)
    assert time.monotonic() - started < 60
    assert on_b.closed_code is None
    await on_b.close()


async def test_typing_is_relayed_across_instances_to_rich_sockets_only(cluster: Cluster) -> None:
    room = "typing"
    alice = cluster.a.make_user("alice")
    bob = cluster.a.make_user("bob")
    on_a = await Socket.open(cluster.a.ws, room, token=alice, rich=True)
    on_b = await Socket.open(cluster.b.ws, room, token=bob, rich=True)
    await on_a.wait_presence(["alice", "bob"], timeout=10)
    plain_b = await Socket.open(cluster.b.ws, room)
    await on_a.send({"type": "typing"})
    got = await on_b.wait_for(lambda e: e.get("type") == "typing", 5, what="alice typing")
    assert got == {"type": "typing", "user": "alice"}
    await on_b.send({"type": "typing"})
    got = await on_a.wait_for(lambda e: e.get("type") == "typing", 5, what="bob typing")
    assert got == {"type": "typing", "user": "bob"}
    await asyncio.sleep(0.5)
    assert [e for e in on_a.received if e["type"] == "typing"] == [{"type": "typing", "user": "bob"}]
    assert [e for e in on_b.received if e["type"] == "typing"] == [{"type": "typing", "user": "alice"}]
    assert {e["type"] for e in plain_b.received} <= {"message"}, plain_b.received
    await _close_all([on_a, on_b, plain_b])


async def _refusal(base: str, room: str, token: str | None, rich: bool) -> Any:
    """How a connection is refused: 'http 403' at the handshake, or the close code (after which
    no event may have been sent)."""
    try:
        sock = await Socket.open(base, room, token=token, rich=rich)
    except InvalidStatus as exc:
        return f"http {exc.response.status_code}"
    code = await sock.wait_closed(10)
    assert sock.received == [], f"events before the refusal: {sock.received}"
    return code


async def test_private_room_refuses_non_members_and_admits_members_on_both_instances(
    cluster: Cluster,
) -> None:
    alice = cluster.a.make_user("alice")
    bob = cluster.a.make_user("bob")
    carol = cluster.a.make_user("carol")
    made = cluster.a.post("/api/rooms", {"name": "secret", "private": True}, token=alice)
    assert made.status_code == 201, made.text
    admitted = cluster.b.post("/api/rooms/secret/members", {"username": "bob"}, token=alice)
    assert admitted.status_code in (200, 201), admitted.text

    for server in cluster.servers:
        for rich in (False, True):
            assert await _refusal(server.ws, "secret", carol, rich) in (4403, "http 403")
            assert await _refusal(server.ws, "secret", None, rich) in (4401, 4403, "http 403")
    assert cluster.b.get("/api/rooms/secret/messages", token=carol).status_code in (403, 404)

    owner_on_a = await Socket.open(cluster.a.ws, "secret", token=alice, rich=True)
    member_on_b = await Socket.open(cluster.b.ws, "secret", token=bob, rich=True)
    await owner_on_a.wait_presence(["alice", "bob"])
    ack = await member_on_b.post("members only", "m-1")
    assert ack["id"] == 1 and ack["user"] == "bob"
    assert await owner_on_a.wait_ids(1) == [1]
    assert owner_on_a.closed_code is None and member_on_b.closed_code is None
    await _close_all([owner_on_a, member_on_b])


@pytest.mark.parametrize("origin", [
    "http://evil.example",
    "https://evil-localhost.com",
    "http://localhost.evil.example",
    "http://127.0.0.1.nip.io",
    "null",
])
async def test_foreign_origin_is_refused_at_the_handshake(cluster: Cluster, origin: str) -> None:
    for server in cluster.servers:
        with pytest.raises(InvalidStatus) as info:
            await Socket.open(server.ws, "lobby", origin=origin)
        assert info.value.response.status_code == 403


async def test_allowed_origin_on_any_port_and_no_origin_are_admitted(cluster: Cluster) -> None:
    socks: list[Socket] = []
    for server in cluster.servers:
        socks.append(await Socket.open(server.ws, "lobby", origin="http://localhost:5173"))
        socks.append(await Socket.open(server.ws, "lobby", origin="https://127.0.0.1"))
        socks.append(await Socket.open(server.ws, "lobby"))  # a program: no Origin at all
    ack = await socks[-1].post("hello", "o-1")
    for sock in socks:
        assert await sock.wait_ids(ack["id"]) == [ack["id"]]
    await _close_all(socks)
