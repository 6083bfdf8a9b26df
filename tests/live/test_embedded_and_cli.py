"""The embedded default and the command line (CONTRACT.md §1, §2, §4), against real processes:
posting, clean stops on SIGTERM and SIGINT, the CLI's users and tokens, one-line errors for bad
settings and arguments, the 64 KiB frame limit, guests switched off, the rate limit, the health
endpoints, and a socket left idle for 70 s on the Redis layer."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import InvalidStatus

from tests.live.conftest import Cluster
from tests.live.servers import HubbubServer, free_port, history
from tests.live.wsclient import Socket

pytestmark = [pytest.mark.live]


def hubbub(server: HubbubServer, *args: str, stdin: str | None = None,
           timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the installed ``hubbub`` console script (``python -m hubbub.cli`` if there is none)
    with ``server``'s settings."""
    script = Path(sys.executable).with_name("hubbub")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "hubbub.cli"]
    server.data_dir.mkdir(parents=True, exist_ok=True)
    return subprocess.run([*command, *args], env=server.env(), input=stdin, capture_output=True,
                          text=True, timeout=timeout, cwd=server.data_dir)


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{stderr}"
    return lines[0]


# -- the embedded default ----------------------------------------------------------------------


async def test_embedded_default_posts_and_delivers_with_sequential_ids(embedded: HubbubServer) -> None:
    room = "lobby"
    sender = await Socket.open(embedded.ws, room)
    reader = await Socket.open(embedded.ws, room)
    rich = await Socket.open(embedded.ws, room, rich=True)
    before = datetime.now(UTC)
    ack = await sender.post("hello", "c-1")
    assert set(ack) == {"type", "room", "id", "user", "message", "ts", "client_id"}
    assert (ack["type"], ack["room"], ack["id"], ack["message"], ack["client_id"]) == (
        "message", room, 1, "hello", "c-1")
    assert ack["user"].startswith("guest-")
    ts = datetime.fromisoformat(ack["ts"].replace("Z", "+00:00"))
    assert ts.utcoffset() == timedelta(0)
    assert before - timedelta(seconds=5) <= ts <= datetime.now(UTC) + timedelta(seconds=5)
    await sender.send({"message": "no client id"})
    await sender.send({"type": "message", "message": "typed"})
    for sock in (sender, reader, rich):
        assert await sock.wait_ids(3) == [1, 2, 3]
    assert [m["client_id"] for m in reader.messages()] == ["c-1", None, None]
    assert reader.messages()[0] == ack
    # Plain mode: only message (and error) events.
    assert {e["type"] for e in reader.received} == {"message"}
    presence = await rich.wait_for(lambda e: e.get("type") == "presence" and len(e["users"]) == 3)
    assert len(set(presence["users"])) == 3 and ack["user"] in presence["users"]
    stored = await history(embedded.http, room)
    assert stored == reader.messages()
    for sock in (sender, reader, rich):
        await sock.close()


async def test_sigterm_stops_the_embedded_server_cleanly(embedded: HubbubServer) -> None:
    sock = await Socket.open(embedded.ws, "bye", rich=True)
    await sock.post("still here", "c-1")
    code = await asyncio.to_thread(embedded.stop, signal.SIGTERM)
    log = embedded.log_path.read_text(errors="replace")
    assert code == 0, f"exit status {code}; log:\n{embedded.log_tail()}"
    assert "Traceback" not in log, log
    await sock.wait_closed(10)


async def test_sigint_stops_the_embedded_server_cleanly(embedded: HubbubServer) -> None:
    sock = await Socket.open(embedded.ws, "bye", rich=True)
    await sock.post("still here", "c-1")
    code = await asyncio.to_thread(embedded.stop, signal.SIGINT)
    log = embedded.log_path.read_text(errors="replace")
    assert code == 0, f"exit status {code}; log:\n{embedded.log_tail()}"
    assert "Traceback" not in log, log
    await sock.wait_closed(10)


async def test_embedded_health_endpoints(embedded: HubbubServer) -> None:
    async with httpx.AsyncClient(base_url=embedded.http, timeout=10) as http:
        livez = await http.get("/livez")
        readyz = await http.get("/readyz")
    assert livez.status_code == 200
    assert readyz.status_code == 200, readyz.text
    assert readyz.headers["content-type"].startswith("application/json")


# -- the command line --------------------------------------------------------------------------


