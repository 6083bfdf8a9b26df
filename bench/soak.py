"""The soak (``make soak``; not part of ``make test``): many sockets, steady traffic, a long time.

    python -m bench.soak [--sockets 5000] [--minutes 30] [--rooms 100] [--rate 20] [--procs 2]

Two ``hubbub serve`` instances share a private redis-server and a new PostgreSQL database (dropped
at the end); ``--sockets`` guest sockets join ``--rooms`` rooms, a room's sockets alternating
between the instances, held by ``--procs`` client processes (the small asyncio WebSocket client of
bench/loadgen.py). The first two sockets of every room post, together ``--rate`` messages per
second, spread evenly over the run. ``SOAK_MINUTES`` overrides the default duration.

What it checks, and prints as one JSON document (exit status 1 if any check fails):

* memory flat: each server's RSS, sampled every few seconds after a warm-up (a fifth of the run,
  at least a minute), grows by at most 5% from the median of the first fifth of those samples to
  the median of the last fifth;
* no leak of file descriptors or threads: ``/proc/<pid>/fd`` entries and ``Threads:`` of each
  server, same windows, grow by at most 2% (plus 5, for the database and Redis connections a pool
  may open late). Hubbub's /metrics does not count asyncio tasks; sockets are counted by
  ``hubbub_ws_connections``, which must stay at the number of sockets;
* every message delivered: each socket receives every message of its room exactly once, ids
  1..N with no gap and no duplicate; every post is acknowledged and stored once; no socket is
  closed during the run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import signal
import statistics
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import httpx

from bench.cluster import Cluster, wait_until
from bench.loadgen import Sock, handshake_request, proc_rss_kb, raise_nofile

Json = dict[str, Any]
MEMORY_LIMIT = 0.05
COUNT_LIMIT = 0.02
COUNT_SLACK = 5


def log(*parts: object) -> None:
    print("soak:", *parts, file=sys.stderr, flush=True)


# -- a client process ---------------------------------------------------------------------------


class Client:
    """Holds its share of the sockets; checks every message frame as it arrives."""

    def __init__(self, index: int, procs: int, urls: list[str], rooms: int, sockets: int) -> None:
        self.mine = [i for i in range(sockets) if i % procs == index]
        self.urls = urls
        self.rooms = rooms
        self.socks: dict[int, Sock] = {}
        self.room_of: dict[int, int] = {}
        self.last: dict[int, int] = {}  # socket -> last message id received
        self.count: dict[int, int] = {}
        self.gaps = 0
        self.dups = 0
        self.errors: dict[str, int] = {}
        self.closed = 0
        self.by_sock: dict[int, int] = {}  # id(Sock) -> socket index
        self.sent = 0
        self.acked: set[str] = set()
        self.traffic = False

    def on_text(self, sock: Sock, data: bytes, start: int, end: int, now_ns: int) -> None:
        event = json.loads(data[start:end])
        i = self.by_sock[id(sock)]
        kind = event.get("type")
        if kind == "message":
            seq = event["id"]
            last = self.last.get(i, 0)
            if seq <= last:
                self.dups += 1
            elif seq != last + 1:
                self.gaps += 1
            if seq > last:
                self.last[i] = seq
            self.count[i] = self.count.get(i, 0) + 1
            cid = event.get("client_id")
            if cid and cid.startswith(f"s{i}-"):
                self.acked.add(cid)
        elif kind == "error":
            self.errors[event.get("code", "?")] = self.errors.get(event.get("code", "?"), 0) + 1

    def on_close(self, sock: Sock, code: int) -> None:
        self.closed += 1

    async def connect_all(self) -> None:
        loop = asyncio.get_running_loop()
        gate = asyncio.Semaphore(100)

        async def one(i: int) -> None:
            room = i % self.rooms
            url = self.urls[(i // self.rooms) % len(self.urls)]
            host, port, request = handshake_request(url, f"soak{room}", "")
            async with gate:
                for attempt in range(5):
                    _, sock = await loop.create_connection(
                        lambda: Sock(request, self.on_text, self.on_close), host, port)
                    self.by_sock[id(sock)] = i
                    try:
                        await asyncio.wait_for(sock.handshake, 30)
                        break
                    except Exception:
                        if attempt == 4:
                            raise
                        await asyncio.sleep(1 + attempt)
            self.socks[i] = sock
            self.room_of[i] = room

        await asyncio.gather(*(one(i) for i in self.mine))

    async def post_loop(self, i: int, t0: float, period: float, until: float) -> None:
        sock = self.socks[i]
        n = 0
        next_at = t0
        while next_at < until:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            cid = f"s{i}-{n}"
            sock.send_frame(0x1, json.dumps({"message": f"soak {cid}", "client_id": cid}).encode())
            self.sent += 1
            n += 1
            next_at += period

    async def traffic_run(self, start: float, until: float, posters: list[int], rate: float) -> None:
        period = len(posters) / rate  # every poster posts once per period
        mine = [p for p in posters if p in self.socks]
        tasks = []
        for p in mine:
            offset = (posters.index(p) / len(posters)) * period  # spread evenly over the period
            tasks.append(asyncio.ensure_future(self.post_loop(p, start + offset, period, until)))
        await asyncio.gather(*tasks)

    def report(self) -> Json:
        return {
            "sockets": len(self.socks), "last": {str(i): self.last.get(i, 0) for i in self.socks},
            "count": {str(i): self.count.get(i, 0) for i in self.socks},
            "room_of": {str(i): r for i, r in self.room_of.items()},
            "gaps": self.gaps, "dups": self.dups, "errors": self.errors, "closed": self.closed,
            "sent": self.sent, "acked": len(self.acked),
        }


def client_main(conn: Connection, index: int, procs: int, urls: list[str], rooms: int,
                sockets: int) -> None:
    import uvloop

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise_nofile()

    async def run() -> None:
        client = Client(index, procs, urls, rooms, sockets)
        await client.connect_all()
        conn.send(("connected", len(client.socks)))
        command, start, until, posters, rate, drain = await asyncio.to_thread(conn.recv)
        assert command == "traffic"
        await client.traffic_run(start, until, posters, rate)
        await asyncio.sleep(drain)
        conn.send(("report", client.report()))
        await asyncio.to_thread(conn.recv)  # "close"
        for sock in client.socks.values():
            sock.close()
        await asyncio.sleep(0.5)

    uvloop.run(run())


# -- the parent ---------------------------------------------------------------------------------


def sample(pid: int) -> Json:
    threads = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Threads:"):
                    threads = int(line.split()[1])
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return {"alive": False}
    return {"rss_kb": proc_rss_kb(pid), "fds": fds, "threads": threads}


def ws_connections(http: str) -> float:
    text = httpx.get(http + "/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith("hubbub_ws_connections "):
            return float(line.split()[1])
    return -1.0


def growth(values: list[float]) -> tuple[float, float, float]:
    """(median of the first fifth, median of the last fifth, relative growth)."""
    k = max(1, len(values) // 5)
    first, last = statistics.median(values[:k]), statistics.median(values[-k:])
    return first, last, (last - first) / first if first else 0.0


def verdicts(samples: list[Json], names: list[str]) -> tuple[Json, list[str]]:
    out: Json = {}
    failures: list[str] = []
    for name in names:
        series = [s[name] for s in samples if s[name].get("alive", True)]
        if len(series) != len(samples):
            failures.append(f"{name} died during the soak")
            continue
        rss = [float(s["rss_kb"]) for s in series]
        first, last, g = growth(rss)
        out[name] = {"rss_mb_first": round(first / 1024, 1), "rss_mb_last": round(last / 1024, 1),
                     "rss_mb_min": round(min(rss) / 1024, 1), "rss_mb_max": round(max(rss) / 1024, 1),
                     "rss_growth_pct": round(100 * g, 2)}
        if g > MEMORY_LIMIT:
            failures.append(f"{name}: RSS grew {100 * g:.1f}% (limit {100 * MEMORY_LIMIT:.0f}%)")
        for key in ("fds", "threads"):
            values = [float(s[key]) for s in series]
            first, last, g = growth(values)
            out[name][f"{key}_first"] = first
            out[name][f"{key}_last"] = last
            out[name][f"{key}_max"] = max(values)
            if last > first * (1 + COUNT_LIMIT) + COUNT_SLACK:
                failures.append(f"{name}: {key} grew from {first:.0f} to {last:.0f}")
    return out, failures


def run(args: argparse.Namespace) -> int:
    raise_nofile()
    workdir = Path(tempfile.mkdtemp(prefix="hubbub-soak-"))
    cluster = Cluster(workdir)
    pipes: list[Connection] = []
    children: list[Any] = []
    result: Json = {"sockets": args.sockets, "rooms": args.rooms, "rate": args.rate,
                    "minutes": args.minutes, "instances": 2}
    failures: list[str] = []
    try:
        cluster.start_redis()
        cluster.create_database()
        servers = [cluster.start_hubbub(name) for name in ("a", "b")]
        urls = [s.url for s in servers]
        ctx = mp.get_context("fork")
        t_connect = time.monotonic()
        for index in range(args.procs):
            parent_end, child_end = ctx.Pipe()
            proc = ctx.Process(target=client_main, args=(child_end, index, args.procs, urls, args.rooms,
                                                          args.sockets), daemon=True)
            proc.start()
            pipes.append(parent_end)
            children.append(proc)
        held = 0
        for pipe in pipes:
            if not pipe.poll(600):
                raise RuntimeError("the client processes did not connect within 10 minutes")
            _tag, n = pipe.recv()
            held += n
        result["connect_seconds"] = round(time.monotonic() - t_connect, 1)
        log(f"{held} sockets connected in {result['connect_seconds']}s")
        wait_until(lambda: sum(ws_connections(s.http) for s in servers) == args.sockets, 60,
                   "every socket counted by the servers")

        duration = args.minutes * 60
        warmup = max(60.0, duration / 5) if duration >= 120 else duration / 3
        posters = [i for i in range(args.sockets) if i < 2 * args.rooms]
        start = time.monotonic() + 1.0
        until = start + duration
        for pipe in pipes:
            pipe.send(("traffic", start, until, posters, args.rate, args.drain))
        samples: list[Json] = []
        interval = args.interval or (10.0 if duration >= 600 else 5.0)
        next_sample = start + warmup
        counted: list[float] = []
        while time.monotonic() < until:
            now = time.monotonic()
            if now >= next_sample:
                samples.append({s.name: sample(s.pid) for s in servers})
                counted.append(sum(ws_connections(s.http) for s in servers))
                next_sample += interval
                if len(samples) % 12 == 1:
                    log(f"t={now - start:.0f}s", json.dumps(samples[-1]))
            for proc in children:
                if not proc.is_alive():
                    raise RuntimeError("a client process died")
            time.sleep(min(1.0, max(0.05, next_sample - time.monotonic())))
        reports = []
        for pipe in pipes:
            if not pipe.poll(args.drain + 120):
                raise RuntimeError("a client process did not report")
            _tag, report = pipe.recv()
            reports.append(report)

        # Every room's last id, read from the database through the API.
        last_id: dict[int, int] = {}
        with httpx.Client(base_url=servers[0].http, timeout=10) as http:
            for room in range(args.rooms):
                got = http.get(f"/api/rooms/soak{room}/messages", params={"limit": 1}).json()["messages"]
                last_id[room] = got[-1]["id"] if got else 0
        stored = sum(last_id.values())
        sent = sum(r["sent"] for r in reports)
        acked = sum(r["acked"] for r in reports)
        short = wrong_last = 0
        for report in reports:
            for i, room in report["room_of"].items():
                if report["count"][i] != last_id[room]:
                    short += 1
                if report["last"][i] != last_id[room]:
                    wrong_last += 1
        gaps = sum(r["gaps"] for r in reports)
        dups = sum(r["dups"] for r in reports)
        closed = sum(r["closed"] for r in reports)
        errors: dict[str, int] = {}
        for report in reports:
            for code, n in report["errors"].items():
                errors[code] = errors.get(code, 0) + n
        deliveries = sum(sum(r["count"].values()) for r in reports)
        result["delivery"] = {"posts_sent": sent, "posts_acked": acked, "messages_stored": stored,
                              "frames_checked": deliveries, "sockets_short": short,
                              "sockets_wrong_last_id": wrong_last, "gaps": gaps, "duplicates": dups,
                              "sockets_closed": closed, "errors": errors}
        if not (sent == acked == stored):
            failures.append(f"posts sent {sent}, acknowledged {acked}, stored {stored}")
        if short or wrong_last or gaps or dups:
            failures.append(f"delivery: {short} sockets short, {wrong_last} with a wrong last id, "
                            f"{gaps} gaps, {dups} duplicates")
        if closed:
            failures.append(f"{closed} sockets closed during the soak")
        if errors:
            failures.append(f"error events: {errors}")
        if any(c != args.sockets for c in counted):
            failures.append(f"hubbub_ws_connections strayed from {args.sockets}: {sorted(set(counted))}")
        result["samples"] = len(samples)
        result["sample_interval_s"] = interval
        result["warmup_s"] = round(warmup)
        if len(samples) < 5:
            failures.append(f"only {len(samples)} samples: run longer")
        else:
            servers_out, server_failures = verdicts(samples, [s.name for s in servers])
            result["servers"] = servers_out
            failures.extend(server_failures)
        result["series"] = samples
        for pipe in pipes:
            pipe.send(("close",))
    except Exception as exc:
        failures.append(f"the soak could not finish: {exc!r}")
    finally:
        for proc in children:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
        cluster.close()
    result["failures"] = failures
    result["ok"] = not failures
    print(json.dumps(result, indent=1))
    return 0 if not failures else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n")[0])
    parser.add_argument("--sockets", type=int, default=5000)
    parser.add_argument("--minutes", type=float, default=float(os.environ.get("SOAK_MINUTES") or 30))
    parser.add_argument("--rooms", type=int, default=100)
    parser.add_argument("--rate", type=float, default=20.0, help="messages per second, all rooms")
    parser.add_argument("--procs", type=int, default=2, help="client processes")
    parser.add_argument("--interval", type=float, default=0.0, help="seconds between samples")
    parser.add_argument("--drain", type=float, default=10.0, help="seconds to wait after the last post")
    args = parser.parse_args(argv)
    if args.sockets < 2 * args.rooms:
        parser.error("--sockets must be at least twice --rooms")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
