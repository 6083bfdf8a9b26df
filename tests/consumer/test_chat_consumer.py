"""The chat consumer through Channels' WebsocketCommunicator (in-process, SQLite, in-memory layer)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.testing.websocket import WebsocketCommunicator
from django.contrib.auth.models import User
from django.utils import timezone

from hubbub.accounts import services as account_services
from hubbub.accounts.actors import actor_for_user
from hubbub.asgi import application
from hubbub.chat import services
from hubbub.chat.models import Message, Room
from hubbub.realtime import consumers, hub, sockets

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
async def fresh_hub() -> AsyncIterator[None]:
    """Each test runs on its own event loop: give it its own hub, and stop it afterwards."""
    hub.reset_hub()
    yield
    await hub.get_hub().stop()
    hub.reset_hub()


async def connect(room: str = "lobby", *, rich: bool = False, after: int | None = None,
                  headers: list[tuple[bytes, bytes]] | None = None) -> WebsocketCommunicator:
    path = f"/ws/chat/{room}/" + (f"?after={after}" if after is not None else "")
    comm = WebsocketCommunicator(application, path, headers=headers or [],
                                 subprotocols=["hubbub.v1"] if rich else None)
    connected, subprotocol = await comm.connect(timeout=5)
    assert connected, subprotocol
    if rich:
        assert subprotocol == "hubbub.v1"
    return comm


async def recv(comm: WebsocketCommunicator, timeout: float = 3) -> dict[str, Any]:
    return dict(json.loads(await comm.receive_from(timeout)))


async def recv_type(comm: WebsocketCommunicator, kind: str, timeout: float = 3) -> dict[str, Any]:
    """The next frame of type ``kind``, skipping others (presence in rich mode)."""
    while True:
        frame = await recv(comm, timeout)
        if frame["type"] == kind:
            return frame


async def closed_with(comm: WebsocketCommunicator) -> int:
    output = await comm.receive_output(3)
    if output["type"] == "websocket.accept":
        output = await comm.receive_output(3)
    assert output["type"] == "websocket.close", output
    return int(output.get("code", 1000))


def make_user(name: str) -> tuple[User, str]:
    user = account_services.user_create(username=name, password="correct-horse-1")
    return user, account_services.token_create(user=user)


def bearer(token: str) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", f"Bearer {token}".encode())]


# -- posting ------------------------------------------------------------------------------------


async def test_post_is_stored_then_acknowledged_with_its_message_event() -> None:
    comm = await connect()
    await comm.send_json_to({"message": "hello", "client_id": "c-1"})
    event = await recv(comm)
    assert event["type"] == "message"
    assert event["id"] == 1 and event["message"] == "hello" and event["client_id"] == "c-1"
    assert event["room"] == "lobby" and event["user"].startswith("guest-")
    assert event["ts"].endswith("Z")
    stored = await database_sync_to_async(lambda: list(Message.objects.values_list("seq", "body")))()
    assert stored == [(1, "hello")]
    await comm.disconnect()


async def test_every_socket_receives_the_room_in_id_order() -> None:
    a, b = await connect(), await connect()
    for n in range(5):
        await a.send_json_to({"message": f"m{n}"})
    got_a = [await recv(a) for _ in range(5)]
    got_b = [await recv(b) for _ in range(5)]
    assert [e["id"] for e in got_a] == [1, 2, 3, 4, 5]
    assert got_a == got_b
    await a.disconnect()
    await b.disconnect()


async def test_repeating_a_client_id_stores_nothing_and_returns_the_stored_event() -> None:
    comm = await connect()
    await comm.send_json_to({"message": "once", "client_id": "same"})
    first = await recv(comm)
    await comm.send_json_to({"message": "once", "client_id": "same"})
    again = await recv(comm)
    assert again == first
    assert await database_sync_to_async(Message.objects.count)() == 1
    await comm.disconnect()


async def test_catch_up_after_n_delivers_the_rest_then_live_without_gap_or_duplicate() -> None:
    writer = await connect("cu")
    for n in range(6):
        await writer.send_json_to({"message": f"m{n}"})
        await recv(writer)
    reader = await connect("cu", after=2)
    await writer.send_json_to({"message": "live"})
    ids = [(await recv(reader))["id"] for _ in range(5)]
    assert ids == [3, 4, 5, 6, 7]
    assert await reader.receive_nothing(0.3)
    await writer.disconnect()
    await reader.disconnect()


async def test_without_after_a_socket_gets_only_what_is_posted_after_it_joined() -> None:
    writer = await connect("late")
    await writer.send_json_to({"message": "before"})
    await recv(writer)
    reader = await connect("late")
    assert await reader.receive_nothing(0.3)
    await writer.send_json_to({"message": "after"})
    assert (await recv(reader))["id"] == 2
    await writer.disconnect()
    await reader.disconnect()


async def test_a_message_lost_on_the_way_is_filled_from_the_database() -> None:
    reader = await connect("gap")
    writer = await connect("gap")

    def store_without_publishing() -> None:
        room = Room.objects.get(name="gap")
        Room.objects.filter(pk=room.pk).update(last_seq=1)
        Message.objects.create(room=room, seq=1, author_key="g:x", author_name="ghost", body="lost",
                               created_at=timezone.now())

    await database_sync_to_async(store_without_publishing)()
    await writer.send_json_to({"message": "next"})
    assert [(await recv(reader))["message"] for _ in range(2)] == ["lost", "next"]
    await reader.disconnect()
    await writer.disconnect()


async def test_the_watcher_delivers_stored_messages_nobody_announced() -> None:
    reader = await connect("quiet")

    def store_without_publishing() -> None:
        room = Room.objects.get(name="quiet")
        Room.objects.filter(pk=room.pk).update(last_seq=1)
        Message.objects.create(room=room, seq=1, author_key="g:x", author_name="ghost",
                               body="silent", created_at=timezone.now())

    await database_sync_to_async(store_without_publishing)()
    event = await recv(reader, timeout=2 * hub.WATCH_INTERVAL + 2)
    assert event["message"] == "silent" and event["id"] == 1
    await reader.disconnect()


# -- modes --------------------------------------------------------------------------------------


async def test_rich_mode_gets_presence_pong_typing_and_history() -> None:
    rich = await connect("modes", rich=True)
    presence = await recv_type(rich, "presence")
    assert len(presence["users"]) == 1
    other = await connect("modes", rich=True)
    assert len((await recv_type(rich, "presence"))["users"]) == 2
    await other.send_json_to({"type": "typing"})
    typing = await recv_type(rich, "typing")
    assert typing["user"].startswith("guest-")
    await rich.send_json_to({"type": "ping"})
    assert (await recv_type(rich, "pong")) == {"type": "pong"}
    for n in range(4):
        await rich.send_json_to({"message": f"m{n}"})
        await recv_type(rich, "message")
    await rich.send_json_to({"type": "history", "before": 4, "limit": 2})
    history = await recv_type(rich, "history")
    assert [m["id"] for m in history["messages"]] == [2, 3]
    await rich.disconnect()
    await other.disconnect()


async def test_plain_mode_sends_only_message_and_error_events() -> None:
    plain = await connect("plainroom")
    rich = await connect("plainroom", rich=True)
    await rich.send_json_to({"type": "typing"})
    await plain.send_json_to({"type": "ping"})
    assert await plain.receive_nothing(0.5)
    await plain.send_json_to({"type": "history"})
    assert (await recv(plain))["code"] == "unknown_type"
    await rich.send_json_to({"message": "hi"})
    assert (await recv(plain))["type"] == "message"
    await plain.disconnect()
    await rich.disconnect()


# -- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("{nope", "bad_json"),
        ("[1, 2]", "bad_frame"),
        (json.dumps({"message": 5}), "bad_frame"),
        (json.dumps({"message": "x", "client_id": "c" * 65}), "bad_frame"),
        (json.dumps({"type": "dance"}), "unknown_type"),
        (json.dumps({"message": "   "}), "empty_message"),
        (json.dumps({"message": "x" * 4001}), "too_long"),
    ],
)
async def test_bad_frames_get_an_error_and_the_socket_stays_open(frame: str, code: str) -> None:
    comm = await connect()
    await comm.send_to(text_data=frame)
    error = await recv(comm)
    assert error["type"] == "error" and error["code"] == code and error["detail"]
    await comm.send_json_to({"message": "still here"})
    assert (await recv(comm))["message"] == "still here"
    assert await database_sync_to_async(Message.objects.count)() == 1
    await comm.disconnect()


async def test_binary_frames_are_bad_frames() -> None:
    comm = await connect()
    await comm.send_to(bytes_data=b"\x00\x01")
    assert (await recv(comm))["code"] == "bad_frame"
    await comm.disconnect()


async def test_a_failing_service_answers_server_error_and_keeps_the_socket(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    comm = await connect()

    def broken(**kwargs: Any) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(services, "message_store", broken)
    await comm.send_json_to({"message": "x"})
    assert (await recv(comm))["code"] == "server_error"
    monkeypatch.undo()
    await comm.send_json_to({"message": "y"})
    assert (await recv(comm))["message"] == "y"
    await comm.disconnect()


async def test_flooding_is_rate_limited_and_refused_frames_are_not_stored() -> None:
    comm = await connect()
    for n in range(30):
        await comm.send_json_to({"message": f"m{n}"})
    frames = [await recv(comm) for _ in range(30)]
    limited = [f for f in frames if f["type"] == "error"]
    stored = [f for f in frames if f["type"] == "message"]
    assert limited and all(f["code"] == "rate_limited" and f["retry_after"] > 0 for f in limited)
    assert len(stored) >= 20  # the burst
    assert await database_sync_to_async(Message.objects.count)() == len(stored)
    await comm.disconnect()


# -- who may connect -----------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/ws/chat/bad%20name/", "/ws/chat/" + "x" * 65 + "/",
                                  "/ws/chat/ok/?after=-1", "/ws/chat/ok/?after=abc"])
async def test_bad_room_names_and_bad_after_close_with_4400(path: str) -> None:
    comm = WebsocketCommunicator(application, path)
    await comm.connect(timeout=5)
    assert await closed_with(comm) == 4400


async def test_unknown_paths_are_refused_at_the_handshake() -> None:
    comm = WebsocketCommunicator(application, "/ws/other/")
    connected, _code = await comm.connect(timeout=5)
    assert not connected


async def test_foreign_origin_is_refused_and_allowed_origins_pass() -> None:
    foreign = WebsocketCommunicator(application, "/ws/chat/lobby/",
                                    headers=[(b"origin", b"http://localhost.evil.com")])
    connected, _ = await foreign.connect(timeout=5)
    assert not connected
    own = await connect(headers=[(b"origin", b"http://localhost:9999")])
    await own.disconnect()


async def test_guests_are_refused_when_not_allowed(settings: Any) -> None:
    settings.HUBBUB_ALLOW_GUESTS = False
    comm = WebsocketCommunicator(application, "/ws/chat/lobby/")
    await comm.connect(timeout=5)
    assert await closed_with(comm) == 4401
    _, token = await database_sync_to_async(make_user)("alice")
    member = await connect(headers=bearer(token))
    await member.send_json_to({"message": "hi"})
    assert (await recv(member))["user"] == "alice"
    await member.disconnect()


async def test_a_bad_token_is_refused_with_4401() -> None:
    comm = WebsocketCommunicator(application, "/ws/chat/lobby/", headers=bearer("hb_wrong"))
    await comm.connect(timeout=5)
    assert await closed_with(comm) == 4401


async def test_private_rooms_refuse_outsiders_and_admit_members() -> None:
    def setup() -> tuple[str, str]:
        owner, owner_token = make_user("owner")
        _, outsider_token = make_user("outsider")
        services.room_create(actor=actor_for_user(owner), name="secret", private=True)
        return owner_token, outsider_token

    owner_token, outsider_token = await database_sync_to_async(setup)()
    guest = WebsocketCommunicator(application, "/ws/chat/secret/")
    await guest.connect(timeout=5)
    assert await closed_with(guest) == 4403
    outsider = WebsocketCommunicator(application, "/ws/chat/secret/", headers=bearer(outsider_token))
    await outsider.connect(timeout=5)
    assert await closed_with(outsider) == 4403
    owner = await connect("secret", headers=bearer(owner_token))
    await owner.disconnect()


async def test_a_removed_member_is_disconnected_at_once() -> None:
    def setup() -> tuple[User, str]:
        owner, _ = make_user("owner2")
        _member, member_token = make_user("member2")
        services.room_create(actor=actor_for_user(owner), name="club", private=True)
        services.member_add(actor=actor_for_user(owner), room_name="club", username="member2")
        return owner, member_token

    owner, member_token = await database_sync_to_async(setup)()
    member = await connect("club", headers=bearer(member_token))
    await database_sync_to_async(services.member_remove)(
        actor=actor_for_user(owner), room_name="club", username="member2")
    assert await closed_with(member) == 4403


# -- fan-out ------------------------------------------------------------------------------------


async def test_a_socket_that_cannot_keep_up_is_closed_not_buffered_forever(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A client that reads nothing: its transport stays paused, so the server's ``send`` never
    returns. Events pile up in the socket's outbox until the limit, then it is closed with 1013."""
    monkeypatch.setattr(sockets, "OUTBOX_LIMIT", 5)
    paused = asyncio.Event()  # never set: the transport never drains
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "websocket.send":
            await paused.wait()

    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    scope = {"type": "websocket", "path": "/ws/chat/firehose/", "query_string": b"", "headers": [],
             "subprotocols": [], "url_route": {"kwargs": {"room": "firehose"}}, "user": None,
             "session_key": None}
    await inbox.put({"type": "websocket.connect"})
    task = asyncio.ensure_future(consumers.ChatSocket(scope, inbox.get, send).run())
    h = hub.get_hub()
    for _ in range(100):
        if any(m["type"] == "websocket.accept" for m in sent):
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.05)  # presence and catch-up settle
    for n in range(1, 20):
        h._dispatch({"kind": "message", "room": "firehose", "id": n, "text": f"m{n}"})
        await asyncio.sleep(0)
    for _ in range(100):
        if any(m["type"] == "websocket.close" for m in sent):
            break
        await asyncio.sleep(0.02)
    closes = [m for m in sent if m["type"] == "websocket.close"]
    assert closes and closes[0]["code"] == 1013, sent
    # One frame reached the (stuck) transport; the rest waited and were dropped, not buffered.
    assert [m["text"] for m in sent if m["type"] == "websocket.send"] == ["m1"]
    await inbox.put({"type": "websocket.disconnect", "code": 1006})
    await asyncio.wait_for(task, 5)


async def test_one_event_is_encoded_once_for_every_local_socket() -> None:
    socks = [await connect("fan") for _ in range(3)]
    h = hub.get_hub()
    seen: list[int] = []
    for sub in h.rooms["fan"]:
        original = sub.offer

        def spy(event: dict[str, Any], original: Any = original) -> None:
            seen.append(id(event["text"]))
            original(event)

        sub.offer = spy  # type: ignore[method-assign]
    await socks[0].send_json_to({"message": "once"})
    for s in socks:
        await recv(s)
    assert len(seen) == 3 and len(set(seen)) == 1  # the same str object for every socket
    for s in socks:
        await s.disconnect()


async def test_sockets_leave_the_hub_when_they_disconnect() -> None:
    comm = await connect("bye", rich=True)
    await recv_type(comm, "presence")
    await comm.disconnect()
    await asyncio.sleep(0.1)
    assert "bye" not in hub.get_hub().rooms