async def test_cli_user_and_token_create(embedded: HubbubServer) -> None:
    made = hubbub(embedded, "user", "create", "alice", "--password-stdin",
                  stdin="first-line-pw\nsecond line\n")
    assert made.returncode == 0, made.stderr
    token = hubbub(embedded, "token", "create", "alice")
    assert token.returncode == 0, token.stderr
    assert len(token.stdout.splitlines()) == 1 and token.stdout.endswith("\n"), repr(token.stdout)
    value = token.stdout.strip()
    assert value and " " not in value
    second = hubbub(embedded, "token", "create", "alice")
    assert second.returncode == 0 and second.stdout.strip() not in ("", value)

    # The password is the first line of stdin without its newline.
    async with httpx.AsyncClient(base_url=embedded.http, timeout=10) as http:
        good = await http.post("/api/auth/token", json={"username": "alice", "password": "first-line-pw"})
        bad = await http.post("/api/auth/token",
                              json={"username": "alice", "password": "first-line-pw\nsecond line"})
        rooms = await http.get("/api/rooms", headers={"Authorization": f"Bearer {value}"})
    assert good.status_code == 200 and good.json()["token"], good.text
    assert bad.status_code in (400, 401, 403), bad.text
    assert rooms.status_code == 200, rooms.text

    sock = await Socket.open(embedded.ws, "cli", token=value)
    ack = await sock.post("signed in", "c-1")
    assert ack["user"] == "alice"
    await sock.close()

    again = hubbub(embedded, "user", "create", "alice", "--password-stdin", stdin="another-pw-1\n")
    assert again.returncode != 0
    assert "alice" in one_line(again.stderr)
    random_pw = hubbub(embedded, "user", "create", "bob")
    assert random_pw.returncode == 0, random_pw.stderr
    assert len(random_pw.stdout.strip().splitlines()) == 1


BAD_SETTINGS = [
    ("HUBBUB_MAX_MESSAGE_CHARS", "abc"),
    ("HUBBUB_MAX_MESSAGE_CHARS", "-5"),
    ("HUBBUB_MAX_UPLOAD_MB", "1.5"),
    ("DATABASE_URL", "mysql://x"),
    ("DATABASE_URL", "postgres://u:p@localhost:notaport/db"),
    ("REDIS_URL", "http://localhost:6379"),
    ("HUBBUB_ALLOW_GUESTS", "maybe"),
    ("HUBBUB_DEBUG", "yes please"),
    ("HUBBUB_SECRET_KEY", "short"),
    ("HUBBUB_ALLOWED_HOSTS", "localhost,,example.com"),
]


@pytest.mark.parametrize(("name", "value"), BAD_SETTINGS)
def test_bad_setting_stops_start_up_with_one_line_naming_it(data_dir: Path, name: str, value: str) -> None:
    server = HubbubServer(data_dir / "bad", {name: value})
    done = hubbub(server, "serve", "--port", str(free_port()), timeout=30)
    assert done.returncode != 0
    assert name in one_line(done.stderr)


def test_bad_data_dir_and_bad_settings_for_other_commands(data_dir: Path) -> None:
    blocker = data_dir / "a-file"
    blocker.write_text("not a directory")
    server = HubbubServer(data_dir / "ok", {"HUBBUB_DATA_DIR": str(blocker / "sub")})
    done = hubbub(server, "serve", "--port", str(free_port()), timeout=30)
    assert done.returncode != 0
    assert "HUBBUB_DATA_DIR" in one_line(done.stderr)
    for args in (["token", "create", "x"], ["user", "create", "x", "--password-stdin"]):
        server = HubbubServer(data_dir / "ok", {"DATABASE_URL": "mysql://x"})
        done = hubbub(server, *args, stdin="pw-pw-pw-1\n", timeout=30)
        assert done.returncode != 0
        assert "DATABASE_URL" in one_line(done.stderr)


def test_unreachable_database_is_one_line_not_a_traceback(data_dir: Path) -> None:
    server = HubbubServer(data_dir / "nodb", {"DATABASE_URL": f"postgres://u:p@127.0.0.1:{free_port()}/db"})
    done = hubbub(server, "serve", "--port", str(free_port()), timeout=60)
    assert done.returncode != 0
    one_line(done.stderr)


@pytest.mark.parametrize("args", [
    [],
    ["frobnicate"],
    ["serve", "--port", "abc"],
    ["serve", "--port", "0"],
    ["serve", "--port", "70000"],
    ["serve", "--bogus"],
    ["user"],
    ["user", "create"],
    ["token", "create"],
    ["token", "create", "nobody"],
    ["user", "create", "guest-x", "--password-stdin"],
])
def test_bad_arguments_exit_non_zero_with_one_line(data_dir: Path, args: list[str]) -> None:
    server = HubbubServer(data_dir / "args")
    done = hubbub(server, *args, stdin="pw-pw-pw-1\n", timeout=60)
    assert done.returncode != 0
    one_line(done.stderr)


