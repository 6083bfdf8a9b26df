"""The load generator: a separate process that holds the sockets, posts, and measures.

    python -m bench.loadgen PLAN.json    # prints one JSON document on stdout

A plan names the servers' base URLs, the rooms, the process ids to watch and a list of phases
(``connect``, ``measure``, ``step``, ``ladder``, ``catchup``). The sockets are spread over
``procs`` worker processes (each asyncio + uvloop; a process may hold fewer than RLIMIT_NOFILE
sockets); the parent only coordinates them through pipes and reads ``/proc``.

Every design is driven the same way:

* a socket is ``<url>/ws/chat/<room>/``; socket ``i`` is in room ``i % rooms`` and on URL
  ``(i // rooms) % len(urls)``, so a room's sockets alternate between the instances;
* a post is the frame ``{"message": "B<step>.<seq>.<monotonic ns>.xxx…"}`` (about 100 characters);
  message ``m`` of a step goes to room ``m % rooms`` from one of that room's first sockets (at
  least two per room, so that posts come in on both instances), at most ``MAX_PER_SENDER``
  posts/s per socket (Hubbub's per-socket limit is 12/s, bursts of 24);
* every socket of the room, the sender included (Hubbub's acknowledgement is its own
  MessageEvent), should receive a frame whose ``message`` is that payload. The receive latency is
  the receiver's ``time.monotonic_ns()`` (one clock for every process of the machine) minus the
  one in the payload, kept in a 0.1 ms histogram;
* delivery = frames received during the step and its drain / (posts sent x sockets in the room).

The WebSocket client is a small asyncio Protocol (handshake, unmasked server frames, pong,
close; client frames carry a zero mask key) so that the generator spends its CPU on the
measurement, not on a client library. Each step reports the generator's own CPU (getrusage of
every worker) and the CPU and RSS of the watched server processes (``/proc/<pid>``), with the
whole machine's CPU from ``/proc/stat``: a saturated generator or machine is visible next to
every number.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
import multiprocessing as mp
import os
import re
import resource
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, cast
from urllib.parse import urlsplit

HIST_RES_US = 100  # latency histogram resolution
HIST_BUCKETS = 100_001  # 0 .. 10 s; later frames land in the last bucket
MAX_PER_SENDER = 10.0  # posts per second per sending socket
PAD = b"x" * 64
PAYLOAD_RE = re.compile(rb'"message": ?"B(\d+)\.\d+\.(\d+)\.')
ID_RE = re.compile(rb'"id":(\d+)')
ERROR_MARK = b'"type":"error"'
CLK_TCK = os.sysconf("SC_CLK_TCK")

Json = dict[str, Any]


def log(*parts: object) -> None:
    print("loadgen:", *parts, file=sys.stderr, flush=True)


# -- /proc ------------------------------------------------------------------------------------------


def proc_cpu_seconds(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_rss_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def system_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return float(sum(values) - idle), float(sum(values))


class Snapshot:
    """CPU counters of the watched processes and the machine, to turn into rates later."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.wall = time.monotonic()
        self.cpu = {name: proc_cpu_seconds(pid) for name, pid in pids.items()}
        self.sys = system_cpu()

    def since(self, before: Snapshot, pids: dict[str, int]) -> Json:
        wall = max(1e-9, self.wall - before.wall)
        servers: Json = {}
        for name, pid in pids.items():
            a, b = before.cpu.get(name), self.cpu.get(name)
            servers[name] = {
                "cpu_pct": None if a is None or b is None else round(100 * (b - a) / wall, 1),
                "rss_kb": proc_rss_kb(pid),
            }
        busy = self.sys[0] - before.sys[0]
        total = self.sys[1] - before.sys[1]
        return {"servers": servers,
                "machine_cpu_pct": round(100 * busy / total, 1) if total else None,
                "machine_cores": os.cpu_count()}


# -- the WebSocket client ---------------------------------------------------------------------------


class HandshakeError(Exception):
    pass


