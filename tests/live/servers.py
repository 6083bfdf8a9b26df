"""Real processes for the live suites: private redis-server, own PostgreSQL database, `hubbub serve`.

Everything started here is stopped by the fixture that started it. Nothing here touches a Redis
database or a PostgreSQL database that the run did not create.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from tests import outer_env

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Any, timeout: float, interval: float = 0.05, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


# -- Redis ----------------------------------------------------------------------------------------


class RedisServer:
    """A private ``redis-server`` on a free port that a test may stop and start again."""

    def __init__(self, workdir: Path) -> None:
        self.binary = shutil.which("redis-server")
        assert self.binary is not None
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        assert self.binary is not None
        log = open(self.workdir / f"redis-{self.port}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=log, stderr=subprocess.STDOUT,
        )
        wait_until(self.ping, 10, what=f"redis-server on {self.port}")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@contextlib.contextmanager
def redis_for_tests(workdir: Path) -> Iterator[tuple[str, RedisServer | None]]:
    """A Redis URL: a private server when redis-server is installed (preferred: tests may stop
    it), else ``REDIS_URL`` from the environment, else the test is skipped, saying why."""
    if shutil.which("redis-server"):
        server = RedisServer(workdir)
        server.start()
        try:
            yield server.url, server
        finally:
            server.stop()
    elif outer_env.REDIS_URL:
        yield outer_env.REDIS_URL, None
    else:
        pytest.skip("no redis-server installed and no REDIS_URL set: the Redis tests cannot run")


# -- PostgreSQL -----------------------------------------------------------------------------------

DEFAULT_PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def _pg_admin_url() -> str:
    return outer_env.DATABASE_URL if outer_env.DATABASE_URL and outer_env.DATABASE_URL.startswith(
        ("postgres://", "postgresql://")) else DEFAULT_PG_ADMIN


@contextlib.contextmanager
def postgres_database() -> Iterator[str]:
    """A new, empty PostgreSQL database for this run, dropped afterwards. Skips (with the reason)
    when no server answers."""
    import psycopg

    admin = _pg_admin_url()
    try:
        conn = psycopg.connect(admin, connect_timeout=3, autocommit=True)
    except psycopg.OperationalError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "no answer"
        pytest.skip(f"no PostgreSQL server answers at {_redact(admin)} ({first}): "
                    "the PostgreSQL tests cannot run")
    name = f"hubbub_test_{uuid.uuid4().hex[:12]}"
    with conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    parts = urlsplit(admin)
    url = urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, ""))
    try:
        yield url
    finally:
        with psycopg.connect(admin, connect_timeout=3, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        return url.replace(parts.password, "***")
    return url


# -- hubbub serve ---------------------------------------------------------------------------------


def child_env(data_dir: Path, extra: dict[str, str]) -> dict[str, str]:
    """A Hubbub process's environment: this one's, without its Hubbub settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("HUBBUB_") and k not in ("DATABASE_URL", "REDIS_URL")}
    env["HUBBUB_DATA_DIR"] = str(data_dir)
    env.update(extra)
    return env


