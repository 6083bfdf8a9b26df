"""Real processes for the scale-out suites: several redis-servers (shards), a Redis master with a
replica watched by three Sentinels, and nginx in front of several `hubbub serve` instances.

Every class stops what it started. A missing binary skips the test, saying which and why.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import redis
import websockets

from tests.live.servers import ROOT, RedisServer, free_port, wait_until
from tests.live.wsclient import Socket

NGINX_SITE = ROOT / "deploy" / "nginx" / "hubbub.conf"
MASTER_NAME = "hubbub"


def need(binary: str, why: str) -> str:
    path = shutil.which(binary) or (f"/usr/sbin/{binary}" if os.path.exists(f"/usr/sbin/{binary}") else None)
    if path is None:
        pytest.skip(f"{binary} is not installed ({why})")
    return path


class RedisNode(RedisServer):
    """A private redis-server with extra arguments (``--replicaof`` for a replica)."""

    def __init__(self, workdir: Path, *extra: str) -> None:
        super().__init__(workdir)
        self.extra = list(extra)

    def start(self) -> None:
        assert self.binary is not None
        log = open(self.workdir / f"redis-{self.port}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir), *self.extra],
            stdout=log, stderr=subprocess.STDOUT,
        )
        wait_until(self.ping, 10, what=f"redis-server on {self.port}")

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2, decode_responses=True)

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


class SentinelSet:
    """A master, one replica and three Sentinels (quorum 2) watching them as ``hubbub``. Fast
    timings so a failover takes seconds: down after 1 s, failover timeout 4 s."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        binary = shutil.which("redis-sentinel")
        self.sentinel_argv: list[str] = [binary] if binary else [need(
            "redis-server", "the Sentinel tests run redis-server --sentinel"), "--sentinel"]
        self.nodes: list[RedisNode] = []
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.sentinel_procs: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{MASTER_NAME}/0"

    def start(self) -> None:
        master = RedisNode(self.workdir)
        master.start()
        self.nodes.append(master)
        replica = RedisNode(self.workdir, "--replicaof", "127.0.0.1", str(master.port))
        replica.start()
        self.nodes.append(replica)
        for port in self.sentinel_ports:
            conf = self.workdir / f"sentinel-{port}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndaemonize no\ndir {self.workdir}\n"
                f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master.port} 2\n"
                f"sentinel down-after-milliseconds {MASTER_NAME} 1000\n"
                f"sentinel failover-timeout {MASTER_NAME} 4000\n"
                f"sentinel parallel-syncs {MASTER_NAME} 1\n"
            )
            log = open(self.workdir / f"sentinel-{port}.log", "ab")  # noqa: SIM115
            argv = [self.sentinel_argv[0], str(conf), *self.sentinel_argv[1:]]
            self.sentinel_procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT))

        def settled() -> bool:
            try:
                for port in self.sentinel_ports:
                    s = self.sentinel(port)
                    state = s.sentinel_master(MASTER_NAME)
                    if state["num-other-sentinels"] < 2 or state["num-slaves"] < 1:
                        return False
                    if not any(r.get("master-link-status") == "ok" or r.get("master_link_status") == "ok"
                               for r in s.sentinel_slaves(MASTER_NAME)):
                        return False
                return True
            except redis.RedisError:
                return False

        wait_until(settled, 30, interval=0.2, what="three Sentinels that see each other and the replica")

    def sentinel(self, port: int | None = None) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port or self.sentinel_ports[0], socket_timeout=2,
                           decode_responses=True)

    def master_port(self) -> int:
        """The master's port as the Sentinels' majority names it now."""
        seen: list[int] = []
        for port in self.sentinel_ports:
            try:
                addr = self.sentinel(port).sentinel_get_master_addr_by_name(MASTER_NAME)
            except redis.RedisError:
                continue
            if addr:
                seen.append(int(addr[1]))
        return max(set(seen), key=seen.count) if seen else 0

    def node(self, port: int) -> RedisNode:
        return next(n for n in self.nodes if n.port == port)

    def stop(self) -> None:
        for proc in self.sentinel_procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.sentinel_procs.clear()
        for node in self.nodes:
            node.stop()


