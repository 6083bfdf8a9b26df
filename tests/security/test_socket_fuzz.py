"""Live fuzzing of the chat socket: a few hundred malformed frames over real sockets to a real
``hubbub serve`` (the embedded default).

Every bad frame is answered with exactly one ``error`` event carrying the documented code
(CONTRACT.md §4), in order; the sockets stay open; valid posts mixed in (unicode oddities
included) are stored exactly and delivered to a bystander; nothing bogus is stored; the process
answers /livez throughout; a frame over 64 KiB closes that one socket with 1009.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass, field

import httpx
import pytest

from tests.live.servers import HubbubServer, history
from tests.live.wsclient import Socket

pytestmark = [pytest.mark.live, pytest.mark.timeout(180)]

SEED = 20261122
SOCKETS = 4
FRAMES_PER_SOCKET = 110  # bad frames; a valid post after every 10th
PACE = 1 / 20  # seconds between frames on one socket: under the 30/s per-connection frame limit
WHITESPACE = " \t\n\r\x0b\x0c\u3000\u2028\u2029\u00a0\u1680\u2003"
ODD_VALID = ["\u202eevil.exe\u202c", "zero\u200bwidth", "e\u0301\u0301\u0301",
             "\U0001f600\U0001f469\u200d\U0001f4bb", "\ufeffbom", "<script>alert(1)</script>",
             "'; DROP TABLE chat_message; --", "x",
             "\\ud800 as text", "\u00ff\u0100\uffff", "{\"message\":\"nested\"}", "\U0010ffff"]


@dataclass
class Sent:
    frame: str | bytes
    expect: frozenset[str]  # the acceptable error codes; empty for a valid post
    client_id: str | None = None
    text: str | None = None


@dataclass
class Tally:
    bad: int = 0
    valid: int = 0
    by_code: dict[str, int] = field(default_factory=dict)


def _not_json(rng: random.Random) -> str:
    candidates = [
        '{"message": "unterminated', "{'message': 'single quotes'}", '{"message": "x",}', "[1, 2",
        "{message: 1}", '{"message": "x"} trailing', "\x00", "", " ", "undefined", "{\"a\":1}{\"b\":2}",
        '{"message": "\\x41"}', '{"message": "\\u12"}', "\ufeff{}", "tru", "01", "-", "{{}}",
    ]
    text = rng.choice(candidates) if rng.random() < 0.6 else "".join(
        rng.choice("{}[]:,\"'\\ abcxyz0123\u00e9\U0001f600") for _ in range(rng.randint(1, 60)))
    try:
        json.loads(text)
    except ValueError:
        return text
    return text + "}"  # the random soup happened to be JSON: break it


def bad_frame(rng: random.Random, n: int) -> Sent:
    """The ``n``-th bad frame of a socket's stream: every category in turn, details at random."""
    bad = frozenset({"bad_frame"})
    kind = n % 14
    if kind == 0:
        return Sent(rng.randbytes(rng.randint(0, 3000)), bad)
    if kind == 1:
        return Sent(_not_json(rng), frozenset({"bad_json"}))
    if kind == 2:
        value = rng.choice([[], [1, 2], 7, -1.5, "message", None, True, [{"message": "x"}]])
        return Sent(json.dumps(value), bad)
    if kind == 3:
        value = rng.choice([1, 1.5, None, True, [], {}, ["x"], {"text": "x"}])
        return Sent(json.dumps({"message": value}), bad)
    if kind == 4:
        frame = rng.choice([
            {"type": 5}, {"type": None, "message": "x"}, {"type": ["message"]},
            {"message": "ok", "client_id": rng.choice([5, 1.5, True, [], {}])},
            {"type": "history", "limit": rng.choice(["10", 0, -3, 2.5, True, None, [1]])},
            {"type": "history", "before": rng.choice(["1", 0, -1, 2**63, 1.0, True, {}])},
        ])
        return Sent(json.dumps(frame), bad)
    if kind == 5:
        name = rng.choice(["join", "MESSAGE", "Message", "", " ping", "history2", "presence", "pong",
                           "error", "admin", "\u0000", "x" * 500, "typing\n"])
        return Sent(json.dumps({"type": name}), frozenset({"unknown_type"}))
    if kind == 6:
        frame = rng.choice([
            {"message": "x", "room": "other"}, {"message": "x", "user": "admin"},
            {"type": "ping", "message": "x"}, {"type": "typing", "user": "someone"},
            {"message": "x", "id": 1}, {"type": "history", "room": "x"},
            {"message": "x", "__proto__": {"admin": True}},
        ])
        return Sent(json.dumps(frame), bad)
    if kind == 7:
        text = "".join(rng.choice(WHITESPACE) for _ in range(rng.randint(0, 40)))
        return Sent(json.dumps({"message": text}), frozenset({"empty_message"}))
    if kind == 8:
        text = rng.choice(["x", "\u00e9", "\U0001f600"]) * rng.randint(4001, 12000)
        return Sent(json.dumps({"message": text}, ensure_ascii=False), frozenset({"too_long"}))
    if kind == 9:
        escape = rng.choice(["\\ud800", "\\udfff", "\\udc00\\ud800", "\\ud83d"])
        return Sent('{"message":"lone ' + escape + ' surrogate"}', bad)
    if kind == 10:
        return Sent(json.dumps({"message": "nul \u0000 inside"}), bad)
    if kind == 11:
        return Sent(json.dumps({"message": "x", "client_id": "c" * rng.randint(65, 3000)}), bad)
    if kind == 12:
        opener = rng.choice(["[", '{"a":'])
        depth = rng.randint(1000, (64 * 1024 - 1) // len(opener))  # deep, but under the frame limit
        return Sent(opener * depth, frozenset({"bad_json"}))
    # kind 13: numbers no JSON library should choke on
    frame = rng.choice([
        '{"type":"history","before":' + "9" * rng.randint(4400, 20000) + "}",
        '{"type":"history","limit":1e999}', '{"type":"history","before":NaN}',
        '{"type":"history","limit":-Infinity}', '{"type":"history","before":1e2}',
    ])
    return Sent(frame, frozenset({"bad_json", "bad_frame"}))


async def drive(sock: Socket, frames: list[Sent], tally: Tally) -> None:
    """Send each frame once the previous one is answered, checking each answer."""
    for sent in frames:
        start = len(sock.received)
        await sock.send(sent.frame)
        if sent.client_id is None:
            answer = await sock.wait_for(lambda e: e.get("type") == "error", 10, "error answer", since=start)
            assert answer["code"] in sent.expect, (sent.frame[:200], answer)
            assert isinstance(answer["detail"], str) and answer["detail"]
            tally.bad += 1
            tally.by_code[answer["code"]] = tally.by_code.get(answer["code"], 0) + 1
        else:
            cid = sent.client_id
            answer = await sock.wait_for(
                lambda e, cid=cid: e.get("type") == "error" or e.get("client_id") == cid,
                10, f"ack of {cid}", since=start)
            assert answer["type"] == "message" and answer["message"] == sent.text, answer
            tally.valid += 1
        await asyncio.sleep(PACE)
    assert sock.closed_code is None, f"socket closed with {sock.closed_code}"


def livez(server: HubbubServer) -> int:
    return httpx.get(server.http + "/livez", timeout=5).status_code


async def test_hundreds_of_malformed_frames_are_each_answered_and_nothing_bogus_is_stored(
    embedded: HubbubServer,
) -> None:
    rng = random.Random(SEED)
    room = "fuzz"
    bystander = await Socket.open(embedded.ws, room)  # plain mode: sees only message events
    sockets = [await Socket.open(embedded.ws, room, rich=True) for _ in range(SOCKETS)]
    plans: list[list[Sent]] = []
    valid: dict[str, str] = {}
    for s in range(SOCKETS):
        plan: list[Sent] = []
        for n in range(FRAMES_PER_SOCKET):
            plan.append(bad_frame(rng, n + s))
            if n % 10 == 9:
                cid = f"s{s}-{n}"
                text = rng.choice(ODD_VALID) + f" #{cid}"
                valid[cid] = text
                plan.append(Sent(json.dumps({"message": text, "client_id": cid}), frozenset(), cid, text))
        plans.append(plan)

    tally = Tally()
    start = time.monotonic()
    runs = asyncio.gather(*(drive(sock, plan, tally) for sock, plan in zip(sockets, plans, strict=True)))
    while not runs.done():  # the process answers /livez throughout
        assert await asyncio.to_thread(livez, embedded) == 200
        await asyncio.wait([runs], timeout=1.0)
    await runs
    elapsed = time.monotonic() - start

    assert tally.bad == SOCKETS * FRAMES_PER_SOCKET and tally.valid == len(valid)
    # Every bad frame got its one error and nothing else went wrong: no server_error anywhere.
    for sock in sockets:
        errors = [e for e in sock.received if e.get("type") == "error"]
        assert len(errors) == FRAMES_PER_SOCKET and not any(e["code"] == "server_error" for e in errors)
        assert sock.closed_code is None
    # What is stored is exactly the valid posts, each once, with gapless ids.
    stored = await history(embedded.http, room)
    assert [m["id"] for m in stored] == list(range(1, len(valid) + 1))
    assert {m["client_id"]: m["message"] for m in stored} == valid
    # The bystander received exactly those, in order.
    await bystander.wait_ids(len(valid))
    assert bystander.ids() == list(range(1, len(valid) + 1))
    assert [m["message"] for m in bystander.messages()] == [m["message"] for m in stored]
    assert all(e.get("type") == "message" for e in bystander.received), "plain mode got other events"

    # A frame over 64 KiB closes that socket (1009) and only that socket.
    victim = sockets[0]
    await victim.send(json.dumps({"message": "x" * (64 * 1024 + 10)}))
    assert await victim.wait_closed(10) == 1009
    await sockets[1].send(rng.randbytes(64 * 1024 + 1))
    assert await sockets[1].wait_closed(10) == 1009
    ack = await sockets[2].post("still here", "after-1009")
    assert ack["id"] == len(valid) + 1
    assert livez(embedded) == 200
    assert len(await history(embedded.http, room)) == len(valid) + 1
    for sock in [*sockets[2:], bystander]:
        await sock.close()
    print(f"\nsocket fuzz: {tally.bad} malformed frames ({dict(sorted(tally.by_code.items()))}), "
          f"{tally.valid} valid posts, 2 oversized frames, in {elapsed:.1f} s")
