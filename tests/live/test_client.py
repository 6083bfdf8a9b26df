"""The client library and the commands built on it, against real processes (docs/client.md):
the asyncio Room across a server restart, `hubbub send` / `hubbub tail` in pipes, `hubbub chat` in
a pseudo-terminal, `hubbub.publish` from a separate process on a two-instance cluster, and the
synchronous Client in a script."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pexpect
import pytest

from hubbub.client import Client
from hubbub.client.aio import HubbubClient, HubbubError, Message, Room
from tests.live.conftest import Cluster
from tests.live.servers import HubbubServer, free_port, history, new_data_dir, wait_until
from tests.live.terminal import Terminal
from tests.live.wsclient import Socket

pytestmark = [pytest.mark.live, pytest.mark.timeout(180)]

HUBBUB = str(Path(sys.executable).with_name("hubbub"))


# -- helpers --------------------------------------------------------------------------------------


def client_env(server: HubbubServer, token: str | None = None, **extra: str) -> dict[str, str]:
    """The environment of a client command: only HUBBUB_URL / HUBBUB_TOKEN (no server settings),
    and TZ=UTC so that the plain format's local time is predictable."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("HUBBUB_") and k not in ("DATABASE_URL", "REDIS_URL")}
    env["HUBBUB_URL"] = server.http
    if token:
        env["HUBBUB_TOKEN"] = token
    env["TZ"] = "UTC"
    env["PYTHONIOENCODING"] = "utf-8"
    env.update(extra)
    return env


def run(args: list[str] | str, env: dict[str, str], stdin: str | None = None,
        timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, env=env, input=stdin, capture_output=True, text=True, timeout=timeout,
                          shell=isinstance(args, str))


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{stderr}"
    return lines[0]


def plain_line(event: dict[str, Any]) -> str:
    """`hubbub tail`'s plain format for a MessageEvent (TZ=UTC)."""
    ts = datetime.fromisoformat(event["ts"].replace("Z", "+00:00")).astimezone(UTC)
    text = event["message"].replace("\n", "\n    ")
    return f"[{event['id']}] {ts:%H:%M:%S} {event['user']}: {text}"


