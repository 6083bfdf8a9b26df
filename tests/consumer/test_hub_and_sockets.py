"""The hub's per-room ordering and the socket's send path, with real sockets objects and a fake
ASGI transport (a ``send`` we can pause), on SQLite and the in-memory layer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from channels.db import database_sync_to_async

from hubbub.accounts.actors import actor_for_guest
from hubbub.chat import selectors, services
from hubbub.realtime import hub, sockets

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
async def fresh_hub() -> AsyncIterator[hub.Hub]:
    hub.reset_hub()
    h = hub.get_hub()
    await h.start()
    yield h
    await h.stop()
    hub.reset_hub()


class Recorder:
    """A subscriber that records what the hub offers it."""

    rich = False

    def __init__(self, name: str, actor_key: str = "g:x", session_key: str | None = None) -> None:
        self.conn_id = name
        self.actor_key = actor_key
        self.session_key = session_key
        self.ids: list[int] = []
        self.closed: list[int] = []

    def offer(self, event: dict[str, Any]) -> None:
        if event["type"] == "hub.message":
            self.ids.append(event["id"])

    def close_soon(self, code: int) -> None:
        self.closed.append(code)


def message(room: str, seq: int) -> dict[str, Any]:
    return {"kind": "message", "room": room, "id": seq, "text": f"m{seq}"}


async def test_an_early_message_waits_for_the_one_before_it(fresh_hub: hub.Hub) -> None:
    subs = [Recorder(f"s{i}") for i in range(3)]
    for sub in subs:
        await fresh_hub.join("order", sub)
    fresh_hub.note_seq("order", 0)
    for seq in (1, 3, 4, 2, 5):
        fresh_hub._dispatch(message("order", seq))
    assert all(sub.ids == [1, 2, 3, 4, 5] for sub in subs), [s.ids for s in subs]
    assert not fresh_hub.held.get("order") and "order" not in fresh_hub.hold_timers


async def test_a_gap_redis_never_fills_is_read_once_for_all_sockets(
    fresh_hub: hub.Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    actor = actor_for_guest("s")
    for n in range(3):
        await database_sync_to_async(services.message_post)(actor=actor, room_name="gap", body=f"{n}")
    await asyncio.sleep(0.1)  # their live events pass while nobody listens
    fresh_hub.seen.pop("gap", None)  # as for a process that heard nothing of them
    reads: list[int] = []
    real = selectors.message_texts_in

    def counted(**kwargs: Any) -> list[tuple[int, str]]:
        reads.append(kwargs["after"])
        return real(**kwargs)

    monkeypatch.setattr(selectors, "message_texts_in", counted)
    subs = [Recorder(f"s{i}") for i in range(20)]
    for sub in subs:
        await fresh_hub.join("gap", sub)
    fresh_hub.note_seq("gap", 0)
    fresh_hub._dispatch(message("gap", 1))
    fresh_hub._dispatch(message("gap", 3))  # 2 was lost on the way
    assert all(sub.ids == [1] for sub in subs)
    for _ in range(100):
        if all(sub.ids == [1, 2, 3] for sub in subs):
            break
        await asyncio.sleep(0.02)
    assert all(sub.ids == [1, 2, 3] for sub in subs), [s.ids for s in subs]
    assert reads == [1]  # one read for the room, not one per socket


async def test_logout_and_user_events_close_exactly_the_matching_sockets(fresh_hub: hub.Hub) -> None:
    browser = Recorder("a", actor_key="u:1", session_key="sess-1")
    program = Recorder("b", actor_key="u:1")  # the same user with a token
    other = Recorder("c", actor_key="u:2", session_key="sess-2")
    for sub in (browser, program, other):
        await fresh_hub.join("room", sub)
    fresh_hub.publish({"kind": "logout", "session_key": "sess-1"})
    assert (browser.closed, program.closed, other.closed) == ([4401], [], [])
    fresh_hub.publish({"kind": "user_gone", "user_key": "u:1"})
    assert program.closed == [4401] and other.closed == []


async def test_sockets_per_user_are_capped(fresh_hub: hub.Hub, settings: Any) -> None:
    settings.HUBBUB_MAX_SOCKETS_PER_USER = 2
    subs = [Recorder(f"s{i}", actor_key="u:7") for i in range(2)]
    for sub in subs:
        await fresh_hub.join(f"r{sub.conn_id}", sub)
    assert not fresh_hub.may_connect("u:7") and fresh_hub.may_connect("u:8")
    await fresh_hub.leave("rs0", subs[0])
    assert fresh_hub.may_connect("u:7")


# -- the socket's send path ---------------------------------------------------------------------


class Transport:
    """An ASGI ``send`` like uvicorn's: returns at once unless the transport is paused."""

    def __init__(self) -> None:
        self.writable = asyncio.Event()
        self.writable.set()
        self.frames: list[str] = []

    async def send(self, message: dict[str, Any]) -> None:
        await self.writable.wait()
        if message["type"] == "websocket.send":
            self.frames.append(message["text"])


class Plain(sockets.Socket):
    def handle_now(self, event: dict[str, Any]) -> bool:
        self.send_now(event["text"])
        return True

    async def handle(self, event: dict[str, Any]) -> None:
        await self.send_text(event["text"])


async def never() -> dict[str, Any]:
    await asyncio.Event().wait()
    return {}


async def test_a_frame_is_written_without_a_task_while_the_transport_is_writable() -> None:
    transport = Transport()
    sock = Plain({}, never, transport.send)
    await sock.accept()
    tasks = len(asyncio.all_tasks())
    sock.offer({"text": "one"})
    assert transport.frames == ["one"]  # written before offer() returned
    assert sock.drainer is None and len(asyncio.all_tasks()) == tasks


async def test_frames_behind_a_paused_transport_keep_their_order() -> None:
    transport = Transport()
    sock = Plain({}, never, transport.send)
    await sock.accept()
    transport.writable.clear()
    for text in ("a", "b", "c"):
        sock.offer({"text": text})
    assert transport.frames == [] and sock.drainer is not None
    transport.writable.set()
    for _ in range(50):
        if sock.drainer is None:
            break
        await asyncio.sleep(0.01)
    sock.offer({"text": "d"})  # writable again: straight through
    assert transport.frames == ["a", "b", "c", "d"]


@pytest.mark.parametrize("size", [0, 1, 125, 126, 1000, 65535, 65536, 200_000])
def test_a_prebuilt_text_frame_is_what_a_websocket_parser_reads(size: int) -> None:
    from websockets.frames import Frame, Opcode
    from websockets.streams import StreamReader

    text = ("é" * size)[: max(0, size // 2)] + "x" * (size - size // 2)
    reader = StreamReader()
    reader.feed_data(sockets.text_frame(text))
    reader.feed_eof()
    parser = Frame.parse(reader.read_exact, mask=False)
    try:
        next(parser)
    except StopIteration as done:
        frame = done.value
    else:
        raise AssertionError("the frame was incomplete")
    assert frame.opcode is Opcode.TEXT and frame.fin and frame.data.decode() == text