# -- socket limits -----------------------------------------------------------------------------


async def test_frame_over_64_kib_closes_with_1009(embedded: HubbubServer) -> None:
    sock = await Socket.open(embedded.ws, "big")
    # Under the frame limit but over the message limit: an error, and the socket stays open.
    await sock.send({"message": "x" * (60 * 1024), "client_id": "c-big"})
    error = await sock.wait_for(lambda e: e.get("type") == "error")
    assert error["code"] == "too_long"
    ack = await sock.post("small", "c-1")
    assert ack["id"] == 1
    await sock.send("x" * (64 * 1024 + 1))
    assert await sock.wait_closed(10) == 1009

    binary = await Socket.open(embedded.ws, "big")
    await binary.send(b"\0" * (64 * 1024 + 1))
    assert await binary.wait_closed(10) == 1009
    assert [m["id"] for m in await history(embedded.http, "big")] == [1]


async def _refusal(base: str, room: str, token: str | None) -> Any:
    try:
        sock = await Socket.open(base, room, token=token)
    except InvalidStatus as exc:
        return f"http {exc.response.status_code}"
    code = await sock.wait_closed(10)
    assert sock.received == []
    return code


async def test_guests_refused_when_not_allowed(data_dir: Path) -> None:
    server = HubbubServer(data_dir / "noguests", {"HUBBUB_ALLOW_GUESTS": "false"}, name="noguests")
    server.start()
    try:
        token = server.make_user("alice")
        assert await _refusal(server.ws, "lobby", None) == 4401
        assert await _refusal(server.ws, "lobby", "not-a-token") == 4401
        async with httpx.AsyncClient(base_url=server.http, timeout=10) as http:
            anon = await http.get("/api/rooms/lobby/messages")
        assert anon.status_code in (401, 403), anon.text
        sock = await Socket.open(server.ws, "lobby", token=token)
        ack = await sock.post("members only", "c-1")
        assert ack["id"] == 1 and ack["user"] == "alice"
        await sock.close()
    finally:
        server.stop()


# -- the rate limit ----------------------------------------------------------------------------


async def test_flooder_is_rate_limited_while_a_5_per_second_client_is_not(embedded: HubbubServer) -> None:
    room = "flood"
    flooder = await Socket.open(embedded.ws, room)
    steady = await Socket.open(embedded.ws, room)
    watcher = await Socket.open(embedded.ws, room)
    sent = 0

    async def flood() -> None:
        nonlocal sent
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            for _ in range(3):
                await flooder.send({"message": f"flood {sent}", "client_id": f"f-{sent}"})
                sent += 1
            await asyncio.sleep(0.02)

    async def post_steadily() -> list[dict[str, Any]]:
        answers = []
        started = time.monotonic()
        for i in range(15):  # 5 per second for 3 s
            await asyncio.sleep(max(0.0, started + i * 0.2 - time.monotonic()))
            answers.append(await steady.post_or_error(f"steady {i}", f"s-{i}"))
        return answers

    _, answers = await asyncio.gather(flood(), post_steadily())
    assert [a["type"] for a in answers] == ["message"] * 15, [a for a in answers if a["type"] != "message"]

    def flood_answers() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        acks = [e for e in flooder.messages() if str(e.get("client_id")).startswith("f-")]
        errors = [e for e in flooder.received if e.get("type") == "error"]
        return acks, errors

    await flooder.wait_until(lambda: sum(map(len, flood_answers())) >= sent, 10,
                             what="an answer to every flood frame")
    acks, errors = flood_answers()
    assert len(acks) + len(errors) == sent, "every flood frame gets an ack or an error"
    assert errors, "the flood was never limited"
    for error in errors:
        assert error["code"] == "rate_limited", error
        assert isinstance(error["retry_after"], int | float) and error["retry_after"] > 0, error
    assert len(acks) >= 20  # the burst at least

    stored = await history(embedded.http, room)
    n = len(stored)
    assert [m["id"] for m in stored] == list(range(1, n + 1))
    stored_flood = {m["client_id"] for m in stored if m["client_id"].startswith("f-")}
    assert stored_flood == {a["client_id"] for a in acks}, "a refused frame was stored"
    assert {f"s-{i}" for i in range(15)} <= {m["client_id"] for m in stored}
    for sock in (steady, watcher, flooder):
        assert await sock.wait_ids(n) == list(range(1, n + 1))
    for sock in (flooder, steady, watcher):
        await sock.close()