class HubbubServer:
    """One ``hubbub serve`` process on a free port."""

    def __init__(self, data_dir: Path, env: dict[str, str] | None = None, name: str = "hubbub") -> None:
        self.data_dir = data_dir
        self.extra_env = env or {}
        self.name = name
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir / f"{name}-{self.port}.log"
        self._log_start = 0

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return child_env(self.data_dir, self.extra_env)

    def start(self, wait: bool = True) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115
        self._log_start = log.tell()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hubbub.cli", "serve", "--port", str(self.port)],
            env=self.env(), stdout=log, stderr=subprocess.STDOUT, cwd=self.data_dir,
        )
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 60) -> None:
        retries = 3

        def up() -> bool:
            nonlocal retries
            assert self.proc is not None
            if self.proc.poll() is not None:
                if retries and self._lost_port():
                    # free_port() is check-then-use: on a busy machine another process may take
                    # the port first. Start again on another one.
                    retries -= 1
                    self.port = free_port()
                    self.start(wait=False)
                    return False
                raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                return httpx.get(self.http + "/livez", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, timeout, interval=0.1, what=f"{self.name} on port {self.port}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def _lost_port(self) -> bool:
        """The last start failed because the port was taken."""
        with open(self.log_path, "rb") as log:
            log.seek(self._log_start)
            return b"address already in use" in log.read()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        code = self.proc.returncode
        self.proc = None
        return code

    def kill9(self) -> None:
        self.stop(signal.SIGKILL)

    def restart(self) -> None:
        self.stop()
        self.start()

    # HTTP helpers --------------------------------------------------------------------------

    def get(self, path: str, token: str | None = None, **kw: Any) -> httpx.Response:
        return httpx.get(self.http + path, headers=_auth(token), timeout=10, **kw)

    def post(self, path: str, body: Any = None, token: str | None = None, **kw: Any) -> httpx.Response:
        return httpx.post(self.http + path, json=body, headers=_auth(token), timeout=10, **kw)

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "hubbub.cli", *args], env=self.env(), input=stdin,
            capture_output=True, text=True, timeout=60, cwd=self.data_dir,
        )

    def make_user(self, name: str, password: str = "correct-horse-1") -> str:
        """Create a user with the CLI and return a bearer token for it."""
        made = self.cli("user", "create", name, "--password-stdin", stdin=password + "\n")
        assert made.returncode == 0, made.stderr
        token = self.cli("token", "create", name)
        assert token.returncode == 0, token.stderr
        return token.stdout.strip()


async def history(base: str, room: str, token: str | None = None, page: int = 200) -> list[dict[str, Any]]:
    """Every stored message of ``room``, read through ``GET /api/rooms/{room}/messages`` paging
    with ``after`` (without blocking the event loop the sockets read on)."""
    out: list[dict[str, Any]] = []
    after = 0
    async with httpx.AsyncClient(base_url=base, headers=_auth(token), timeout=10) as client:
        while True:
            resp = await client.get(f"/api/rooms/{room}/messages", params={"after": after, "limit": page})
            assert resp.status_code == 200, resp.text
            batch = resp.json()["messages"]
            out.extend(batch)
            if len(batch) < page:
                return out
            after = batch[-1]["id"]


def _auth(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def new_data_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="hubbub-live-"))


def json_lines(frames: list[str]) -> list[dict[str, Any]]:
    return [json.loads(f) for f in frames]


# -- hubbub worker --------------------------------------------------------------------------------


class WorkerProcess:
    """One ``hubbub worker`` process (``python -m hubbub.cli worker``): its pid is the one in the
    lease it writes on the jobs it holds (``conversions_job.lease_owner``: host-pid-random)."""

    def __init__(self, data_dir: Path, env: dict[str, str] | None = None, name: str = "worker") -> None:
        self.data_dir = data_dir
        self.extra_env = env or {}
        self.name = name
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid: int | None = None
        self.returncode: int | None = None
        self.log_path = data_dir / f"{name}-{uuid.uuid4().hex[:6]}.log"

    def env(self) -> dict[str, str]:
        return child_env(self.data_dir, self.extra_env)

    def start(self, wait: bool = True) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hubbub.cli", "worker"],
            env=self.env(), stdout=log, stderr=subprocess.STDOUT, cwd=self.data_dir,
        )
        self.pid = self.proc.pid
        self.returncode = None
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 60) -> None:
        """Until the worker logs that it is ready (it has migrated and looks for work)."""

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                return " ready" in self.log_path.read_text(errors="replace")
            except FileNotFoundError:
                return False

        wait_until(ready, timeout, interval=0.1, what=f"{self.name} ready")

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def send_signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        """Wait for the process to end by itself; its exit status."""
        assert self.proc is not None
        code = self.proc.wait(timeout)
        self.returncode = code
        self.proc = None
        return code

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int | None:
        if self.proc is None:
            return self.returncode
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.returncode = self.proc.returncode
        self.proc = None
        return self.returncode

    def kill9(self) -> None:
        self.stop(signal.SIGKILL)
