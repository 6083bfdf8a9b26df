"""The processes a benchmark run starts, and the guarantee that it stops every one of them.

Every child is started in its own session (process group) and stopped by signalling the whole
group: SIGTERM, then SIGKILL after a grace period. Nothing is reused from the machine except the
PostgreSQL server, in which the run creates its own database and drops it at the end.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

ROOT = Path(__file__).resolve().parents[1]
PG_ADMIN = os.environ.get("BENCH_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")


def tcp_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class Proc:
    def __init__(self, name: str, popen: subprocess.Popen[bytes], log: Path, port: int | None) -> None:
        self.name = name
        self.popen = popen
        self.log = log
        self.port = port

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


class Cluster:
    """Owns every process of the run; :meth:`close` stops them all, whatever happened."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[Proc] = []
        self.database: str | None = None
        self.database_url: str | None = None
        self.redis: Proc | None = None
        self.data_dir = workdir / "hubbub-data"
        self.data_dir.mkdir(parents=True, exist_ok=True)

    # -- starting

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None,
              cwd: Path | None = None, port: int | None = None) -> Proc:
        log = self.workdir / f"{name}.log"
        full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        with open(log, "ab") as out:
            popen = subprocess.Popen(argv, env=full_env, cwd=cwd or ROOT, stdout=out,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        proc = Proc(name, popen, log, port)
        self.procs.append(proc)
        return proc

    def start_redis(self) -> Proc:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        port = free_port()
        self.redis = self.spawn("redis", [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                          "--appendonly", "no", "--dir", str(self.workdir),
                                          "--maxclients", "10000"], port=port)
        wait_until(lambda: tcp_open(port), 10, "redis-server")
        return self.redis

    @property
    def redis_url(self) -> str:
        assert self.redis is not None
        return f"redis://127.0.0.1:{self.redis.port}/0"

    def create_database(self) -> str:
        import psycopg

        name = f"hubbub_bench_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(PG_ADMIN, connect_timeout=5, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self.database = name
        parts = urlsplit(PG_ADMIN)
        self.database_url = urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, ""))
        return self.database_url

    def drop_database(self) -> None:
        if self.database is None:
            return
        import psycopg

        with psycopg.connect(PG_ADMIN, connect_timeout=5, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
        self.database = None

    def hubbub_env(self) -> dict[str, str]:
        assert self.database_url is not None
        env = {k: v for k, v in os.environ.items() if not k.startswith("HUBBUB_")}
        env.update({"DATABASE_URL": self.database_url, "REDIS_URL": self.redis_url,
                    "HUBBUB_DATA_DIR": str(self.data_dir), "HUBBUB_SECRET_KEY": "bench-" + "k" * 40})
        return env

    def start_hubbub(self, name: str, wait: bool = True) -> Proc:
        port = free_port()
        proc = self.spawn(name, [sys.executable, "-m", "hubbub.cli", "serve", "--port", str(port)],
                          env=self.hubbub_env(), cwd=self.data_dir, port=port)
        if wait:
            self.wait_hubbub(proc)
        return proc

    def wait_hubbub(self, proc: Proc, timeout: float = 90) -> None:
        def up() -> bool:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited:\n{proc.log_tail()}")
            try:
                return httpx.get(proc.http + "/livez", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, timeout, proc.name)

    def start_reference(self, design: str, name: str) -> Proc:
        port = free_port()
        proc = self.spawn(name, [sys.executable, "-m", f"bench.reference.{design}", "--port", str(port),
                                 "--redis", self.redis_url], port=port)
        return proc

    def wait_tcp(self, proc: Proc, timeout: float = 30) -> None:
        assert proc.port is not None
        port = proc.port

        def up() -> bool:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited:\n{proc.log_tail()}")
            return tcp_open(port)

        wait_until(up, timeout, proc.name)

    def start_worker(self, name: str) -> Proc:
        proc = self.spawn(name, [sys.executable, "-m", "hubbub.cli", "worker"], env=self.hubbub_env(),
                          cwd=self.data_dir)
        wait_until(lambda: " ready" in proc.log.read_text(errors="replace") or not proc.alive(), 60, name)
        if not proc.alive():
            raise RuntimeError(f"{name} exited:\n{proc.log_tail()}")
        return proc

    def hubbub_cli(self, *args: str, stdin: str | None = None) -> str:
        done = subprocess.run([sys.executable, "-m", "hubbub.cli", *args], env=self.hubbub_env(),
                              cwd=self.data_dir, input=stdin, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"hubbub {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout.strip()

    # -- stopping

    def stop(self, proc: Proc, grace: float = 10) -> None:
        stop_group(proc.popen, grace)
        with contextlib.suppress(ValueError):
            self.procs.remove(proc)

    def close(self) -> None:
        """Stop every process (servers first, Redis last), then drop the database."""
        errors: list[str] = []
        for proc in sorted(self.procs, key=lambda p: p is self.redis):
            try:
                stop_group(proc.popen, 10)
            except Exception as exc:
                errors.append(f"{proc.name}: {exc!r}")
        self.procs.clear()
        try:
            self.drop_database()
        except Exception as exc:
            errors.append(f"drop database: {exc!r}")
        if errors:
            print("bench: cleanup problems: " + "; ".join(errors), file=sys.stderr)


def stop_group(popen: subprocess.Popen[Any], grace: float) -> None:
    """SIGTERM the process group, then SIGKILL it if anything is left after ``grace`` seconds."""
    try:
        pgid = os.getpgid(popen.pid)
    except ProcessLookupError:
        pgid = None
    if pgid is not None and pgid != os.getpgid(0):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
    elif popen.poll() is None:
        popen.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        popen.wait(grace)
    if pgid is not None and pgid != os.getpgid(0):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)  # also whatever the leader left behind
    if popen.poll() is None:
        popen.kill()
        popen.wait(5)
