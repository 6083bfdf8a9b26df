"""Run the benchmark: ``make bench`` (quick, under 5 minutes) or ``make bench FULL=1`` (under 25).

    python -m bench.run [--quick] [--only fanout,many_rooms,catchup,conversion,idle] [--out DIR]

It starts a private redis-server, a new PostgreSQL database (dropped at the end), two Hubbub
instances, two instances of the Channels-tutorial design and two of the raw websockets + PUBLISH
design (``bench/reference/``), then runs each scenario against each design it applies to with
the load generator (``bench/loadgen.py``) in a separate process, and writes
``<out>/<scenario>.json``, ``<out>/summary.json`` and PNG plots. Every scenario and the whole run
have a hard time limit; every process started is stopped at the end, whatever happens
(``bench/cluster.py``). See docs/performance.md.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.cluster import ROOT, Cluster, Proc, stop_group
from bench.loadgen import proc_cpu_seconds, system_cpu

Json = dict[str, Any]
DESIGNS = ("hubbub", "tutorial", "raw")
SCENARIOS = ("fanout", "many_rooms", "catchup", "conversion", "idle")


@dataclass(frozen=True)
class Settings:
    quick: bool
    total_limit_s: float
    limits_s: dict[str, float]
    fanout_sizes: tuple[int, ...] = (200, 1000)
    fanout_rates: tuple[float, ...] = (1, 2, 5, 10, 20, 40, 80, 160, 320, 640, 1280, 2560, 5120)
    fanout_step_s: float = 4.0
    fanout_drain_s: float = 3.0
    fanout_refine: int = 2
    min_posts: int = 20  # a ladder step lasts at least this many posts
    rooms: int = 1000
    room_size: int = 5
    rooms_rates: tuple[float, ...] = (10, 20, 40, 80, 160, 320, 640, 1280, 2560, 5120)
    rooms_step_s: float = 4.0
    rooms_refine: int = 1
    idle_steps: tuple[int, ...] = (1000, 5000, 10000, 19800)
    idle_total: int = 20000
    idle_rooms: int = 400
    idle_rate: float = 100.0
    idle_traffic_s: float = 10.0
    idle_designs: tuple[str, ...] = DESIGNS
    idle_procs: int = 4
    catchup_messages: int = 10000
    catchup_reps: int = 3
    convert_files: tuple[str, ...] = ("photo", "table", "doc", "deck", "tiny")
    convert_reps: int = 5
    convert_batch: int = 8
    p99_limit_ms: float = 200.0
    idle_p99_limit_ms: float = 500.0
    extra: dict[str, Any] = field(default_factory=dict)


FULL = Settings(
    quick=False, total_limit_s=24.5 * 60,
    limits_s={"fanout": 560, "many_rooms": 270, "catchup": 90, "conversion": 150, "idle": 330},
)
QUICK = Settings(
    quick=True, total_limit_s=5.0 * 60,
    limits_s={"fanout": 125, "many_rooms": 50, "catchup": 45, "conversion": 25, "idle": 45},
    fanout_rates=(1, 4, 16, 64, 256, 1024), fanout_step_s=2.0, fanout_drain_s=1.0, fanout_refine=0,
    min_posts=3,
    rooms=200, rooms_rates=(10, 40, 160, 640, 2560), rooms_step_s=1.5, rooms_refine=0,
    idle_steps=(1000, 5000), idle_total=5000, idle_rooms=100, idle_rate=50, idle_traffic_s=3,
    idle_designs=("hubbub",), idle_procs=2,
    convert_files=("photo", "tiny"), convert_reps=1, convert_batch=4,
)


class OutOfTime(Exception):
    pass


def log(message: str) -> None:
    print(f"bench [{time.strftime('%H:%M:%S')}]: {message}", flush=True)


class Bench:
    def __init__(self, settings: Settings, out: Path, workdir: Path) -> None:
        self.s = settings
        self.out = out
        self.workdir = workdir
        self.cluster = Cluster(workdir)
        self.designs: dict[str, list[Proc]] = {}
        self.started = time.monotonic()
        self.results: dict[str, Json] = {}

    # -- time

    def remaining(self) -> float:
        return self.s.total_limit_s - (time.monotonic() - self.started)

    def budget(self, scenario: str) -> float:
        return min(self.s.limits_s[scenario], self.remaining() - 25)

    # -- helpers

    def loadgen(self, plan: Json, timeout: float, label: str) -> Json:
        """Run the load generator on ``plan`` in its own process group, for at most ``timeout`` s."""
        if timeout < 10:
            return {"error": f"no time left for {label}"}
        plan["deadline_s"] = int(timeout - 5)
        path = self.workdir / f"plan-{label}.json"
        path.write_text(json.dumps(plan))
        proc = subprocess.Popen([sys.executable, "-m", "bench.loadgen", str(path)], cwd=ROOT,
                                stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)},
                                start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"error": f"the load generator ran over {timeout:.0f}s and was killed"}
        finally:
            stop_group(proc, 3)
        try:
            result: Json = json.loads(out.decode())
        except ValueError:
            return {"error": f"the load generator exited {proc.returncode} without a result"}
        return result

    def pids(self, procs: list[Proc]) -> dict[str, int]:
        pids = {p.name: p.pid for p in procs}
        if self.cluster.redis is not None:
            pids["redis"] = self.cluster.redis.pid
        return pids

    def wait_quiet(self, procs: list[Proc], pct: float = 10.0, max_s: float = 30.0) -> float:
        """Until every server in ``procs`` uses under ``pct`` % of a core (for 1 s): a design's
        sockets closing must not weigh on the next measurement."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < max_s:
            before = {p.pid: proc_cpu_seconds(p.pid) or 0.0 for p in procs}
            time.sleep(1.0)
            busy = [100 * ((proc_cpu_seconds(p.pid) or 0.0) - before[p.pid]) for p in procs]
            if max(busy, default=0) < pct:
                break
        return round(time.monotonic() - t0, 1)

    def save(self, scenario: str, result: Json) -> None:
        result = {"scenario": scenario, "quick": self.s.quick, **result}
        self.results[scenario] = result
        (self.out / f"{scenario}.json").write_text(json.dumps(result, indent=1) + "\n")

    # -- set-up

    def start(self) -> None:
        log(f"work dir {self.workdir}")
        self.cluster.start_redis()
        self.cluster.create_database()
        log(f"redis-server on {self.cluster.redis_url}, database {self.cluster.database}")
        self.designs["hubbub"] = [self.cluster.start_hubbub(f"hubbub-{i}", wait=False) for i in (1, 2)]
        self.designs["tutorial"] = [self.cluster.start_reference("tutorial", f"tutorial-{i}") for i in (1, 2)]
        self.designs["raw"] = [self.cluster.start_reference("raw", f"raw-{i}") for i in (1, 2)]
        for proc in self.designs["hubbub"]:
            self.cluster.wait_hubbub(proc)
        for design in ("tutorial", "raw"):
            for proc in self.designs[design]:
                self.cluster.wait_tcp(proc)
        log("started: " + ", ".join(f"{p.name} :{p.port}" for ps in self.designs.values() for p in ps))

    # -- scenarios

    def fanout(self) -> None:
        deadline = time.monotonic() + self.budget("fanout")
        runs: Json = {}
        n_ladders = len(self.s.fanout_sizes) * len(DESIGNS)
        done = 0
        for n in self.s.fanout_sizes:
            runs[str(n)] = {}
            for design in DESIGNS:
                servers = self.designs[design]
                left = deadline - time.monotonic()
                share = left / max(1, n_ladders - done)
                rates = [r for r in self.s.fanout_rates if r <= n * 10]
                plan = {
                    "urls": [p.url for p in servers], "rooms": [f"fan{n}"], "procs": 1,
                    "pids": self.pids(servers),
                    "phases": [
                        {"kind": "connect", "sockets": n, "timeout": 120},
                        {"kind": "measure", "settle": 1},
                        {"kind": "ladder", "rates": rates, "seconds": self.s.fanout_step_s,
                         "drain": self.s.fanout_drain_s, "refine": self.s.fanout_refine,
                         "min_posts": self.s.min_posts, "p99_ms": self.s.p99_limit_ms, "min_delivery": 1.0,
                         "budget_s": max(5.0, share - 5 - n / 300)},
                    ],
                }
                log(f"fan-out: {design}, {n} sockets in one room over 2 instances")
                runs[str(n)][design] = self.loadgen(plan, min(left, share + 30), f"fanout-{n}-{design}")
                done += 1
                runs[str(n)][design]["quiet_wait_s"] = self.wait_quiet(servers)
        best = {n: {d: best_step(r) for d, r in per.items()} for n, per in runs.items()}
        lowest = {n: {d: lowest_step(r) for d, r in per.items()} for n, per in runs.items()}
        self.save("fanout", {"settings": {"sizes": self.s.fanout_sizes, "rates": self.s.fanout_rates,
                                          "step_s": self.s.fanout_step_s, "drain_s": self.s.fanout_drain_s,
                                          "p99_limit_ms": self.s.p99_limit_ms},
                             "best": best, "lowest": lowest, "runs": runs})

    def many_rooms(self) -> None:
        deadline = time.monotonic() + self.budget("many_rooms")
        runs: Json = {}
        rooms = [f"r{i:04d}" for i in range(self.s.rooms)]
        total = self.s.rooms * self.s.room_size
        for k, design in enumerate(DESIGNS):
            servers = self.designs[design]
            left = deadline - time.monotonic()
            share = left / (len(DESIGNS) - k)
            setup = 5 + total / 300  # connecting (Hubbub: about 300-600 sockets/s) and the settle
            plan = {
                "urls": [p.url for p in servers], "rooms": rooms, "procs": 1, "pids": self.pids(servers),
                "phases": [
                    {"kind": "connect", "sockets": total, "timeout": 180},
                    {"kind": "measure", "settle": 2},
                    {"kind": "ladder", "rates": list(self.s.rooms_rates), "seconds": self.s.rooms_step_s,
                     "drain": self.s.fanout_drain_s, "refine": self.s.rooms_refine,
                     "min_posts": self.s.min_posts, "p99_ms": self.s.p99_limit_ms, "min_delivery": 1.0,
                     "budget_s": max(5.0, share - setup)},
                ],
            }
            log(f"many rooms: {design}, {self.s.rooms} rooms x {self.s.room_size} sockets")
            runs[design] = self.loadgen(plan, min(left, share + 15), f"rooms-{design}")
            runs[design]["quiet_wait_s"] = self.wait_quiet(servers)
        self.save("many_rooms", {"settings": {"rooms": self.s.rooms, "room_size": self.s.room_size,
                                              "rates": self.s.rooms_rates, "step_s": self.s.rooms_step_s},
                                 "best": {d: best_step(r) for d, r in runs.items()}, "runs": runs})

    def catchup(self) -> None:
        deadline = time.monotonic() + self.budget("catchup")
        n = self.s.catchup_messages
        room = "catchup"
        log(f"catch-up: posting {n} messages with hubbub.publish.post_message")
        seeded = subprocess.run([sys.executable, "-m", "bench.seed", room, str(n)], cwd=ROOT,
                                env={**self.cluster.hubbub_env(), "PYTHONPATH": str(ROOT)},
                                capture_output=True, text=True,
                                timeout=max(10, deadline - time.monotonic() - 15))
        if seeded.returncode != 0:
            self.save("catchup", {"error": f"seeding failed: {seeded.stderr[-500:]}"})
            return
        seed = json.loads(seeded.stdout)
        servers = self.designs["hubbub"]
        phases = [{"kind": "catchup", "label": f"{servers[i % 2].name} #{i + 1}", "url": servers[i % 2].url,
                   "room": room, "query": "after=0", "expect": n, "timeout": 20}
                  for i in range(self.s.catchup_reps + 1)]
        plan = {"urls": [servers[0].url], "rooms": [room], "procs": 1, "pids": self.pids(servers),
                "phases": phases}
        log(f"catch-up: {len(phases)} sockets connecting with ?after=0 (the first is a warm-up)")
        res = self.loadgen(plan, deadline - time.monotonic(), "catchup")
        runs = res.get("phases", [])[1:]
        times = sorted(p["seconds"] for p in runs if p.get("seconds") is not None)
        self.save("catchup", {"messages": n, "seed": seed, "warmup": res.get("phases", [None])[0],
                              "runs": runs, "seconds_median": times[len(times) // 2] if times else None,
                              "seconds_max": times[-1] if times else None,
                              "all_in_order": all(p.get("in_order") and p.get("received") == n for p in runs),
                              **({"error": res["error"]} if "error" in res else {})})

    def conversion(self) -> None:
        deadline = time.monotonic() + self.budget("conversion")
        self.cluster.hubbub_cli("user", "create", "benchuser", "--password-stdin", stdin="bench-password-1\n")
        token = self.cluster.hubbub_cli("token", "create", "benchuser")
        worker = self.cluster.start_worker("worker-1")
        server = self.designs["hubbub"][0]
        log(f"conversion: {', '.join(self.s.convert_files)} ({self.s.convert_reps} runs each + a warm-up)")
        try:
            done = subprocess.run(
                [sys.executable, "-m", "bench.convert", "--base", server.http, "--token", token,
                 "--worker-pid", str(worker.pid), "--server-pid", str(server.pid),
                 "--reps", str(self.s.convert_reps), "--files", ",".join(self.s.convert_files),
                 "--batch", str(self.s.convert_batch)],
                cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, text=True,
                timeout=max(10, deadline - time.monotonic()), start_new_session=True)
            result = json.loads(done.stdout) if done.returncode == 0 else \
                {"error": f"bench.convert exited {done.returncode}"}
        except subprocess.TimeoutExpired:
            result = {"error": "the conversion scenario ran out of time"}
        finally:
            self.cluster.stop(worker)
        self.save("conversion", result)

    def idle(self) -> None:
        deadline = time.monotonic() + self.budget("idle")
        runs: Json = {}
        rooms = [f"idle{i:03d}" for i in range(self.s.idle_rooms)]
        for k, design in enumerate(self.s.idle_designs):
            left = deadline - time.monotonic()
            share = left / (len(self.s.idle_designs) - k) if design != "hubbub" else left * (
                0.6 if len(self.s.idle_designs) > 1 else 1.0)
            # Fresh processes: the fan-out runs must not have grown the heaps being measured.
            if design == "hubbub":
                fresh = [self.cluster.start_hubbub(f"idle-hubbub-{x}", wait=False) for x in "AB"]
                for p in fresh:
                    self.cluster.wait_hubbub(p)
            else:
                fresh = [self.cluster.start_reference(design, f"idle-{design}-A")]
                self.cluster.wait_tcp(fresh[0])
            one = fresh[0]
            time.sleep(2)
            headroom = fd_headroom(one.pid)
            steps = [min(n, headroom) for n in self.s.idle_steps]
            phases: list[Json] = [{"kind": "measure", "label": "baseline", "settle": 1}]
            for n in steps:
                phases += [{"kind": "connect", "sockets": n, "urls": [one.url], "timeout": 240,
                            "concurrency": 100},
                            {"kind": "measure", "label": f"{n} sockets", "settle": 3 if n < 10000 else 5}]
            if design == "hubbub":
                if self.s.idle_total > steps[-1]:
                    phases += [{"kind": "connect", "sockets": self.s.idle_total, "urls": [fresh[1].url],
                                "timeout": 60},
                               {"kind": "measure", "label": "all", "settle": 2}]
                phases.append({"kind": "step", "label": "traffic", "rate": self.s.idle_rate,
                               "seconds": self.s.idle_traffic_s, "drain": 3})
            plan = {"urls": [one.url], "rooms": rooms, "procs": self.s.idle_procs,
                    "pids": {p.name: p.pid for p in fresh}, "phases": phases}
            log(f"idle sockets: {design}: {', '.join(str(n) for n in steps)} sockets on {one.name}"
                + (f", then {self.s.idle_total} in all with {self.s.idle_rate:g} posts/s"
                   if design == "hubbub" else ""))
            res = self.loadgen(plan, min(left, share), f"idle-{design}")
            res["fd_headroom"] = headroom
            res["memory"] = memory_curve(res, one.name)
            runs[design] = res
            for p in fresh:
                self.cluster.stop(p)
        traffic = None
        hub = runs.get("hubbub", {})
        for ph in hub.get("phases", []):
            if ph.get("kind") == "step":
                traffic = ph
        self.save("idle", {"settings": {"steps": self.s.idle_steps, "total": self.s.idle_total,
                                        "rooms": self.s.idle_rooms, "rate": self.s.idle_rate,
                                        "traffic_s": self.s.idle_traffic_s,
                                        "p99_limit_ms": self.s.idle_p99_limit_ms},
                           "memory": {d: r["memory"] for d, r in runs.items()},
                           "traffic": traffic, "runs": runs})

    # -- the run

    def run(self, only: list[str]) -> None:
        self.start()
        for scenario in SCENARIOS:
            if scenario not in only:
                continue
            if self.remaining() < 40:
                log(f"skipping {scenario}: the run's time limit is near")
                self.save(scenario, {"error": "skipped: out of time"})
                continue
            t0 = time.monotonic()
            try:
                getattr(self, scenario)()
            except OutOfTime:
                raise
            except Exception as exc:
                log(f"{scenario} failed: {exc!r}")
                self.save(scenario, {"error": repr(exc)})
            log(f"{scenario}: {time.monotonic() - t0:.0f}s")


# -- reading results -------------------------------------------------------------------------------


def ladder_of(run: Json) -> Json | None:
    for ph in run.get("phases", []):
        if ph.get("kind") == "ladder":
            return ph
    return None


def best_step(run: Json) -> Json | None:
    """The passing step with the most deliveries per second, with what qualifies it."""
    ladder = ladder_of(run)
    if ladder is None or ladder.get("best") is None:
        return None
    b = ladder["best"]
    return {k: b.get(k) for k in ("rate", "posts_per_s", "deliveries_per_s", "delivery", "p50_ms",
                                  "p99_ms", "max_ms", "gen_cpu_pct", "gen_cpu_max_proc_pct",
                                  "machine_cpu_pct", "servers", "send_lag_p99_ms")} | {
        "first_failure_rate": ladder.get("first_failure_rate"),
        "ceiling_reached": ladder.get("ceiling_reached", True)}


def lowest_step(run: Json) -> Json | None:
    """The ladder's first (lowest-rate) step: what a design does when even that fails."""
    ladder = ladder_of(run)
    if ladder is None or not ladder.get("steps"):
        return None
    s = ladder["steps"][0]
    return {k: s.get(k) for k in ("rate", "delivery", "p50_ms", "p99_ms", "gen_cpu_pct", "pass")}


def memory_curve(run: Json, name: str) -> list[Json]:
    """KB per socket of process ``name`` at each "<n> sockets" measurement (all on that process):
    (RSS - RSS at the baseline) / sockets."""
    base: int | None = None
    curve: list[Json] = []
    for ph in run.get("phases", []):
        if ph.get("kind") != "measure":
            continue
        rss = (ph.get("rss_kb") or {}).get(name)
        if rss is None:
            continue
        if ph.get("label") == "baseline":
            base = rss
        elif base is not None and ph.get("label", "").endswith(" sockets") and ph.get("sockets"):
            point = {"sockets": ph["sockets"], "rss_kb": rss,
                     "kb_per_socket": round((rss - base) / ph["sockets"], 2)}
            if curve:  # what each socket added since the previous point
                prev = curve[-1]
                point["marginal_kb_per_socket"] = round(
                    (rss - prev["rss_kb"]) / max(1, ph["sockets"] - prev["sockets"]), 2)
            curve.append(point)
    return curve


def fd_headroom(pid: int) -> int:
    """How many more sockets the process may open: its RLIMIT_NOFILE minus what it has open,
    minus a margin for Redis, PostgreSQL and log files."""
    try:
        open_now = len(os.listdir(f"/proc/{pid}/fd"))
        with open(f"/proc/{pid}/limits") as f:
            for line in f:
                if line.startswith("Max open files"):
                    soft = int(line.split()[3])
                    return max(0, soft - open_now - 150)
    except OSError:
        pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 200


# -- the machine -----------------------------------------------------------------------------------


def machine() -> Json:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    versions = {}
    for pkg in ("django", "channels", "channels_redis", "redis", "uvicorn", "websockets", "uvloop",
                "psycopg"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[pkg] = importlib.metadata.version(pkg)
    redis_version = ""
    with contextlib.suppress(Exception):
        redis_version = subprocess.run(["redis-server", "--version"], capture_output=True, text=True,
                                       timeout=5).stdout.split()[2].removeprefix("v=")
    busy0, total0 = system_cpu()
    time.sleep(2)
    busy1, total1 = system_cpu()
    return {"nproc": os.cpu_count(), "cpu_model": model, "mem_gb": round(mem_kb / 1024 / 1024, 1),
            "kernel": platform.release(), "python": platform.python_version(), "packages": versions,
            "redis_server": redis_version, "nofile": resource.getrlimit(resource.RLIMIT_NOFILE),
            "loadavg_at_start": os.getloadavg(),
            "machine_cpu_pct_before_start": round(100 * (busy1 - busy0) / max(1.0, total1 - total0), 1)}


# -- summary ---------------------------------------------------------------------------------------


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 4)


def judge(r: float | None, goal: float, num_is_bound: bool, den_is_bound: bool) -> bool | None:
    """Met, missed, or None (inconclusive) when a ladder ran out before failing: a lower-bound
    numerator can only prove "met", a lower-bound denominator only "missed"."""
    if r is None:
        return False
    if num_is_bound and den_is_bound:
        return None
    if num_is_bound:
        return True if r >= goal else None
    if den_is_bound:
        return False if r < goal else None
    return r >= goal


def summarize(results: dict[str, Json], s: Settings) -> Json:
    targets: list[Json] = []
    fan = results.get("fanout", {}).get("best", {})
    for n, per in fan.items():
        # A design with no passing step delivers 0 msgs/s within the limits.
        dps = {d: (b or {}).get("deliveries_per_s", 0.0) for d, b in per.items()}
        lower_bound = [d for d, b in per.items() if b and not b.get("ceiling_reached", True)]
        gen = {d: (b or {}).get("gen_cpu_pct") for d, b in per.items()}
        for other, goal in (("tutorial", 10.0), ("raw", 0.5)):
            r = ratio(dps.get("hubbub"), dps.get(other))
            met = judge(r, goal, "hubbub" in lower_bound, other in lower_bound)
            if r is None and dps.get("hubbub") and not dps.get(other):
                met = True  # the other design had no passing step at all: any rate is > goal x 0
            targets.append({"target": f"fan-out {n} sockets: hubbub / {other} deliveries/s >= {goal:g}",
                            "value": r, "met": met,
                            "detail": {"deliveries_per_s": dps, "gen_cpu_pct": gen,
                                       "lower_bounds": lower_bound}})
    idle = results.get("idle", {})
    curve = idle.get("memory", {}).get("hubbub") or []
    if curve:
        top = curve[-1]
        targets.append({"target": "KB per idle socket <= 20 (one Hubbub instance)",
                        "value": top["kb_per_socket"], "met": top["kb_per_socket"] <= 20,
                        "detail": curve})
    traffic = idle.get("traffic")
    if traffic and "p99_ms" in traffic:
        sockets = idle.get("settings", {}).get("total")
        ok = (traffic.get("p99_ms") or 1e9) <= s.idle_p99_limit_ms and traffic.get("delivery") == 1.0
        targets.append({"target": f"{sockets} idle sockets + room traffic: p99 <= 500 ms, 100% delivered",
                        "value": traffic.get("p99_ms"), "met": ok,
                        "detail": {k: traffic.get(k) for k in ("rate", "delivery", "p50_ms", "p99_ms",
                                                              "max_ms", "gen_cpu_pct", "machine_cpu_pct")}})
    cu = results.get("catchup", {})
    if cu.get("seconds_median") is not None:
        targets.append({"target": f"catch-up of {cu['messages']} messages <= 1 s",
                        "value": round(cu["seconds_median"], 3),
                        "met": cu["seconds_median"] <= 1.0 and bool(cu.get("all_in_order")),
                        "detail": {"max_s": cu.get("seconds_max"), "in_order": cu.get("all_in_order")}})
    conv = results.get("conversion", {}).get("files", {})
    for name, entry in conv.items():
        through = entry.get("throughput", {})
        if name == "tiny" or "overhead" not in through:
            continue
        targets.append({"target": f"conversion {entry['file']} -> {entry['target']}: "
                                  f"{through['batch']} jobs <= 1.10 x {through['batch']} direct calls",
                        "value": round(1 + through["overhead"], 3), "met": through["overhead"] <= 0.10,
                        "detail": {"direct_s": round(entry["direct"]["wall_median_s"], 3),
                                   "batch_s": round(through["wall_s"], 3),
                                   "one_job_s": round(entry["job"].get("wall_median_s", 0), 3),
                                   "one_job_overhead": entry.get("overhead_wall"),
                                   "cpu_overhead": entry.get("overhead_cpu")}})
    return {"targets": targets}


def print_summary(summary: Json, results: dict[str, Json]) -> None:
    print()
    print("=" * 100)
    fan = results.get("fanout", {}).get("best", {})
    if fan:
        print("fan-out: best step with p99 <= 200 ms and 100% delivery (generator CPU % of one core)")
        print(f"  {'sockets':>7} {'design':>9} {'posts/s':>9} {'deliveries/s':>13} {'p50 ms':>8}"
              f" {'p99 ms':>8} {'gen cpu':>8} {'machine':>8}")
        for n, per in fan.items():
            for d, b in per.items():
                if b is None:
                    low = results["fanout"].get("lowest", {}).get(n, {}).get(d) or {}
                    print(f"  {n:>7} {d:>9}   no passing step (at {low.get('rate')} posts/s: "
                          f"p99 {low.get('p99_ms')} ms, delivery {low.get('delivery')})")
                    continue
                more = "" if b.get("ceiling_reached", True) else "  (ladder top: a lower bound)"
                print(f"  {n:>7} {d:>9} {b['posts_per_s']:>9} {b['deliveries_per_s']:>13} {b['p50_ms']:>8}"
                      f" {b['p99_ms']:>8} {b['gen_cpu_pct']:>7}% {b['machine_cpu_pct']:>7}%{more}")
    rooms = results.get("many_rooms", {}).get("best", {})
    if rooms:
        print("many rooms: best step with p99 <= 200 ms and 100% delivery")
        for d, b in rooms.items():
            if b:
                print(f"  {d:>9} {b['posts_per_s']:>9} posts/s {b['deliveries_per_s']:>11} deliveries/s "
                      f"p99 {b['p99_ms']} ms, gen cpu {b['gen_cpu_pct']}%")
            else:
                print(f"  {d:>9} (no passing step)")
    mem = results.get("idle", {}).get("memory", {})
    for d, curve in mem.items():
        points = ", ".join(f"{c['sockets']}: {c['kb_per_socket']} KB/socket" for c in curve)
        print(f"idle memory, {d}: {points}")
    print("targets:")
    for t in summary["targets"]:
        mark = {True: "MET   ", False: "MISSED", None: "UNSURE"}[t["met"]]
        print(f"  {mark} {t['target']}: {t['value']}")
    print("=" * 100)


# -- main ------------------------------------------------------------------------------------------


@contextlib.contextmanager
def hard_limit(seconds: float) -> Iterator[None]:
    def expired(signum: int, frame: object) -> None:
        raise OutOfTime(f"the run's time limit ({seconds:.0f}s) is up")

    def stopped(signum: int, frame: object) -> None:
        raise KeyboardInterrupt()

    old = signal.signal(signal.SIGALRM, expired)
    old_term = signal.signal(signal.SIGTERM, stopped)
    signal.alarm(int(seconds))
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
        signal.signal(signal.SIGTERM, old_term)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Hubbub's benchmark (docs/performance.md)")
    parser.add_argument("--quick", action="store_true", help="a smaller run, under 5 minutes")
    parser.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated scenarios")
    parser.add_argument("--out", type=Path, default=None,
                        help="results directory (default bench/results, or bench/results/quick)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (server logs)")
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(only) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    out = args.out or (ROOT / "bench" / "results" / ("quick" if args.quick else ""))
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="hubbub-bench-"))
    bench = Bench(settings, out, workdir)
    info: Json = {}
    status = 0
    try:
        with hard_limit(settings.total_limit_s):
            info = machine()
            log(f"{'quick' if settings.quick else 'full'} run: {info['nproc']} cores ({info['cpu_model']}), "
                f"{info['mem_gb']} GB; machine busy {info['machine_cpu_pct_before_start']}% before start")
            bench.run(only)
    except (OutOfTime, KeyboardInterrupt) as exc:
        log(f"stopped: {exc!r}")
        status = 1
    finally:
        log("stopping everything this run started")
        bench.cluster.close()
        if args.keep or status:
            log(f"logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    from bench import plots

    summary = summarize(bench.results, settings)
    summary.update({"machine": info, "settings": asdict(settings),
                    "elapsed_s": round(time.monotonic() - bench.started, 1),
                    "loadavg_at_end": os.getloadavg(), "scenarios": sorted(bench.results)})
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    try:
        written = plots.write_all(bench.results, out)
        log("plots: " + ", ".join(str(p) for p in written))
    except Exception as exc:
        log(f"plots failed: {exc!r}")
    print_summary(summary, bench.results)
    log(f"results in {out} ({summary['elapsed_s']:.0f}s)")
    return status


if __name__ == "__main__":
    sys.exit(main())