async def test_ten_per_second_sustained_and_a_burst_of_twenty_are_never_refused(
    embedded: HubbubServer,
) -> None:
    sustained = await Socket.open(embedded.ws, "pace")
    started = time.monotonic()
    for i in range(30):  # 10 per second for 3 s, on a fixed schedule
        await asyncio.sleep(max(0.0, started + i * 0.1 - time.monotonic()))
        await sustained.send({"message": f"paced {i}", "client_id": f"p-{i}"})
    await sustained.wait_for(lambda e: e.get("client_id") == "p-29", 10, what="the last ack")
    assert [e for e in sustained.received if e["type"] == "error"] == []
    assert len(sustained.messages()) == 30

    burst = await Socket.open(embedded.ws, "pace")
    for i in range(20):
        await burst.send({"message": f"burst {i}", "client_id": f"b-{i}"})
    await burst.wait_for(lambda e: e.get("client_id") == "b-19", 10, what="the last ack")
    assert [e for e in burst.received if e["type"] == "error"] == []
    assert burst.ids() == list(range(31, 51))
    await sustained.close()
    await burst.close()


# -- an idle socket on the Redis layer ----------------------------------------------------------


async def test_idle_socket_stays_open_for_70_seconds_on_the_redis_layer(cluster: Cluster) -> None:
    # Guards the redis-py idle-timeout trap: with a short socket_timeout on the channel layer's
    # pub/sub connection, a quiet minute would drop the subscription (or the socket) and
    # cross-instance delivery would silently fall back to the database watcher or stop. Only
    # uvicorn's own pings (every 20 s) cross the wire meanwhile; the client sends none.
    idle = await Socket.open(cluster.a.ws, "quiet", rich=True, ping_interval=None)
    other = await Socket.open(cluster.b.ws, "quiet", rich=True, ping_interval=None)
    await idle.wait_for(lambda e: e.get("type") == "presence" and len(e["users"]) == 2, 10,
                        what="both guests present")
    await asyncio.sleep(70)
    assert idle.closed_code is None and other.closed_code is None
    start = len(idle.received)
    await idle.send({"type": "ping"})
    assert await idle.wait_for(lambda e: e.get("type") == "pong", 5, since=start) == {"type": "pong"}

    latencies = []
    for n, (sender, receiver) in enumerate([(other, idle), (idle, other)] * 2):
        began = time.monotonic()
        ack = await sender.post(f"after the quiet {n}", f"q-{n}")
        await receiver.wait_ids(ack["id"], timeout=10)
        latencies.append(time.monotonic() - began)
    # Through Redis a message crosses in milliseconds; the database watcher needs over 1 s.
    assert min(latencies[0::2]) < 0.9 and min(latencies[1::2]) < 0.9, latencies
    assert idle.ids() == other.ids() == [1, 2, 3, 4]
    for server in cluster.servers:
        log = server.log_tail(200)
        # With Redis up all along, a dropped pub/sub connection shows as a WARNING
        # ("Unexpected exception in receive task ... retrying").
        assert "Traceback" not in log and " WARNING " not in log, log
    await idle.close()
    await other.close()



async def test_frames_of_every_size_reach_clients_intact(embedded: HubbubServer) -> None:
    """Live frames are built once per event and written straight to uvicorn's transports: short
    ones, ones with a 16-bit length (a long message in multi-byte text) and a history frame over
    64 KiB (a 64-bit length) must all parse, in order, in a real client."""
    reader = await Socket.open(embedded.ws, "frames", rich=True)
    writer = await Socket.open(embedded.ws, "frames")
    bodies = ["short", "é" * 1500 + "✓" * 500, "x" * 125, "y" * 126]
    bodies += [f"{n} " + "ü" * 1990 for n in range(16)]  # 20 posts: within the burst of 24
    for i, body in enumerate(bodies):
        await writer.send({"message": body, "client_id": f"f{i}"})
        await writer.wait_for(lambda f, i=i: f.get("client_id") == f"f{i}", what=f"ack {i}")
    got = await reader.wait_for(lambda f: f.get("type") == "message" and f["id"] == len(bodies),
                                what="the last live message")
    assert got["message"] == bodies[-1]
    live = [f["message"] for f in reader.received if f.get("type") == "message"]
    assert live == bodies
    await reader.send({"type": "history", "before": len(bodies) + 1, "limit": 200})
    page = await reader.wait_for(lambda f: f.get("type") == "history", what="history")
    assert [m["message"] for m in page["messages"]] == bodies  # one frame of ~70 KB
    await reader.close()
    await writer.close()
