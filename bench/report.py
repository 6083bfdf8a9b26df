"""Markdown tables of a benchmark run's results, for docs/performance.md.

    python -m bench.report [bench/results]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

Json = dict[str, Any]
DETAILS = ["<details><summary>every step</summary>", ""]


def load(out: Path, name: str) -> Json:
    path = out / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else {}


def num(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def cpu(step: Json) -> str:
    servers = step.get("servers", {})
    parts = [f"{num(v.get('cpu_pct'), 0)}" for k, v in servers.items() if k != "redis"]
    return " + ".join(parts) + " %"


def ladder(run: Json) -> Json:
    for ph in run.get("phases", []):
        if ph.get("kind") == "ladder":
            return ph
    return {}


def best_table(runs: dict[str, Json], title: str) -> list[str]:
    lines = [f"**{title}**", "",
             "| design | posts/s | deliveries/s | p50 ms | p99 ms | delivered | servers' CPU | generator CPU "
             "| machine CPU | first failing rate |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for design, run in runs.items():
        lad = ladder(run)
        b = lad.get("best")
        if b is None:
            f = (lad.get("steps") or [{}])[0]
            lines.append(f"| {design} | none passed | 0 | {num(f.get('p50_ms'))} | {num(f.get('p99_ms'))} "
                         f"| {num(f.get('delivery'), 3)} | {cpu(f)} | {num(f.get('gen_cpu_pct'))} % "
                         f"| {num(f.get('machine_cpu_pct'))} % | {num(f.get('rate'))} |")
            continue
        bound = "" if lad.get("ceiling_reached", True) else " (≥, ladder top)"
        lines.append(f"| {design} | {num(b['posts_per_s'])} | {num(b['deliveries_per_s'], 0)}{bound} "
                     f"| {num(b['p50_ms'])} | {num(b['p99_ms'])} | {num(b['delivery'], 3)} | {cpu(b)} "
                     f"| {num(b['gen_cpu_pct'])} % | {num(b['machine_cpu_pct'])} % "
                     f"| {num(lad.get('first_failure_rate'))} |")
    return lines


def steps_table(runs: dict[str, Json]) -> list[str]:
    lines = ["| design | posts/s | delivered | p50 ms | p90 ms | p99 ms | max ms | servers' CPU | gen CPU "
             "| machine CPU | pass |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for design, run in runs.items():
        for s in sorted(ladder(run).get("steps", []), key=lambda s: s["rate"]):
            lines.append(f"| {design} | {num(s['rate'])} | {num(s['delivery'], 3)} | {num(s['p50_ms'])} "
                         f"| {num(s['p90_ms'])} | {num(s['p99_ms'])} | {num(s['max_ms'])} | {cpu(s)} "
                         f"| {num(s['gen_cpu_pct'])} % | {num(s['machine_cpu_pct'])} % "
                         f"| {'yes' if s['pass'] else 'no'} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0]) if args else Path(__file__).resolve().parent / "results"
    lines: list[str] = []
    fan = load(out, "fanout")
    for n, runs in fan.get("runs", {}).items():
        lines += [*best_table(runs, f"Fan-out, 1 room, {n} sockets over 2 instances"), ""]
        lines += [*DETAILS, *steps_table(runs), "", "</details>", ""]
    rooms = load(out, "many_rooms")
    if rooms.get("runs"):
        s = rooms["settings"]
        lines += [*best_table(rooms["runs"], f"{s['rooms']} rooms x {s['room_size']} sockets"), ""]
        lines += [*DETAILS, *steps_table(rooms["runs"]), "", "</details>", ""]
    idle = load(out, "idle")
    if idle.get("memory"):
        lines += ["| design | sockets on one process | RSS MB | KB per socket | KB per added socket |",
                  "|---|---:|---:|---:|---:|"]
        for design, curve in idle["memory"].items():
            for c in curve:
                lines.append(f"| {design} | {num(c['sockets'])} | {num(c['rss_kb'] / 1024, 0)} "
                             f"| {num(c['kb_per_socket'])} | {num(c.get('marginal_kb_per_socket'))} |")
        lines.append("")
        for design, run in idle.get("runs", {}).items():
            for ph in run.get("phases", []):
                if ph.get("kind") == "connect":
                    lines.append(f"* {design}: connected {num(ph['new'])} more sockets in "
                                 f"{num(ph['seconds'])} s ({num(ph['connects_per_s'], 0)}/s), "
                                 f"{ph['failed']} failed")
        t = idle.get("traffic")
        if t:
            lines += ["", f"Traffic with {num(idle['settings']['total'])} sockets: {num(t['rate'])} posts/s "
                      f"for {num(t['seconds'])} s: delivered {num(t['delivery'], 3)}, p50 {num(t['p50_ms'])} "
                      f"ms, p99 {num(t['p99_ms'])} ms, max {num(t['max_ms'])} ms; servers {cpu(t)}, "
                      f"generator {num(t['gen_cpu_pct'])} % ({t['gen_procs']} processes), "
                      f"machine {num(t['machine_cpu_pct'])} %"]
        lines.append("")
    cu = load(out, "catchup")
    if cu.get("runs"):
        lines += ["| catch-up socket | messages | seconds | first message after | in order |",
                  "|---|---:|---:|---:|---|"]
        for r in cu["runs"]:
            lines.append(f"| {r['label']} | {num(r['received'])} | {num(r['seconds'], 3)} "
                         f"| {num(r['first_message_s'], 3)} s | {r['in_order']} |")
        lines += ["", f"Seeding: {num(cu['seed']['posted'])} posts through `post_message` in "
                  f"{num(cu['seed']['seconds'])} s.", ""]
    conv = load(out, "conversion")
    if conv.get("files"):
        lines += ["| file | bytes | direct s (median) | job s (median) | upload s | overhead (wall) "
                  "| direct CPU s | worker + server CPU s | overhead (CPU) |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for e in conv["files"].values():
            j = e["job"]
            if "wall_median_s" not in j:
                lines.append(f"| {e['file']} → {e['target']} | {num(e['bytes'])} | {j.get('errors')} |")
                continue
            uploads = sorted(j["upload_s"])
            job_cpu = sum(j["cpu_median_s"].values())
            cpu_over = e.get("overhead_cpu")
            cpu_text = "-" if cpu_over is None else f"{100 * cpu_over:+.0f} %"
            lines.append(
                f"| {e['file']} → {e['target']} | {num(e['bytes'])} | {num(e['direct']['wall_median_s'], 3)} "
                f"| {num(j['wall_median_s'], 3)} | {num(uploads[len(uploads) // 2], 3)} "
                f"| {100 * e['overhead_wall']:+.0f} % ({num(e['fixed_cost_ms'], 0)} ms) "
                f"| {num(e['direct']['cpu_median_s'], 3)} | {num(job_cpu, 2)} "
                f"| {cpu_text} |")
        lines.append("")
        through = [e for e in conv["files"].values() if "overhead" in e.get("throughput", {})]
        if through:
            lines += ["| file | jobs at once (1 worker) | all done after s | jobs/s | direct calls/s "
                      "| overhead |", "|---|---:|---:|---:|---:|---:|"]
            for e in through:
                t = e["throughput"]
                lines.append(f"| {e['file']} → {e['target']} | {t['batch']} | {num(t['wall_s'], 3)} "
                             f"| {num(t['jobs_per_s'], 2)} | {num(t['direct_per_s'], 2)} "
                             f"| {100 * t['overhead']:+.0f} % |")
            lines.append("")
    summary = load(out, "summary")
    if summary.get("targets"):
        lines += ["| target | measured | met |", "|---|---:|---|"]
        verdicts = {True: "yes", False: "**no**", None: "inconclusive"}
        for t in summary["targets"]:
            lines.append(f"| {t['target']} | {num(t['value'], 3)} | {verdicts[t['met']]} |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