class Proc:
    """A background command (its own process group) whose output lines a thread collects."""

    def __init__(self, args: list[str] | str, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            args, env=env, shell=isinstance(args, str), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.stderr: list[str] = []
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self._threads = [
            threading.Thread(target=self._collect, args=(self.proc.stdout, self.lines.put), daemon=True),
            threading.Thread(target=self._collect, args=(self.proc.stderr, self.stderr.append), daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    @staticmethod
    def _collect(stream: Any, put: Callable[[str], None]) -> None:
        for line in stream:
            put(line.rstrip("\n"))

    def take(self, n: int, timeout: float = 15.0) -> list[str]:
        deadline = time.monotonic() + timeout
        out: list[str] = []
        while len(out) < n:
            try:
                out.append(self.lines.get(timeout=max(0.01, deadline - time.monotonic())))
            except queue.Empty:
                raise AssertionError(f"got {len(out)} of {n} lines within {timeout}s: {out}; "
                                     f"exit={self.proc.poll()}, stderr={self.stderr}") from None
        return out

    def quiet(self, seconds: float) -> list[str]:
        """The lines that arrive within ``seconds`` (expected: none)."""
        time.sleep(seconds)
        out = []
        while not self.lines.empty():
            out.append(self.lines.get_nowait())
        return out

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        for thread in self._threads:
            thread.join(5)
        return self.proc.returncode

    def __enter__(self) -> Proc:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def post_with_retries(hub: HubbubClient, room: str, text: str, client_id: str,
                            timeout: float = 60) -> tuple[Message, int]:
    """Post over HTTP, retrying (same client_id) while the server cannot answer. Returns the
    stored message and how many attempts failed."""
    deadline = time.monotonic() + timeout
    failures = 0
    while True:
        try:
            return await hub.post(room, text, client_id), failures
        except HubbubError as exc:
            if exc.status is not None and exc.status < 500:
                raise
            failures += 1
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def eventually(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


async def nothing_more(room: Room, seconds: float = 0.5) -> None:
    """The iterator yields nothing further within ``seconds``."""
    with contextlib.suppress(TimeoutError):
        extra = await asyncio.wait_for(anext(room), seconds)
        raise AssertionError(f"unexpected extra message {extra}")


def metric(server: HubbubServer, name: str) -> float:
    text = server.get("/metrics").text
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


# -- 1, 2: the asyncio Room across a restart --------------------------------------------------------


async def test_room_iterator_yields_every_message_once_in_order_across_a_restart(
        embedded: HubbubServer) -> None:
    room_name, per_writer = "restart", 25
    total = 2 * per_writer
    reader_token = embedded.make_user("reader")
    http_token = embedded.make_user("httpwriter")
    ws_token = embedded.make_user("roomwriter")
    async with HubbubClient(embedded.http, reader_token) as reader_hub, \
            HubbubClient(embedded.http, http_token) as http_hub, \
            HubbubClient(embedded.http, ws_token) as ws_hub, \
            reader_hub.room(room_name, after=0) as reader, \
            ws_hub.room(room_name, after=0) as writer_room:
        states: list[str] = []
        reader.on_state = states.append
        got: list[Message] = []

        async def read() -> None:
            async for message in reader:
                got.append(message)
                if len(got) >= total:
                    return

        http_failures = 0

        async def http_writer() -> None:
            nonlocal http_failures
            for i in range(per_writer):
                _, failures = await post_with_retries(http_hub, room_name, f"http {i}", f"http-{i}")
                http_failures += failures
                await asyncio.sleep(0.1)

        async def room_writer() -> None:
            for i in range(per_writer):
                await writer_room.post(f"ws {i}", timeout=60)
                await asyncio.sleep(0.1)

        reading = asyncio.ensure_future(read())
        writers = asyncio.gather(http_writer(), room_writer())
        try:
            await eventually(lambda: len(got) >= 10, 20, "the first 10 messages")
            await asyncio.to_thread(embedded.stop)
            await asyncio.sleep(1)
            await asyncio.to_thread(embedded.start)
            await asyncio.wait_for(writers, 90)
            await asyncio.wait_for(reading, 60)
        finally:
            writers.cancel()
            reading.cancel()
        await nothing_more(reader)

        assert http_failures > 0, "the HTTP writer never met the server down: no restart mid-stream"
        assert "reconnecting" in states and states[-1] == "open", states
        assert [m.id for m in got] == list(range(1, total + 1))
        texts = [m.message for m in got]
        assert [t for t in texts if t.startswith("http ")] == [f"http {i}" for i in range(per_writer)]
        assert [t for t in texts if t.startswith("ws ")] == [f"ws {i}" for i in range(per_writer)]
        assert [m.as_event() for m in got] == await history(embedded.http, room_name, reader_token)


async def test_room_post_issued_while_the_server_is_down_completes_after_it_is_back(
        embedded: HubbubServer) -> None:
    token = embedded.make_user("patient")
    async with HubbubClient(embedded.http, token) as hub, hub.room("down", after=0) as room:
        first = await room.post("before")
        assert first.id == 1
        # Posts in flight at the moment the server goes away: acknowledged before it stops, or
        # resent after it is back; stored once either way.
        at_stop = [asyncio.ensure_future(room.post(f"at stop {i}", timeout=60)) for i in range(5)]
        await asyncio.sleep(0)
        await asyncio.to_thread(embedded.stop)
        await eventually(lambda: room.state != "open", 10, "the room to notice the server went away")

        while_down = asyncio.ensure_future(room.post("while down", timeout=60))
        await asyncio.sleep(1.0)
        assert not while_down.done(), "a post completed with the server down"
        assert room.state in ("reconnecting", "connecting")
        back_at = time.monotonic()
        await asyncio.to_thread(embedded.start)
        posted = await asyncio.wait_for(while_down, 60)
        assert time.monotonic() >= back_at
        assert posted.message == "while down" and posted.user == "patient"
        burst = await asyncio.wait_for(asyncio.gather(*at_stop), 60)

        stored = await history(embedded.http, "down", token)
        assert [e["id"] for e in stored] == list(range(1, 8))
        assert sorted(e["message"] for e in stored) == sorted(
            ["before", "while down", *(f"at stop {i}" for i in range(5))])
        by_id = {e["id"]: e for e in stored}
        for message in [first, posted, *burst]:
            assert by_id[message.id] == message.as_event()
        # The iterator yields the same seven, once each.
        got = [await asyncio.wait_for(anext(room), 10) for _ in range(7)]
        assert [m.as_event() for m in got] == stored
        await nothing_more(room)


# -- 3: hubbub send / hubbub tail ---------------------------------------------------------------------


async def test_send_from_stdin_reaches_tail_json_once_in_order_and_after_n_catches_up(
        embedded: HubbubServer) -> None:
    room = "pipes"
    tail_token = embedded.make_user("tailer")
    send_token = embedded.make_user("sender")
    watcher = await Socket.open(embedded.ws, room, rich=True, token=embedded.make_user("watcher"))
    try:
        with Proc([HUBBUB, "tail", room, "--json"], client_env(embedded, tail_token)) as tail:
            await watcher.wait_for(lambda e: e.get("type") == "presence" and "tailer" in e["users"],
                                   20, what="the tail to join")
            sent = await asyncio.to_thread(
                run, f"printf 'a\\nb\\n\\nc\\n' | {shlex.quote(HUBBUB)} send {room} -",
                client_env(embedded, send_token))
            assert (sent.returncode, sent.stdout, sent.stderr) == (0, "", "")
            lines = await asyncio.to_thread(tail.take, 3)
            events = [json.loads(line) for line in lines]
            assert [(e["id"], e["user"], e["message"]) for e in events] == [
                (1, "sender", "a"), (2, "sender", "b"), (3, "sender", "c")]
            assert len({e["client_id"] for e in events}) == 3 and None not in {e["client_id"] for e in events}

            sender = client_env(embedded, send_token)
            single = await asyncio.to_thread(run, [HUBBUB, "send", room, "d d"], sender)
            assert (single.returncode, single.stdout, single.stderr) == (0, "4\n", "")
            events.append(json.loads((await asyncio.to_thread(tail.take, 1))[0]))
            assert await asyncio.to_thread(tail.quiet, 1.0) == []
            stored = await history(embedded.http, room)
            assert events == stored  # each line is the MessageEvent, exactly
            assert tail.proc.poll() is None and tail.stderr == []
        assert watcher.ids() == [1, 2, 3, 4]

        # A multi-line message, then catch-up with --after in both formats.
        embedded.post(f"/api/rooms/{room}/messages", {"message": "two\nlines"}, token=send_token)
        stored = await history(embedded.http, room)
        with Proc([HUBBUB, "tail", room, "--after", "2"], client_env(embedded, tail_token)) as plain:
            lines = await asyncio.to_thread(plain.take, 4)
            assert lines == "\n".join(plain_line(e) for e in stored[2:]).split("\n")
            assert re.fullmatch(r"\[3\] \d\d:\d\d:\d\d sender: c", lines[0])
            assert lines[-1] == "    lines"
            live = await asyncio.to_thread(run, [HUBBUB, "send", room, "live"], sender)
            assert live.returncode == 0, live.stderr
            (line,) = await asyncio.to_thread(plain.take, 1)
            assert re.fullmatch(r"\[6\] \d\d:\d\d:\d\d sender: live", line)
            assert await asyncio.to_thread(plain.quiet, 0.5) == []
        stored = await history(embedded.http, room)
        with Proc([HUBBUB, "tail", room, "--after", "4", "--json"], client_env(embedded, tail_token)) as js:
            assert [json.loads(x) for x in await asyncio.to_thread(js.take, 2)] == stored[4:]
            assert await asyncio.to_thread(js.quiet, 0.5) == []
    finally:
        await watcher.close()


async def test_tail_piped_into_send_relays_each_line_once_in_order(embedded: HubbubServer) -> None:
    piper = embedded.make_user("piper")
    poster = embedded.make_user("poster")
    watch = embedded.make_user("watcher")
    src = await Socket.open(embedded.ws, "src", rich=True, token=watch)
    dst = await Socket.open(embedded.ws, "dst", rich=True, token=watch, after=0)
    pipeline = f"{shlex.quote(HUBBUB)} tail src | {shlex.quote(HUBBUB)} send dst -"
    try:
        with Proc(pipeline, client_env(embedded, piper)) as pipe:
            for sock, what in ((src, "tail"), (dst, "send")):
                await sock.wait_for(lambda e: e.get("type") == "presence" and "piper" in e["users"],
                                    20, what=f"the pipeline's {what} to join")
            posted = []
            for text in ("one", "two", "three"):
                resp = embedded.post("/api/rooms/src/messages", {"message": text}, token=poster)
                assert resp.status_code == 201, resp.text
                posted.append(resp.json())
            assert await dst.wait_ids(3, timeout=20) == [1, 2, 3]
            relayed = dst.messages()
            assert [(e["user"], e["message"]) for e in relayed] == [
                ("piper", plain_line(event)) for event in posted]
            await asyncio.sleep(1.0)
            assert dst.ids() == [1, 2, 3]  # nothing twice
            assert pipe.proc.poll() is None, pipe.stderr
        assert [e["message"] for e in await history(embedded.http, "dst")] == [
            plain_line(event) for event in posted]
    finally:
        await src.close()
        await dst.close()


@dataclass
class Shared:
    server: HubbubServer
    owner: str
    outsider: str


@pytest.fixture(scope="module")
def shared() -> Iterator[Shared]:
    """One embedded server for the many short error cases, with a private room 'vault' that
    'outsider' is not a member of."""
    path = new_data_dir()
    server = HubbubServer(path / "shared", name="shared")
    server.start()
    try:
        owner, outsider = server.make_user("owner"), server.make_user("outsider")
        assert server.post("/api/rooms", {"name": "vault", "private": True}, token=owner).status_code == 201
        yield Shared(server, owner, outsider)
    finally:
        server.stop()
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize(("args", "stdin", "expect"), [
    (["send", "bad room!", "hi"], None, "bad_room"),
    (["send", "bad room!", "-"], "hi\n", "bad_room"),
    (["tail", "bad room!"], None, "bad_room"),
    (["tail", "bad room!", "--after", "0"], None, "bad_room"),
    (["send", "lobby", "hi", "--url", "UNREACHABLE"], None, "unreachable"),
    (["send", "lobby", "-", "--url", "UNREACHABLE"], "hi\n", "unreachable"),
    (["tail", "lobby", "--url", "UNREACHABLE"], None, "unreachable"),
    (["tail", "lobby", "--json", "--url", "UNREACHABLE"], None, "unreachable"),
    (["send", "lobby", "hi", "--token", "hb_not-a-token"], None, ""),
    (["tail", "lobby", "--after", "0", "--token", "hb_not-a-token"], None, ""),
    (["send", "vault", "hi"], None, "forbidden"),
    (["send", "vault", "-"], "hi\n", "forbidden"),
    (["tail", "vault"], None, "forbidden"),
    (["tail", "vault", "--after", "0"], None, "forbidden"),
])
def test_send_and_tail_errors_exit_1_with_one_line(shared: Shared, args: list[str],
                                                   stdin: str | None, expect: str) -> None:
    unreachable = f"http://127.0.0.1:{free_port()}"
    args = [unreachable if a == "UNREACHABLE" else a for a in args]
    started = time.monotonic()
    result = run([HUBBUB, *args], client_env(shared.server, shared.outsider), stdin=stdin, timeout=40)
    assert result.returncode == 1, (result.stdout, result.stderr)
    line = one_line(result.stderr)
    assert line.startswith("hubbub: error: ") and expect in line, line
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert time.monotonic() - started < 30
    for room in ("vault", "lobby"):
        assert shared.server.get(f"/api/rooms/{room}/messages", token=shared.owner).json()["messages"] == []


def test_tail_with_after_against_an_unreachable_server_gives_up_with_one_line(data_dir: Path) -> None:
    """With --after the tail skips the HTTP call and goes straight to the socket: it must still
    give up (in bounded time) rather than retry for ever."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUBBUB_")}
    started = time.monotonic()
    result = run([HUBBUB, "tail", "lobby", "--after", "0", "--url", f"http://127.0.0.1:{free_port()}"],
                 env, timeout=60)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "unreachable" in one_line(result.stderr)
    assert time.monotonic() - started < 30


def test_tail_into_head_stops_quietly(embedded: HubbubServer) -> None:
    """`hubbub tail R | head -n 1`: once head has gone, the tail's next write ends it with status
    0 and nothing on stderr (no BrokenPipeError traceback, no 'Exception ignored' at exit)."""
    token = embedded.make_user("reader")
    for i in range(3):
        resp = embedded.post("/api/rooms/heads/messages", {"message": f"m{i}"}, token=token)
        assert resp.status_code == 201
    pipeline = (f"{shlex.quote(HUBBUB)} tail heads --after 0 2>tail.err | head -n 1; "
                "echo \"status=${PIPESTATUS[0]}\"; cat tail.err")
    cwd = embedded.data_dir
    proc = subprocess.Popen(["bash", "-c", pipeline], env=client_env(embedded, token), cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        # The tail notices that head has gone only when it next writes: keep the room busy.
        deadline = time.monotonic() + 30
        i = 3
        while proc.poll() is None and time.monotonic() < deadline:
            embedded.post("/api/rooms/heads/messages", {"message": f"m{i}"}, token=token)
            i += 1
            time.sleep(0.3)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    lines = out.splitlines()
    assert re.fullmatch(r"\[1\] \d\d:\d\d:\d\d reader: m0", lines[0]), out
    assert lines[1:] == ["status=0"], out + err


def test_tail_exits_130_on_ctrl_c_without_a_traceback(embedded: HubbubServer) -> None:
    token = embedded.make_user("reader")
    embedded.post("/api/rooms/intr/messages", {"message": "hello"}, token=token)
    with Proc([HUBBUB, "tail", "intr", "--after", "0"], client_env(embedded, token)) as tail:
        assert tail.take(1)[0].endswith("reader: hello")
        os.killpg(tail.proc.pid, signal.SIGINT)
        assert tail.proc.wait(10) == 130
        tail.stop()
        assert tail.stderr == []


# -- 4: hubbub chat in a pseudo-terminal --------------------------------------------------------------


@contextlib.contextmanager
def chat_terminal(server: HubbubServer, token: str, room: str) -> Iterator[Terminal]:
    rows, cols = 24, 110
    env = client_env(server, token, TERM="xterm-256color")
    child = pexpect.spawn(HUBBUB, ["chat", room], env=env, dimensions=(rows, cols), timeout=10)
    try:
        yield Terminal(child, rows, cols)
    finally:
        if child.isalive():
            child.terminate(force=True)
        child.close()


def toolbar(screen: str) -> str:
    for line in screen.splitlines():
        if "Ctrl-D to leave" in line:
            return line
    return ""


def prompt_ready(screen: str, room: str) -> bool:
    """An empty prompt is waiting for input (the toolbar is drawn only while it is)."""
    lines = [line for line in screen.splitlines() if line.strip()]
    return len(lines) >= 2 and "Ctrl-D to leave" in lines[-1] and lines[-2] == f"{room}>"


async def test_chat_in_a_terminal_sends_receives_shows_state_and_presence_and_exits_on_ctrl_d(
        embedded: HubbubServer) -> None:
    room = "lounge"
    alice = embedded.make_user("alice")
    bob_token = embedded.make_user("bob")
    with chat_terminal(embedded, alice, room) as term:
        screen = await asyncio.to_thread(
            term.wait_for, lambda s: "here: alice ·" in toolbar(s), 20, "the toolbar with alice")
        assert re.search(rf"#{room} · open · here: alice · Ctrl-D to leave", toolbar(screen)), screen
        async with HubbubClient(embedded.http, bob_token) as hub, hub.room(room, after=0) as bob:
            await asyncio.to_thread(term.wait_for, lambda s: re.search(
                r"· open · here: (alice, bob|bob, alice) ·", toolbar(s)) is not None, 15,
                "bob in the toolbar")

            term.child.send("hello from the terminal\r")
            heard = await asyncio.wait_for(anext(bob), 15)
            assert (heard.id, heard.user, heard.message) == (1, "alice", "hello from the terminal")
            await asyncio.to_thread(term.wait_text, "alice: hello from the terminal")

            await bob.post("hi alice")
            screen = await asyncio.to_thread(term.wait_text, "bob: hi alice")
            assert re.search(r"\[2\] \d\d:\d\d:\d\d bob: hi alice", screen), screen
            assert (await asyncio.wait_for(anext(bob), 5)).message == "hi alice"

            # The connection state follows the server: down, then back.
            await asyncio.to_thread(embedded.stop)
            await asyncio.to_thread(term.wait_for, lambda s: "· reconnecting ·" in toolbar(s), 15,
                                    "'reconnecting' in the toolbar")
            await asyncio.to_thread(embedded.start)
            await asyncio.to_thread(term.wait_for, lambda s: re.search(
                r"· open · here: (alice, bob|bob, alice) ·", toolbar(s)) is not None, 30,
                "'open' again with both users")
            term.child.send("after the restart\r")
            heard = await asyncio.wait_for(anext(bob), 15)
            assert (heard.id, heard.message) == (3, "after the restart")

            await asyncio.to_thread(term.wait_for, lambda s: "alice: after the restart" in s
                                    and prompt_ready(s, room), 15, "the prompt back after the post")
            term.child.sendeof()  # Ctrl-D on an empty line
            assert await asyncio.to_thread(term.wait_exit, 15) == 0
            await eventually(lambda: bob.presence == ["bob"], 15, "alice to leave presence")
        assert "Traceback" not in term.raw
    stored = await history(embedded.http, room)
    assert [(e["user"], e["message"]) for e in stored] == [
        ("alice", "hello from the terminal"), ("bob", "hi alice"), ("alice", "after the restart")]


# -- 5: hubbub.publish from another process ------------------------------------------------------------


async def run_python(code: str, env: dict[str, str], timeout: float = 60) -> tuple[str, float]:
    """Run ``python -c code``; return its stdout and the monotonic time it exited."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    exited = time.monotonic()
    assert proc.returncode == 0, err.decode()
    return out.decode(), exited


async def arrival(sock: Socket, message: str, timeout: float = 10) -> tuple[dict[str, Any], float]:
    event = await sock.wait_for(lambda e: e.get("type") == "message" and e["message"] == message,
                                timeout, what=repr(message))
    return event, time.monotonic()


async def test_publish_from_another_process_reaches_both_instances_over_redis(cluster: Cluster) -> None:
    a, b = cluster.a, cluster.b
    alice = a.make_user("alice")
    b.make_user("carol")
    a.make_user("mallory")
    assert a.post("/api/rooms", {"name": "ops", "private": True}, token=alice).status_code == 201
    socks = {
        "deploys": [await Socket.open(s.ws, "deploys", token=alice) for s in (a, b)],
        "ops": [await Socket.open(s.ws, "ops", token=alice) for s in (a, b)],
    }
    env = a.env()  # DATABASE_URL, REDIS_URL: the cluster's
    gaps_before = [metric(s, "hubbub_gap_syncs_total") for s in (a, b)]
    try:
        waiting = [asyncio.ensure_future(arrival(s, "v2.3 is live")) for s in socks["deploys"]]
        out, exited = await run_python(
            "import json; from hubbub.publish import post_message; "
            "print(json.dumps(post_message('deploys', 'v2.3 is live', name='deploy-bot', client_id='d-1')))",
            env)
        printed = json.loads(out)
        assert (printed["id"], printed["user"], printed["client_id"]) == (1, "deploy-bot", "d-1")
        for event, seen in await asyncio.gather(*waiting):
            assert event == printed
            # Under load the socket may be slow; the gap-sync counter below proves the path.
            assert seen - exited < 1.0, f"arrived {seen - exited:.2f}s after the publisher exited"

        # A repeat (another process, same client_id); the private room as the service; a user.
        waiting = [asyncio.ensure_future(arrival(s, m))
                   for m, key in (("to the private room", "ops"), ("as carol", "deploys"))
                   for s in socks[key]]
        out, exited = await run_python(
            "import json\n"
            "from hubbub.publish import post_message\n"
            "from hubbub.errors import HubbubError\n"
            "print(json.dumps(post_message('deploys', 'v2.3 is live', name='deploy-bot', client_id='d-1')))\n"
            "print(json.dumps(post_message('ops', 'to the private room', name='deploy-bot')))\n"
            "print(json.dumps(post_message('deploys', 'as carol', username='carol')))\n"
            "try:\n"
            "    post_message('ops', 'not a member', username='mallory')\n"
            "except HubbubError as exc:\n"
            "    print(json.dumps({'error': exc.code}))\n",
            env)
        repeat, private, as_carol, refused = (json.loads(line) for line in out.splitlines())
        assert repeat == printed
        assert (private["room"], private["id"], private["user"]) == ("ops", 1, "deploy-bot")
        assert (as_carol["id"], as_carol["user"]) == (2, "carol")
        assert refused == {"error": "forbidden"}
        for event, seen in await asyncio.gather(*waiting):
            assert event in (private, as_carol)
            # Under load the socket may be slow; the gap-sync counter below proves the path.
            assert seen - exited < 1.0, f"arrived {seen - exited:.2f}s after the publisher exited"

        await asyncio.sleep(2.5)  # two database-watcher intervals
        for sock in socks["deploys"]:
            assert sock.messages() == [printed, as_carol]  # the repeat delivered nothing
        for sock in socks["ops"]:
            assert sock.messages() == [private]
        assert await history(a.http, "deploys", alice) == [printed, as_carol]
        assert await history(b.http, "ops", alice) == [private]
        # Delivered over Redis: neither instance had to fill a gap from the database.
        assert [metric(s, "hubbub_gap_syncs_total") for s in (a, b)] == gaps_before
    finally:
        for sock in socks["deploys"] + socks["ops"]:
            await sock.close()


# -- 6: the synchronous Client --------------------------------------------------------------------


def test_sync_client_send_and_tail_in_a_thread(embedded: HubbubServer) -> None:
    token = embedded.make_user("scripter")
    n = 5

    def sockets() -> float:
        return metric(embedded, "hubbub_ws_connections")

    with Client(embedded.http, token) as hub:
        got: list[Message] = []
        errors: list[BaseException] = []

        def follow() -> None:
            try:
                for message in hub.tail("script", after=0):
                    got.append(message)
                    if len(got) == n:
                        break
            except BaseException as exc:
                errors.append(exc)

        follower = threading.Thread(target=follow, daemon=True)
        follower.start()
        sent = [hub.send("script", f"step {i}") for i in range(n)]
        follower.join(20)
        assert not follower.is_alive() and errors == []
        assert [m.id for m in sent] == list(range(1, n + 1))
        assert got == sent
        # Breaking out of the loop closed the tail's socket; send's stays open for the next send.
        wait_until(lambda: sockets() == 1, 10, what="the tail's socket to close")

        again = hub.post("script", "over http", client_id="once")
        assert hub.post("script", "over http", client_id="once") == again
        assert again.id == n + 1
        assert [m.as_event() for m in hub.history("script", after=0)] == [
            m.as_event() for m in [*sent, again]]

        # A tail from now on (no after) sees only what comes next.
        later: list[Message] = []

        def follow_new() -> None:
            for message in hub.tail("script"):
                later.append(message)
                if len(later) == 2:
                    break

        follower = threading.Thread(target=follow_new, daemon=True)
        follower.start()
        wait_until(lambda: sockets() == 2, 10, what="the second tail to connect")
        hub.send("script", "next 1")
        hub.send("script", "next 2")
        follower.join(20)
        assert [(m.id, m.message) for m in later] == [(n + 2, "next 1"), (n + 3, "next 2")]
    wait_until(lambda: sockets() == 0, 10, what="every socket to close")


def test_sync_client_close_ends_a_tail_in_another_thread(embedded: HubbubServer) -> None:
    token = embedded.make_user("scripter")
    hub = Client(embedded.http, token)
    outcome: list[object] = []

    def follow() -> None:
        try:
            outcome.extend(hub.tail("quiet", after=0))
            outcome.append("ended")
        except BaseException as exc:
            outcome.append(exc)

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    wait_until(lambda: metric(embedded, "hubbub_ws_connections") == 1, 10, what="the tail to connect")
    hub.close()
    follower.join(5)
    assert not follower.is_alive(), "the tail thread is still blocked after Client.close()"


# -- a bug found on the way -------------------------------------------------------------------------


async def test_an_oversized_post_fails_alone_and_leaves_the_room_usable(embedded: HubbubServer) -> None:
    token = embedded.make_user("big")
    async with HubbubClient(embedded.http, token) as hub, hub.room("big", after=0) as room:
        states: list[str] = []
        room.on_state = states.append
        (outcome,) = await asyncio.gather(room.post("x" * 70_000, timeout=5), return_exceptions=True)
        small = await asyncio.gather(room.post("small", timeout=10), return_exceptions=True)
        await room.close()
        for _, future in room._pending.values():  # timed-out posts stay pending: silence them
            if future.done():
                future.exception()
        assert isinstance(outcome, HubbubError), f"the oversized post ended with {outcome!r}"
        assert not isinstance(small[0], BaseException), f"a normal post after it failed: {small[0]!r}"
        assert small[0].id == 1
        assert states.count("reconnecting") <= 1, f"the room flapped {states.count('reconnecting')} times"



async def test_chat_survives_a_post_that_times_out_while_the_server_is_down(embedded: HubbubServer) -> None:
    room = "outage"
    with chat_terminal(embedded, embedded.make_user("alice"), room) as term:
        await asyncio.to_thread(term.wait_for, lambda s: prompt_ready(s, room) and "· open ·" in toolbar(s),
                                20, "the prompt")
        await asyncio.to_thread(embedded.stop)
        await asyncio.to_thread(term.wait_for, lambda s: "· reconnecting ·" in toolbar(s), 15,
                                "'reconnecting' in the toolbar")
        term.child.send("into the void\r")
        # Room.post gives up after 30 s; chat should report it and carry on.
        await asyncio.to_thread(term.wait_text, "not sent", 40)
        assert term.child.isalive()
        await asyncio.to_thread(term.wait_for, lambda s: prompt_ready(s, room), 10, "the prompt again")


def test_hubbub_convert_shows_progress_and_saves_the_result(embedded: HubbubServer, tmp_path: Path) -> None:
    from PIL import Image

    token = embedded.make_user("converter")
    # Enough pages that the job is still running when the command's job socket connects.
    frames = [Image.new("RGB", (1240, 1754), (255, (i * 40) % 255, 0)) for i in range(80)]
    frames[0].save(tmp_path / "deck.pdf", save_all=True, append_images=frames[1:])
    env = {**embedded.env(), "HUBBUB_URL": embedded.http, "HUBBUB_TOKEN": token}
    done = subprocess.run([sys.executable, "-m", "hubbub.cli", "convert", "deck.pdf", "--to", "png",
                           "--room", "files"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "deck.zip"
    progress = [int(line.split("%")[0]) for line in done.stderr.splitlines() if "%" in line]
    assert progress == sorted(progress) and progress[-1] == 100 and len(set(progress)) >= 3, done.stderr
    with zipfile.ZipFile(tmp_path / "deck.zip") as archive:
        assert len(archive.namelist()) == 80
    # A guest (no token) follows its own job through its session cookie.
    guest_env = {k: v for k, v in env.items() if k != "HUBBUB_TOKEN"}
    Image.new("RGB", (50, 40), "blue").save(tmp_path / "small.png")
    guest = subprocess.run([sys.executable, "-m", "hubbub.cli", "convert", "small.png", "--to", "jpeg",
                            "-o", "out.jpg"], cwd=tmp_path, env=guest_env, capture_output=True, text=True,
                           timeout=60)
    assert guest.returncode == 0, guest.stderr
    assert Image.open(tmp_path / "out.jpg").size == (50, 40)
    refused = subprocess.run([sys.executable, "-m", "hubbub.cli", "convert", "small.png", "--to", "xlsx"],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1
    assert "unsupported_conversion" in refused.stderr