class Sock(asyncio.Protocol):
    """One client socket. Frames from the server are parsed in place; text frames go to
    ``on_text(sock, data, start, end, now_ns)``."""

    def __init__(self, request: bytes, on_text: Callable[[Sock, bytes, int, int, int], None],
                 on_close: Callable[[Sock, int], None]) -> None:
        self.request = request
        self.on_text = on_text
        self.on_close = on_close
        self.transport: asyncio.Transport | None = None
        self.buf = b""
        self.open = False
        self.closed = False
        self.close_code: int | None = None
        self.handshake: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.handshake.done():
            self.handshake.set_exception(HandshakeError(f"connection lost: {exc!r}"))
        if self.open and not self.closed:
            self.closed = True
            self.on_close(self, 1006)

    def data_received(self, data: bytes) -> None:
        if not self.open:
            self.buf += data
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head, rest = self.buf[:end], self.buf[end + 4:]
            self.buf = b""
            if not head.startswith(b"HTTP/1.1 101"):
                if not self.handshake.done():
                    status = head.split(b"\r\n", 1)[0].decode("latin-1")
                    self.handshake.set_exception(HandshakeError(status))
                assert self.transport is not None
                self.transport.close()
                return
            self.open = True
            if not self.handshake.done():
                self.handshake.set_result(None)
            if not rest:
                return
            data = rest
        self._frames(data)

    def _frames(self, data: bytes) -> None:
        if self.buf:
            data = self.buf + data
        now = time.monotonic_ns()
        n = len(data)
        pos = 0
        while n - pos >= 2:
            b1 = data[pos + 1]
            length = b1 & 0x7F
            hdr = 2
            if length == 126:
                if n - pos < 4:
                    break
                length = int.from_bytes(data[pos + 2:pos + 4], "big")
                hdr = 4
            elif length == 127:
                if n - pos < 10:
                    break
                length = int.from_bytes(data[pos + 2:pos + 10], "big")
                hdr = 10
            if b1 & 0x80:
                hdr += 4  # a masked server frame: not expected, skipped as unreadable
            end = pos + hdr + length
            if end > n:
                break
            opcode = data[pos] & 0x0F
            if opcode == 1 or opcode == 0:
                self.on_text(self, data, pos + hdr, end, now)
            elif opcode == 9:
                self.send_frame(0xA, data[pos + hdr:end])
            elif opcode == 8:
                code = int.from_bytes(data[pos + hdr:pos + hdr + 2], "big") if length >= 2 else 1005
                self._closed_by_server(code)
                return
            pos = end
        self.buf = data[pos:] if pos < n else b""

    def _closed_by_server(self, code: int) -> None:
        self.close_code = code
        if not self.closed:
            self.closed = True
            self.on_close(self, code)
        with contextlib.suppress(Exception):
            self.send_frame(0x8, code.to_bytes(2, "big"))
        if self.transport is not None:
            self.transport.close()

    def send_frame(self, opcode: int, payload: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        n = len(payload)
        if n < 126:
            header = bytes((0x80 | opcode, 0x80 | n))
        elif n < 65536:
            header = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
        else:
            header = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
        # A zero mask key: XOR with it leaves the payload as is, so nothing to compute.
        self.transport.write(header + b"\0\0\0\0" + payload)

    def close(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.closed = True
        with contextlib.suppress(Exception):
            self.send_frame(0x8, (1000).to_bytes(2, "big"))


def handshake_request(url: str, room: str, query: str) -> tuple[str, int, bytes]:
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or 80
    key = base64.b64encode(os.urandom(16)).decode()
    path = f"/ws/chat/{room}/" + (f"?{query}" if query else "")
    request = (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
    return host, port, request.encode()


# -- a worker process -------------------------------------------------------------------------------


class Worker:
    def __init__(self, conn: Connection, index: int, procs: int, rooms: list[str]) -> None:
        self.conn = conn
        self.index = index
        self.procs = procs
        self.rooms = rooms
        self.socks: dict[int, Sock] = {}  # global socket index -> socket
        self.connected_upto = 0
        self.closed = 0
        self.close_codes: Counter[int] = Counter()
        self.step = -1
        self.cpu_at_start = 0.0
        self.reset_step()
        self.tasks: set[asyncio.Task[Any]] = set()
        self.done = asyncio.Event()

    def reset_step(self) -> None:
        self.hist = [0] * HIST_BUCKETS
        self.received = 0
        self.max_us = 0
        self.errors = 0
        self.stale = 0
        self.sent = 0
        self.expected = 0
        self.unsendable = 0
        self.lags: list[int] = []
        self.sending_done = True
        self.closed_at_start = self.closed

    # -- receiving

    def on_text(self, sock: Sock, data: bytes, start: int, end: int, now: int) -> None:
        m = PAYLOAD_RE.search(data, start, end)
        if m is None:
            if data.find(ERROR_MARK, start, end) >= 0:
                self.errors += 1
            return
        if int(m.group(1)) != self.step:
            self.stale += 1
            return
        lat_us = (now - int(m.group(2))) // 1000
        self.received += 1
        bucket = lat_us // HIST_RES_US
        self.hist[bucket if bucket < HIST_BUCKETS else HIST_BUCKETS - 1] += 1
        if lat_us > self.max_us:
            self.max_us = lat_us

    def on_close(self, sock: Sock, code: int) -> None:
        self.closed += 1
        self.close_codes[code] += 1

    # -- commands

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_reader(self.conn.fileno(), self._command)
        await self.done.wait()
        loop.remove_reader(self.conn.fileno())

    def _command(self) -> None:
        while self.conn.poll():
            try:
                name, arg = self.conn.recv()
            except EOFError:
                self.done.set()
                return
            handler = getattr(self, f"cmd_{name}")
            task = asyncio.ensure_future(handler(arg))
            self.tasks.add(task)
            task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            self.conn.send(("error", repr(exc)))

    def reply(self, name: str, value: Any) -> None:
        self.conn.send((name, value))

    async def cmd_connect(self, arg: Json) -> None:
        start, upto, urls = arg["start"], arg["upto"], arg["urls"]
        query = arg.get("query", "")
        limit = asyncio.Semaphore(arg.get("concurrency", 64))
        errors: Counter[str] = Counter()
        n_rooms = len(self.rooms)
        t0 = time.monotonic()

        async def one(i: int) -> None:
            room = self.rooms[i % n_rooms]
            url = urls[(i // n_rooms) % len(urls)]
            async with limit:
                sock = await self.open_socket(url, room, query, errors)
            if sock is not None:
                self.socks[i] = sock

        mine = [i for i in range(start, upto) if i % self.procs == self.index]
        await asyncio.gather(*(one(i) for i in mine))
        self.connected_upto = upto
        per_room = Counter(i % n_rooms for i in mine if i in self.socks)
        self.reply("connect", {"ok": sum(1 for i in mine if i in self.socks), "failed":
                               sum(1 for i in mine if i not in self.socks),
                               "seconds": time.monotonic() - t0, "errors": dict(errors),
                               "per_room": dict(per_room)})

    async def open_socket(self, url: str, room: str, query: str, errors: Counter[str],
                          on_text: Callable[[Sock, bytes, int, int, int], None] | None = None,
                          ) -> Sock | None:
        loop = asyncio.get_running_loop()
        for attempt in range(4):
            host, port, request = handshake_request(url, room, query)
            transport: asyncio.BaseTransport | None = None

            def factory(request: bytes = request) -> Sock:
                return Sock(request, on_text or self.on_text, self.on_close)

            try:
                transport, sock = await asyncio.wait_for(loop.create_connection(factory, host, port), 15)
                await asyncio.wait_for(sock.handshake, 30)
                return sock
            except (OSError, TimeoutError, HandshakeError) as exc:
                errors[f"{type(exc).__name__}: {str(exc)[:80]}"] += 1
                if transport is not None:
                    transport.close()
                await asyncio.sleep(0.2 * (attempt + 1))
        return None

    async def cmd_step(self, arg: Json) -> None:
        """Reset the counters and post this worker's share of the step's messages."""
        self.reset_step()
        self.step = arg["step"]
        self.sending_done = False
        ru = resource.getrusage(resource.RUSAGE_SELF)
        self.cpu_at_start = ru.ru_utime + ru.ru_stime
        self.reply("step", None)
        try:
            await self.send_messages(arg)
        finally:
            self.sending_done = True

    async def send_messages(self, arg: Json) -> None:
        rate: float = arg["rate"]
        t0: int = arg["t0_ns"]
        total = round(rate * arg["seconds"])
        sizes: list[int] = arg["room_sizes"]
        n_rooms = len(self.rooms)
        active = [r for r in range(n_rooms) if sizes[r] > 0]
        if not active or total == 0:
            return
        per_room = rate / len(active)
        senders = max(2, math.ceil(per_room / MAX_PER_SENDER))
        plan: list[tuple[int, int, Sock | None]] = []
        for m in range(total):
            room = active[m % len(active)]
            slot = (m // len(active) + room) % min(senders, sizes[room])
            sender = room + slot * n_rooms  # the slot-th socket of the room
            if sender % self.procs != self.index:
                continue
            plan.append((m, room, self.socks.get(sender)))
        interval_ns = 1e9 / rate
        step = self.step
        i = 0
        while i < len(plan):
            now = time.monotonic_ns()
            while i < len(plan):
                m, room, sock = plan[i]
                due = t0 + int(m * interval_ns)
                if due > now:
                    break
                i += 1
                if sock is None or sock.closed:
                    self.unsendable += 1
                    continue
                t = time.monotonic_ns()
                self.lags.append((t - due) // 1000)
                sock.send_frame(1, b'{"message":"B%d.%d.%d.%s"}' % (step, m, t, PAD))
                self.sent += 1
                self.expected += sizes[room]
            if i < len(plan):
                wait = (t0 + int(plan[i][0] * interval_ns) - time.monotonic_ns()) / 1e9
                await asyncio.sleep(min(max(wait, 0), 0.005))

    async def cmd_poll(self, arg: Any) -> None:
        self.reply("poll", {"received": self.received, "expected": self.expected,
                            "sending_done": self.sending_done})

    async def cmd_collect(self, arg: Any) -> None:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        lags = sorted(self.lags)
        self.reply("collect", {
            "received": self.received, "expected": self.expected, "sent": self.sent,
            "unsendable": self.unsendable, "errors": self.errors, "stale": self.stale,
            "max_us": self.max_us, "hist": {i: c for i, c in enumerate(self.hist) if c},
            "lag_p99_us": lags[int(0.99 * (len(lags) - 1))] if lags else 0,
            "lag_max_us": lags[-1] if lags else 0,
            "closed": self.closed - self.closed_at_start, "close_codes": dict(self.close_codes),
            "cpu_s": ru.ru_utime + ru.ru_stime - self.cpu_at_start,
            "maxrss_kb": ru.ru_maxrss,
        })
        self.step = -1

    async def cmd_catchup(self, arg: Json) -> None:
        """Connect with ``?after=N`` and time until ``expect`` messages have arrived, checking
        that their ids run on without a gap."""
        expect: int = arg["expect"]
        state = {"count": 0, "last": arg.get("after", 0), "in_order": True, "first": 0.0}
        finished = asyncio.get_running_loop().create_future()

        def on_text(sock: Sock, data: bytes, start: int, end: int, now: int) -> None:
            m = ID_RE.search(data, start, end)
            if m is None:
                return
            seq = int(m.group(1))
            if seq != state["last"] + 1:
                state["in_order"] = False
            state["last"] = seq
            state["count"] += 1
            if state["count"] == 1:
                state["first"] = time.monotonic()
            if state["count"] >= expect and not finished.done():
                finished.set_result(time.monotonic())

        errors: Counter[str] = Counter()
        t0 = time.monotonic()
        sock = await self.open_socket(arg["url"], arg["room"], arg.get("query", ""), errors, on_text)
        t_open = time.monotonic()
        result: Json = {"errors": dict(errors)}
        if sock is not None:
            try:
                t_end = await asyncio.wait_for(finished, arg.get("timeout", 30))
                result["seconds"] = t_end - t0
            except TimeoutError:
                result["seconds"] = None
            sock.close()
        result.update({"received": state["count"], "in_order": bool(state["in_order"]),
                       "last_id": state["last"], "handshake_s": t_open - t0,
                       "first_message_s": (state["first"] - t0) if state["first"] else None})
        self.reply("catchup", result)

    async def cmd_close(self, arg: Any) -> None:
        for sock in self.socks.values():
            sock.close()
        await asyncio.sleep(0.5)
        for sock in self.socks.values():
            if sock.transport is not None:
                sock.transport.close()
        self.socks.clear()
        self.reply("close", None)

    async def cmd_exit(self, arg: Any) -> None:
        self.done.set()


def raise_nofile() -> int:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def worker_main(conn: Connection, index: int, procs: int, rooms: list[str]) -> None:
    import uvloop

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    raise_nofile()
    uvloop.run(Worker(conn, index, procs, rooms).run())


# -- the coordinating parent ------------------------------------------------------------------------


class Deadline(Exception):
    pass


class Parent:
    def __init__(self, plan: Json) -> None:
        self.plan = plan
        self.rooms: list[str] = plan["rooms"]
        self.pids: dict[str, int] = plan.get("pids", {})
        self.procs: int = plan.get("procs", 1)
        self.conns: list[Connection] = []
        self.workers: list[mp.process.BaseProcess] = []
        self.room_sizes = [0] * len(self.rooms)
        self.total = 0
        self.step_no = 0
        self.partial: Json | None = None  # the running phase's results so far (kept on a deadline)

    def start(self) -> None:
        ctx = mp.get_context("fork")
        for k in range(self.procs):
            parent_end, child_end = ctx.Pipe()
            proc = ctx.Process(target=worker_main, args=(child_end, k, self.procs, self.rooms), daemon=True)
            proc.start()
            self.conns.append(parent_end)
            self.workers.append(proc)

    def stop(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(Exception):
                conn.send(("close", None))
        for conn in self.conns:
            with contextlib.suppress(Exception):
                if conn.poll(5):
                    conn.recv()
                conn.send(("exit", None))
        for proc in self.workers:
            proc.join(3)
            if proc.is_alive():
                proc.kill()

    def ask(self, name: str, arg: Any, timeout: float, workers: list[int] | None = None) -> list[Any]:
        targets = list(range(self.procs)) if workers is None else workers
        for k in targets:
            self.conns[k].send((name, arg))
        return [self.wait(k, name, timeout) for k in targets]

    def wait(self, k: int, name: str, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self.conns[k].poll(left):
                raise TimeoutError(f"worker {k} did not answer {name} within {timeout}s")
            got, value = self.conns[k].recv()
            if got == "error":
                raise RuntimeError(f"worker {k}: {value}")
            if got == name:
                return value

    # -- phases

    def phase_connect(self, ph: Json) -> Json:
        upto = ph["sockets"]
        urls = ph.get("urls", self.plan["urls"])
        t0 = time.monotonic()
        results = self.ask("connect", {"start": self.total, "upto": upto, "urls": urls,
                                       "query": ph.get("query", ""),
                                       "concurrency": ph.get("concurrency", 64)}, ph.get("timeout", 600))
        errors: Counter[str] = Counter()
        for res in results:
            for room, n in res["per_room"].items():
                self.room_sizes[int(room)] += n
            errors.update(res["errors"])
        seconds = time.monotonic() - t0
        ok = sum(r["ok"] for r in results)
        new = upto - self.total
        self.total = upto
        return {"sockets_target": upto, "new": new, "connected_new": ok,
                "failed": sum(r["failed"] for r in results), "seconds": round(seconds, 2),
                "connects_per_s": round(ok / seconds, 1) if seconds else None,
                "connected_total": sum(self.room_sizes), "errors": dict(errors)}

    def phase_measure(self, ph: Json) -> Json:
        time.sleep(ph.get("settle", 0))
        return {"sockets": sum(self.room_sizes),
                "rss_kb": {name: proc_rss_kb(pid) for name, pid in self.pids.items()}}

    def run_step(self, rate: float, seconds: float, drain: float) -> Json:
        self.step_no += 1
        t0_ns = time.monotonic_ns() + 300_000_000
        spec = {"step": self.step_no, "rate": rate, "seconds": seconds, "t0_ns": t0_ns,
                "room_sizes": self.room_sizes}
        before = Snapshot(self.pids)
        self.ask("step", spec, 10)
        time.sleep(max(0.0, (t0_ns - time.monotonic_ns()) / 1e9 + seconds))
        drain_end = time.monotonic() + drain
        drained = False
        while time.monotonic() < drain_end:
            polls = self.ask("poll", None, 10)
            if all(p["sending_done"] for p in polls) and \
                    sum(p["received"] for p in polls) >= sum(p["expected"] for p in polls):
                drained = True
                break
            time.sleep(0.1)
        after = Snapshot(self.pids)
        parts = self.ask("collect", None, 30)
        hist: Counter[int] = Counter()
        for p in parts:
            hist.update({int(k): v for k, v in p["hist"].items()})
        received = sum(p["received"] for p in parts)
        expected = sum(p["expected"] for p in parts)
        sent = sum(p["sent"] for p in parts)
        wall = after.wall - before.wall
        planned = round(rate * seconds)
        window = planned / rate if planned else seconds  # the send window the rates are over
        cpu = [p["cpu_s"] for p in parts]
        result: Json = {
            "rate": rate, "seconds": seconds, "sent": sent, "posts_per_s": round(sent / window, 2),
            "unsendable": sum(p["unsendable"] for p in parts),
            "expected": expected, "delivered": received,
            "delivery": round(received / expected, 5) if expected else None,
            "deliveries_per_s": round(received / window, 1),
            "offered_deliveries_per_s": round(expected / window, 1),
            **percentiles(hist, received, max(p["max_us"] for p in parts)),
            "drained": drained, "errors": sum(p["errors"] for p in parts),
            "stale": sum(p["stale"] for p in parts),
            "closed": sum(p["closed"] for p in parts),
            "send_lag_p99_ms": round(max(p["lag_p99_us"] for p in parts) / 1000, 2),
            "send_lag_max_ms": round(max(p["lag_max_us"] for p in parts) / 1000, 2),
            "gen_cpu_pct": round(100 * sum(cpu) / wall, 1),
            "gen_cpu_max_proc_pct": round(100 * max(cpu) / wall, 1),
            "gen_procs": self.procs,
            **after.since(before, self.pids),
        }
        log(f"step {self.step_no}: {rate:g}/s → delivery {result['delivery']}, p99 {result['p99_ms']} ms, "
            f"gen cpu {result['gen_cpu_pct']}%, machine {result['machine_cpu_pct']}%")
        return result

    def wait_quiet(self, pct: float, max_s: float) -> float:
        """Until every watched server (not Redis) uses under ``pct`` % of a core over 0.5 s: the
        previous step's backlog or a burst of connects must not count against the next step."""
        t0 = time.monotonic()
        servers = {k: v for k, v in self.pids.items() if k != "redis"}
        while time.monotonic() - t0 < max_s:
            before = Snapshot(servers)
            time.sleep(0.5)
            usage = Snapshot(servers).since(before, servers)["servers"]
            if max((u["cpu_pct"] or 0.0 for u in usage.values()), default=0.0) < pct:
                break
        return round(time.monotonic() - t0, 2)

    def phase_quiet(self, ph: Json) -> Json:
        return {"waited_s": self.wait_quiet(ph.get("pct", 15.0), ph.get("max_s", 30.0))}

    def phase_step(self, ph: Json) -> Json:
        waited = self.wait_quiet(ph.get("quiet_pct", 15.0), ph.get("quiet_max_s", 30.0))
        return {**self.run_step(ph["rate"], ph["seconds"], ph.get("drain", 3)), "quiet_wait_s": waited}

    def phase_ladder(self, ph: Json) -> Json:
        """Rising rates until a step fails (p99 over the limit, delivery under the minimum, or a
        socket closed by the server); then ``refine`` bisection steps between the last pass and
        the first failure. A ladder that never failed reports ``ceiling_reached: false``: its best
        step is a lower bound. Once a socket has been closed, the room is smaller than planned and
        no further step is run."""
        p99_limit = ph.get("p99_ms", 200.0)
        min_delivery = ph.get("min_delivery", 1.0)
        steps: list[Json] = []
        deadline = time.monotonic() + ph.get("budget_s", 1e9)
        result: Json = {"p99_limit_ms": p99_limit, "min_delivery": min_delivery, "steps": steps,
                        "best": None, "first_failure_rate": None}
        self.partial = result

        def run(rate: float) -> Json:
            waited = self.wait_quiet(ph.get("quiet_pct", 15.0), ph.get("quiet_max_s", 20.0))
            # A low rate runs longer, so that a step's percentiles rest on enough posts.
            seconds = max(ph["seconds"], ph.get("min_posts", 0) / rate)
            step = self.run_step(rate, seconds, ph.get("drain", 3))
            step["quiet_wait_s"] = waited
            step["pass"] = passes(step)
            steps.append(step)
            passing = [s for s in steps if s["pass"]]
            result["best"] = max(passing, key=lambda s: s["deliveries_per_s"]) if passing else None
            return step

        def passes(step: Json) -> bool:
            return (step["delivery"] is not None and step["delivery"] >= min_delivery
                    and step["p99_ms"] is not None and step["p99_ms"] <= p99_limit
                    and step["closed"] == 0)

        best: float | None = None
        failed: float | None = None
        for rate in ph["rates"]:
            if time.monotonic() > deadline:
                result["budget_hit"] = True
                break
            if not run(rate)["pass"]:
                failed = result["first_failure_rate"] = rate
                break
            best = rate
        result["ceiling_reached"] = failed is not None
        for _ in range(ph.get("refine", 0)):
            if best is None or failed is None or failed / best < 1.15 or time.monotonic() > deadline:
                break
            if any(s["closed"] for s in steps):
                result["stopped_after_closes"] = True
                break
            rate = round(math.sqrt(best * failed), 1)
            step = run(rate)
            step["refine"] = True
            if step["pass"]:
                best = rate
            else:
                failed = rate
        self.partial = None
        return result

    def phase_catchup(self, ph: Json) -> Json:
        result: Json = self.ask("catchup", ph, ph.get("timeout", 30) + 60, workers=[0])[0]
        return result

    def run(self) -> Json:
        out: Json = {"plan": {k: v for k, v in self.plan.items() if k != "phases"}, "phases": []}
        out["plan"]["rooms"] = len(self.rooms)
        out["nofile"] = raise_nofile()
        self.start()
        try:
            for ph in self.plan["phases"]:
                kind = ph["kind"]
                t0 = time.monotonic()
                try:
                    result = getattr(self, f"phase_{kind}")(ph)
                except (TimeoutError, RuntimeError) as exc:
                    result = {"error": repr(exc)}
                    log(f"phase {kind} failed: {exc!r}")
                result = {"kind": kind, "label": ph.get("label", kind), **result,
                          "phase_seconds": round(time.monotonic() - t0, 2)}
                out["phases"].append(result)
                if "error" in result and ph.get("fatal", True):
                    break
        except Deadline:
            out["deadline_hit"] = True
            log("deadline hit: stopping")
            if self.partial is not None:
                out["phases"].append({"kind": "ladder", "label": "ladder (cut short)", **self.partial,
                                      "deadline_hit": True})
        finally:
            self.stop()
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        out["gen_cpu_total_s"] = round(ru.ru_utime + ru.ru_stime, 2)
        return out


def percentiles(hist: Counter[int], total: int, max_us: int) -> Json:
    if total == 0:
        return {"p50_ms": None, "p90_ms": None, "p99_ms": None, "max_ms": None}
    keys = sorted(hist)
    out: Json = {}
    for name, q in (("p50_ms", 0.50), ("p90_ms", 0.90), ("p99_ms", 0.99)):
        target = math.ceil(q * total)
        cum = 0
        for k in keys:
            cum += hist[k]
            if cum >= target:
                out[name] = round((k + 0.5) * HIST_RES_US / 1000, 2)
                break
    out["max_ms"] = round(max_us / 1000, 2)
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m bench.loadgen PLAN.json", file=sys.stderr)
        return 2
    with open(args[0]) as f:
        plan = json.load(f)

    def on_alarm(signum: int, frame: object) -> None:
        raise Deadline()

    signal.signal(signal.SIGALRM, on_alarm)
    signal.signal(signal.SIGTERM, lambda signum, frame: on_alarm(signum, frame))
    signal.alarm(int(plan.get("deadline_s", 600)))
    result = Parent(plan).run()
    signal.alarm(0)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
