"""What the live conversion tests share: small real files made on the spot, uploads, job sockets,
and a cluster whose servers and ``hubbub worker`` processes share one data dir (uploads written by
a server are read by a worker; results written by a worker are served by any server)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import random
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import websockets
from PIL import Image, ImageDraw

from tests.live.servers import HubbubServer, WorkerProcess, postgres_database, redis_for_tests
from tests.live.wsclient import Socket

FINAL = frozenset({"done", "failed", "cancelled"})
STATES = frozenset({"queued", "running", *FINAL})


# -- files ----------------------------------------------------------------------------------------


def png(width: int = 64, height: int = 48, color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    image = Image.new("RGB", (width, height), color)
    ImageDraw.Draw(image).rectangle((0, 0, width // 2, height // 2), fill=(10, 120, 240))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def jpeg(width: int = 120, height: int = 80) -> bytes:
    image = Image.new("RGB", (width, height), (40, 160, 90))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


def page_size(index: int) -> tuple[int, int]:
    """The size in points (= pixels at 72 dpi) of page ``index`` (from 1) of :func:`pdf`: every
    page is a different size, so a rendered page says which one it is."""
    return 100 + 20 * index, 140 + 10 * index


def pdf(pages: int) -> bytes:
    """A small PDF made with Pillow; page i is ``page_size(i)`` points and has its own colour."""
    images = []
    for i in range(1, pages + 1):
        image = Image.new("RGB", page_size(i), ((60 * i) % 256, 90, 200))
        ImageDraw.Draw(image).text((5, 5), f"page {i}", fill=(255, 255, 255))
        images.append(image)
    out = io.BytesIO()
    images[0].save(out, "PDF", save_all=True, append_images=images[1:], resolution=72)
    return out.getvalue()


def heavy_pdf(pages: int) -> bytes:
    """A PDF whose pages take a worker tens of milliseconds each to render (about 900x1125 pt of
    noise), so that a conversion of 150 pages runs for several seconds: long enough to watch,
    cancel or crash. Under 1 MB for 150 pages."""
    rnd = random.Random(pages)
    images = []
    for i in range(pages):
        image = Image.frombytes("L", (100, 125), rnd.randbytes(100 * 125)).convert("RGB")
        ImageDraw.Draw(image).text((4, 4), str(i + 1), fill=(255, 0, 0))
        images.append(image)
    out = io.BytesIO()
    images[0].save(out, "PDF", save_all=True, append_images=images[1:], resolution=8)
    return out.getvalue()


def random_bytes(size: int = 4096) -> bytes:
    """Bytes that are no format at all: no magic number, not text (they hold NULs)."""
    return b"\x00\x13\x37" + random.Random(1234).randbytes(size - 3)


def corrupt_png() -> bytes:
    """A valid PNG signature followed by garbage."""
    return b"\x89PNG\r\n\x1a\n" + random.Random(99).randbytes(2000)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A well-formed PNG header claiming ``width`` x ``height`` RGB pixels (10 G pixels for the
    default: 30 GB once decoded), with a few bytes of compressed data behind it."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 65536, 9)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


# -- HTTP -----------------------------------------------------------------------------------------


def auth(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


async def upload(server: HubbubServer, data: bytes, filename: str, target: str, *,
                 token: str | None = None, room: str | None = None, options: Any = None,
                 client: httpx.AsyncClient | None = None,
                 headers: dict[str, str] | None = None) -> httpx.Response:
    """``POST /api/conversions`` (multipart: file, target, room?, options?). ``options`` that is
    a str is sent as it is (to send bad JSON), anything else as JSON."""
    form: dict[str, str] = {"target": target}
    if room is not None:
        form["room"] = room
    if options is not None:
        form["options"] = options if isinstance(options, str) else json.dumps(options)
    files = {"file": (filename, data, "application/octet-stream")}
    sent = {**auth(token), **(headers or {})}
    if client is not None:
        return await client.post(server.http + "/api/conversions", files=files, data=form, headers=sent)
    async with httpx.AsyncClient(timeout=60) as own:
        return await own.post(server.http + "/api/conversions", files=files, data=form, headers=sent)


async def get(server: HubbubServer, path: str, token: str | None = None,
              client: httpx.AsyncClient | None = None) -> httpx.Response:
    if client is not None:
        return await client.get(server.http + path, headers=auth(token))
    async with httpx.AsyncClient(timeout=30) as own:
        return await own.get(server.http + path, headers=auth(token))


async def post(server: HubbubServer, path: str, token: str | None = None,
               client: httpx.AsyncClient | None = None,
               headers: dict[str, str] | None = None) -> httpx.Response:
    sent = {**auth(token), **(headers or {})}
    if client is not None:
        return await client.post(server.http + path, headers=sent)
    async with httpx.AsyncClient(timeout=30) as own:
        return await own.post(server.http + path, headers=sent)


async def guest_client(server: HubbubServer) -> httpx.AsyncClient:
    """A browser-like guest: ``GET /`` gives it a session and a CSRF cookie (close it after)."""
    client = httpx.AsyncClient(timeout=30)
    page = await client.get(server.http + "/")
    assert page.status_code == 200, page.text[:300]
    assert "sessionid" in client.cookies and "csrftoken" in client.cookies, dict(client.cookies)
    return client


def cookie_header(client: httpx.AsyncClient) -> str:
    return "; ".join(f"{name}={value}" for name, value in client.cookies.items())


# -- job sockets ----------------------------------------------------------------------------------


async def job_socket(server: HubbubServer, job_id: str, *, token: str | None = None,
                     cookie: str | None = None) -> Socket:
    headers = auth(token)
    if cookie:
        headers["Cookie"] = cookie
    conn = await websockets.connect(f"{server.ws}/ws/jobs/{job_id}/", additional_headers=headers,
                                    max_size=None, open_timeout=10)
    return Socket(conn)


async def refusal(server: HubbubServer, job_id: str, *, token: str | None = None) -> tuple[str, int]:
    """How ``/ws/jobs/<job_id>/`` is refused: ("http", handshake status) or ("close", close code)."""
    try:
        sock = await job_socket(server, job_id, token=token)
    except websockets.InvalidStatus as exc:
        return "http", exc.response.status_code
    code = await sock.wait_closed(5)
    assert sock.received == [], sock.received
    return "close", code


async def first_frame(sock: Socket, within: float = 2.0) -> tuple[dict[str, Any], float]:
    """The first frame and how long it took to arrive."""
    start = time.monotonic()
    frame = await sock.wait_for(lambda e: True, timeout=within, what="the job's current state")
    return frame, time.monotonic() - start


async def follow(sock: Socket, timeout: float = 60.0) -> dict[str, Any]:
    """Wait for the final frame; then check the whole stream (see :func:`check_stream`)."""
    final = await sock.wait_for(lambda e: e.get("state") in FINAL, timeout=timeout, what="a final state")
    check_stream(sock.received)
    return dict(final)


def check_stream(frames: list[dict[str, Any]]) -> None:
    """Every frame is a job event of one job; progress is an integer 0-100 that never goes down;
    at most one final state and nothing after it; ``result_url`` only (and always) when done."""
    assert frames, "no frame"
    ids = {f.get("id") for f in frames}
    assert len(ids) == 1, ids
    last = -1
    for i, frame in enumerate(frames):
        assert frame["type"] == "job", frame
        assert set(frame) >= {"id", "state", "progress", "stage", "error", "result_url"}, frame
        assert frame["state"] in STATES, frame
        assert isinstance(frame["progress"], int) and 0 <= frame["progress"] <= 100, frame
        assert frame["progress"] >= last, f"progress went down at frame {i}: {progresses(frames)}"
        last = frame["progress"]
        if frame["state"] in FINAL:
            assert i == len(frames) - 1, f"frames after the final state: {frames[i:]}"
        if frame["state"] == "done":
            assert frame["progress"] == 100, frame
            assert frame["result_url"] == f"/api/conversions/{frame['id']}/result", frame
        else:
            assert frame["result_url"] is None, frame


def progresses(frames: list[dict[str, Any]]) -> list[int]:
    return [f["progress"] for f in frames if f.get("type") == "job"]


# -- a cluster with workers, one data dir ---------------------------------------------------------


@dataclass
class Farm:
    """Two ``hubbub serve`` (a, b) and any number of ``hubbub worker`` processes sharing a private
    Redis, a fresh PostgreSQL database and ONE data dir."""

    data_dir: Path
    a: HubbubServer
    b: HubbubServer
    redis_url: str
    database_url: str
    workers: list[WorkerProcess] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        return {"REDIS_URL": self.redis_url, "DATABASE_URL": self.database_url}

    def add_worker(self, start: bool = True, wait: bool = True) -> WorkerProcess:
        worker = WorkerProcess(self.data_dir, self.env, name=f"worker{len(self.workers) + 1}")
        self.workers.append(worker)
        if start:
            worker.start(wait=wait)
        return worker

    def logs(self, lines: int = 25) -> str:
        parts = [f"--- {s.name} ---\n{s.log_tail(lines)}" for s in (self.a, self.b)]
        parts += [f"--- {w.name} (pid {w.pid}) ---\n{w.log_tail(lines)}" for w in self.workers]
        return "\n".join(parts)

    def row(self, job_id: str) -> dict[str, Any]:
        """The job's row, read straight from the database (``conversions_job``)."""
        import psycopg
        from psycopg.rows import dict_row

        with psycopg.connect(self.database_url, connect_timeout=5, row_factory=dict_row) as conn:
            found = conn.execute("SELECT * FROM conversions_job WHERE id = %s", (job_id,)).fetchone()
        assert found is not None, f"no row for job {job_id}"
        return dict(found)

    def holder(self, job_id: str) -> WorkerProcess | None:
        """The worker whose lease the job's row names (its lease_owner is host-PID-random)."""
        owner = self.row(job_id)["lease_owner"]
        for worker in self.workers:
            if worker.pid is not None and f"-{worker.pid}-" in f"-{owner}-":
                return worker
        return None

    def results(self, job_id: str) -> list[str]:
        """The names of the files under the data dir's results/ that belong to the job."""
        folder = self.data_dir / "results"
        return sorted(p.name for p in folder.iterdir() if job_id in p.name) if folder.is_dir() else []


