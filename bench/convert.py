"""Conversion throughput: a converter called directly versus the same conversion as a Hubbub job.

    python -m bench.convert --base http://127.0.0.1:P --token T --worker-pid W --server-pid S \
        [--reps 3] [--files photo,table,doc,deck,tiny]   # prints one JSON document

* **direct**: ``hubbub.conversions.converters.convert()`` in this process (the file sniffed first,
  as the upload does), with a progress callback that does nothing: wall time and CPU time.
* **job**: ``POST /api/conversions`` (multipart, bearer token) → 202 → ``/ws/jobs/<id>/`` until
  the job is ``done``, timed from the start of the upload; the CPU that the worker and the server
  spent meanwhile is read from ``/proc``. Jobs run one at a time on one ``hubbub worker``.

* **throughput**: ``--batch`` jobs submitted at once, one worker: from the first upload to the last
  ``done``, against ``batch`` x the direct median. This is the cost of a job in a stream of jobs.

The latency overhead of a file is (job - direct) / direct on the medians. ``tiny`` (a 64x48 PNG)
shows the fixed cost of a job, whatever its size.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import websockets
from PIL import Image, ImageDraw

from bench.loadgen import proc_cpu_seconds

Json = dict[str, Any]


# -- input files ------------------------------------------------------------------------------------


def photo_png(width: int = 2400, height: int = 1600) -> bytes:
    """A photo-like PNG: gradients and a little noise (a flat image compresses unrealistically)."""
    rnd = random.Random(7)
    image = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(400):
        x, y = rnd.randrange(width), rnd.randrange(height)
        r = rnd.randrange(10, 120)
        draw.ellipse((x - r, y - r, x + r, y + r),
                     fill=(rnd.randrange(256), rnd.randrange(256), rnd.randrange(256)))
    noise = Image.frombytes("L", (width, height), rnd.randbytes(width * height)).convert("RGB")
    image = Image.blend(image, noise, 0.08)
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def tiny_png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(out, "PNG")
    return out.getvalue()


def table_csv(rows: int = 20_000) -> bytes:
    rnd = random.Random(3)
    lines = ["id,name,city,amount,ratio,date,flag,note"]
    for i in range(rows):
        lines.append(f"{i},user{rnd.randrange(10**6)},City {rnd.randrange(500)},{rnd.randrange(10**5)},"
                     f"{rnd.random():.4f},2026-{rnd.randrange(1, 13):02d}-{rnd.randrange(1, 29):02d},"
                     f"{rnd.choice(['yes', 'no'])},some note text {i}")
    return ("\n".join(lines) + "\n").encode()


def doc_md(sections: int = 400) -> bytes:
    parts = ["# Benchmark document\n"]
    for i in range(sections):
        parts.append(f"## Section {i}\n\nSome *emphasis*, **strong** text, `code`, and a "
                     f"[link](https://example.com/{i}). " * 3 + "\n\n- one\n- two\n- three\n\n"
                     "| a | b | c |\n|---|---|---|\n| 1 | 2 | 3 |\n| 4 | 5 | 6 |\n\n"
                     "```\nprint('hello')\n```\n")
    return "".join(parts).encode()


def deck_pdf(pages: int = 8) -> bytes:
    rnd = random.Random(5)
    images = []
    for i in range(pages):
        image = Image.frombytes("L", (400, 500), rnd.randbytes(400 * 500)).convert("RGB")
        ImageDraw.Draw(image).text((10, 10), f"page {i + 1}", fill=(255, 0, 0))
        images.append(image)
    out = io.BytesIO()
    images[0].save(out, "PDF", save_all=True, append_images=images[1:], resolution=72)
    return out.getvalue()


FILES: dict[str, tuple[str, str, Callable[[], bytes]]] = {
    # name: (upload filename, target, maker)
    "photo": ("photo.png", "jpeg", photo_png),
    "table": ("table.csv", "xlsx", table_csv),
    "doc": ("doc.md", "html", doc_md),
    "deck": ("deck.pdf", "png", deck_pdf),
    "tiny": ("tiny.png", "jpeg", tiny_png),
}


# -- direct -----------------------------------------------------------------------------------------


def direct(path: Path, filename: str, target: str, reps: int, workdir: Path) -> Json:
    from hubbub.conversions import converters

    walls: list[float] = []
    cpus: list[float] = []
    for i in range(reps + 1):  # the first run warms imports and caches; not counted
        dst = workdir / f"direct-{i}"
        w0, c0 = time.perf_counter(), time.process_time()
        source = converters.sniff(path, filename)
        assert source is not None, filename
        converters.convert(source, target, path, dst, {}, lambda percent, stage: None)
        w1, c1 = time.perf_counter(), time.process_time()
        dst.unlink(missing_ok=True)
        if i:
            walls.append(w1 - w0)
            cpus.append(c1 - c0)
    return {"wall_s": walls, "cpu_s": cpus, "wall_median_s": statistics.median(walls),
            "cpu_median_s": statistics.median(cpus)}


# -- as a job ---------------------------------------------------------------------------------------


async def one_job(client: httpx.AsyncClient, base: str, token: str, data: bytes, filename: str,
                  target: str, timeout: float) -> Json:
    t0 = time.perf_counter()
    resp = await client.post(f"{base}/api/conversions", files={"file": (filename, data)},
                             data={"target": target}, headers={"Authorization": f"Bearer {token}"})
    t_upload = time.perf_counter()
    if resp.status_code != 202:
        return {"error": f"upload answered {resp.status_code}: {resp.text[:200]}"}
    job_id = resp.json()["id"]
    ws_url = base.replace("http://", "ws://") + f"/ws/jobs/{job_id}/"
    state = "?"
    async with websockets.connect(ws_url, additional_headers={"Authorization": f"Bearer {token}"},
                                  compression=None, open_timeout=10) as ws:
        deadline = time.perf_counter() + timeout
        while True:
            left = deadline - time.perf_counter()
            if left <= 0:
                return {"error": f"job {job_id} not done within {timeout}s (state {state})"}
            event = json.loads(await asyncio.wait_for(ws.recv(), left))
            state = event.get("state", "?")
            if state in ("done", "failed", "cancelled"):
                break
    t_done = time.perf_counter()
    if state != "done":
        return {"error": f"job {job_id} ended {state}: {event.get('error')}"}
    return {"wall_s": t_done - t0, "upload_s": t_upload - t0}


async def jobs(base: str, token: str, data: bytes, filename: str, target: str, reps: int,
               pids: dict[str, int], timeout: float) -> Json:
    walls: list[float] = []
    uploads: list[float] = []
    cpus: dict[str, list[float]] = {name: [] for name in pids}
    errors: list[str] = []
    async with httpx.AsyncClient(timeout=60) as client:
        for i in range(reps + 1):  # the first job warms the worker; not counted
            before = {name: proc_cpu_seconds(pid) or 0.0 for name, pid in pids.items()}
            result = await one_job(client, base, token, data, filename, target, timeout)
            await asyncio.sleep(0.3)  # let the outcome writes finish before reading the CPU
            after = {name: proc_cpu_seconds(pid) or 0.0 for name, pid in pids.items()}
            if "error" in result:
                errors.append(result["error"])
                continue
            if i:
                walls.append(result["wall_s"])
                uploads.append(result["upload_s"])
                for name in pids:
                    cpus[name].append(after[name] - before[name])
    out: Json = {"wall_s": walls, "upload_s": uploads, "errors": errors}
    if walls:
        out["wall_median_s"] = statistics.median(walls)
        out["cpu_median_s"] = {name: statistics.median(v) for name, v in cpus.items() if v}
    return out


async def throughput(base: str, token: str, data: bytes, filename: str, target: str, batch: int,
                     timeout: float) -> Json:
    """``batch`` jobs submitted at once (one worker converts them one after another): the time from
    the first upload to the last ``done``. Uploads and hand-offs overlap with conversions, as they do
    for a stream of jobs; this is the throughput a worker delivers."""
    async with httpx.AsyncClient(timeout=60) as client:
        t0 = time.perf_counter()
        results = await asyncio.gather(*(one_job(client, base, token, data, filename, target,
                                                 timeout) for _ in range(batch)))
        wall = time.perf_counter() - t0
    errors = [r["error"] for r in results if "error" in r]
    return {"batch": batch, "wall_s": wall, "jobs_per_s": batch / wall, "errors": errors}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--base", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--worker-pid", type=int, required=True)
    parser.add_argument("--server-pid", type=int, required=True)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--files", default=",".join(FILES))
    parser.add_argument("--timeout", type=float, default=60)
    parser.add_argument("--batch", type=int, default=8, help="jobs in flight for the throughput run")
    args = parser.parse_args(argv)
    pids = {"worker": args.worker_pid, "server": args.server_pid}
    results: Json = {"reps": args.reps, "files": {}}
    with tempfile.TemporaryDirectory(prefix="hubbub-bench-convert-") as tmp:
        workdir = Path(tmp)
        for name in args.files.split(","):
            filename, target, make = FILES[name]
            data = make()
            path = workdir / filename
            path.write_bytes(data)
            d = direct(path, filename, target, args.reps, workdir)
            j = asyncio.run(jobs(args.base, args.token, data, filename, target, args.reps, pids,
                                 args.timeout))
            t = asyncio.run(throughput(args.base, args.token, data, filename, target, args.batch,
                                       args.timeout + 10 * args.batch * d["wall_median_s"]))
            entry: Json = {"file": filename, "bytes": len(data), "target": target, "direct": d, "job": j,
                           "throughput": t}
            if not t["errors"]:
                # jobs per second through one worker vs converter calls per second in one process
                t["direct_per_s"] = 1 / d["wall_median_s"] if d["wall_median_s"] else None
                t["overhead"] = t["wall_s"] / (args.batch * d["wall_median_s"]) - 1
            if "wall_median_s" in j:
                entry["overhead_wall"] = j["wall_median_s"] / d["wall_median_s"] - 1
                job_cpu = sum(j["cpu_median_s"].values())
                entry["overhead_cpu"] = job_cpu / d["cpu_median_s"] - 1 if d["cpu_median_s"] else None
                entry["fixed_cost_ms"] = 1000 * (j["wall_median_s"] - d["wall_median_s"])
            results["files"][name] = entry
            print(f"convert: {name}: direct {d['wall_median_s']:.3f}s, job "
                  f"{j.get('wall_median_s', float('nan')):.3f}s; {args.batch} jobs at once "
                  f"{t['wall_s']:.3f}s ({t.get('overhead', float('nan')):+.1%})", file=sys.stderr, flush=True)
    json.dump(results, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