class Nginx:
    """nginx in the foreground on a free port, from ``deploy/nginx/hubbub.conf`` (the deployment
    example itself; only its ``listen`` line changes) and an upstream list of instances. Runs
    unprivileged paths only: everything under its own prefix directory."""

    def __init__(self, upstreams: list[str]) -> None:
        self.binary = need("nginx", "Debian package nginx: the reverse-proxy tests need it")
        self.port = free_port()
        self.prefix = Path(tempfile.mkdtemp(prefix="hubbub-nginx-"))
        self.prefix.chmod(0o755)  # a root master's workers run as nobody and use temp dirs here
        self.upstreams = upstreams
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def render(self) -> Path:
        conf = self.prefix / "conf"
        conf.mkdir(exist_ok=True)
        site, count = re.subn(r"(?m)^(\s*)listen\s+80;", rf"\1listen 127.0.0.1:{self.port};",
                              NGINX_SITE.read_text())
        assert count == 1, "deploy/nginx/hubbub.conf should have exactly one `listen 80;`"
        (conf / "hubbub.conf").write_text(site)
        (conf / "hubbub-upstreams.conf").write_text(
            "".join(f"server {u} max_fails=1 fail_timeout=10s;\n" for u in self.upstreams))
        logs = self.prefix / "logs"
        logs.mkdir(exist_ok=True)
        temps = "\n".join(f"    {kind}_temp_path {self.prefix}/tmp-{kind};"
                          for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        main = conf / "nginx.conf"
        main.write_text(
            "daemon off;\nmaster_process on;\nworker_processes 1;\n"
            f"pid {logs}/nginx.pid;\nerror_log {logs}/error.log warn;\n"
            "events { worker_connections 4096; }\n"
            "http {\n"
            f"    access_log {logs}/access.log;\n{temps}\n"
            "    include hubbub.conf;\n"
            "}\n"
        )
        return main

    def check(self) -> subprocess.CompletedProcess[str]:
        main = self.render()
        return subprocess.run([self.binary, "-t", "-p", str(self.prefix), "-c", str(main)],
                              capture_output=True, text=True, timeout=30)

    def start(self) -> None:
        main = self.render()
        log = open(self.prefix / "logs" / "stdout.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen([self.binary, "-p", str(self.prefix), "-c", str(main)],
                                     stdout=log, stderr=subprocess.STDOUT)

        def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"nginx exited with {self.proc.returncode}: {self.error_log()}")
            try:
                import httpx

                return httpx.get(self.http + "/livez", timeout=1).status_code == 200
            except Exception:
                return False

        wait_until(up, 20, interval=0.1, what=f"nginx on {self.port}")

    def error_log(self) -> str:
        path = self.prefix / "logs" / "error.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else "(no log)"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: fast shutdown of master and workers
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        shutil.rmtree(self.prefix, ignore_errors=True)


class Poster:
    """A chat client in one room: it may post (one message in flight), keeps every session's
    socket and every acknowledgement, and reconnects with ?after=<last id it saw>."""

    def __init__(self, tag: str, room: str, gap: float = 0.2) -> None:
        self.tag = tag
        self.room = room
        self.gap = gap  # between posts: under the contract's 10 messages/s per connection
        self.sessions: list[Socket] = []
        self.acked: dict[str, int] = {}  # client_id -> acknowledged id
        self.pending: str | None = None  # sent, never answered (the socket died)
        self.resent_ids: set[int] = set()  # ids answered to re-sent posts
        self.n = 0

    @property
    def sock(self) -> Socket:
        return self.sessions[-1]

    def last_seen(self) -> int:
        return max((i for s in self.sessions for i in s.ids()), default=0)

    async def connect(self, base: str, after: int | None = None) -> None:
        self.sessions.append(await Socket.open(base, self.room, after=after))

    async def reconnect(self, base: str, attempts: int = 20) -> None:
        """Open a new session after the last id seen (retrying while the balancer finds a live
        instance)."""
        for attempt in range(attempts):
            try:
                await self.connect(base, after=self.last_seen())
                return
            except (OSError, websockets.InvalidStatus, websockets.InvalidHandshake, TimeoutError):
                if attempt == attempts - 1:
                    raise
                await asyncio.sleep(0.25)

    async def post_until(self, stop: asyncio.Event) -> None:
        """Post until ``stop`` or until the socket dies (the unanswered id stays ``pending``)."""
        while not stop.is_set():
            resend = self.pending is not None
            cid = self.pending or f"{self.tag}-{self.n}"
            self.pending = cid
            try:
                answer = await self.sock.post_or_error(f"text of {cid}", cid, timeout=10)
            except (AssertionError, websockets.ConnectionClosed):
                if self.sock.closed_code is not None or self.sock.conn.state.name != "OPEN":
                    return
                raise
            if answer["type"] == "error":
                assert answer["code"] == "rate_limited", answer
                await asyncio.sleep(float(answer["retry_after"]))
                continue
            self.acked[cid] = answer["id"]
            if resend:
                self.resent_ids.add(answer["id"])
            if cid == f"{self.tag}-{self.n}":
                self.n += 1
            self.pending = None
            await asyncio.sleep(self.gap)

    def all_ids(self) -> list[int]:
        """Every id received over all sessions, in order; the repeated answer to a re-sent post
        (the contract: the sender gets the stored event again) counted once."""
        out: list[int] = []
        for sock in self.sessions:
            out.extend(sock.ids())
        for rid in self.resent_ids:
            if out.count(rid) == 2:
                second = len(out) - 1 - out[::-1].index(rid)
                del out[second]
        return out


def check_room(stored: list[Json], clients: list[Poster]) -> int:
    """The room's stored history is ids 1..N with each client_id once, every acknowledged post is
    stored under the id it was acknowledged with, and every client received 1..N exactly once.
    Returns N."""
    n = len(stored)
    assert [m["id"] for m in stored] == list(range(1, n + 1)), "history ids are not 1..N"
    cids = [m["client_id"] for m in stored]
    assert len(cids) == len(set(cids)), "a client_id is stored twice"
    by_cid = {m["client_id"]: m["id"] for m in stored}
    for client in clients:
        wrong = {cid: i for cid, i in client.acked.items() if by_cid.get(cid) != i}
        assert not wrong, f"{client.tag}: acknowledged but not stored under that id: {wrong}"
        assert client.all_ids() == list(range(1, n + 1)), (
            f"{client.tag}: received {len(client.all_ids())} ids, not 1..{n} once each")
    return n


def metric(text: str, name: str) -> float:
    """The value of an unlabelled Prometheus sample in ``text`` (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def elapsed_since(t0: float) -> float:
    return round(time.monotonic() - t0, 2)


Json = dict[str, Any]