@contextlib.contextmanager
def farm(root: Path, workers: int) -> Iterator[Farm]:
    with redis_for_tests(root) as (redis_url, _redis), postgres_database() as database_url:
        shared = root / "shared"
        env = {"REDIS_URL": redis_url, "DATABASE_URL": database_url}
        a = HubbubServer(shared, env, name="a")
        b = HubbubServer(shared, env, name="b")
        made = Farm(shared, a, b, redis_url, database_url)
        try:
            a.start(wait=False)
            b.start(wait=False)  # both migrate the empty database at once
            a.wait_ready()
            b.wait_ready()
            for _ in range(workers):
                made.add_worker(wait=False)
            for worker in made.workers:
                worker.wait_ready()
            yield made
        finally:
            for worker in made.workers:
                worker.stop()
            a.stop()
            b.stop()


async def wait_row(f: Farm, job_id: str, predicate: Any, timeout: float, what: str) -> dict[str, Any]:
    """Poll the job's row (without blocking the loop the sockets read on) until
    ``predicate(row)``; the row."""
    deadline = time.monotonic() + timeout
    while True:
        row = await asyncio.to_thread(f.row, job_id)
        if predicate(row):
            return row
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout}s waiting for {what}; row state={row['state']} "
                f"progress={row['progress']} lease_owner={row['lease_owner']!r}\n{f.logs()}")
        await asyncio.sleep(0.2)
