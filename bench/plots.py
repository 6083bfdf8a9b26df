"""PNG plots of a benchmark run (matplotlib, Agg backend): latency percentiles against offered
load per design, and memory against sockets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

Json = dict[str, Any]
COLORS = {"hubbub": "#1f77b4", "tutorial": "#d62728", "raw": "#2ca02c"}


def _ladder_steps(run: Json) -> list[Json]:
    for ph in run.get("phases", []):
        if ph.get("kind") == "ladder":
            return sorted(ph.get("steps", []), key=lambda s: s["rate"])
    return []


def latency_plot(runs: dict[str, Json], title: str, path: Path, limit_ms: float) -> Path | None:
    """p50 (dotted), p90 (dashed), p99 (solid) against offered posts/s; a cross marks a step that
    failed (p99 over the limit, or delivery under 100%)."""
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.6))
    drawn = False
    for design, run in runs.items():
        steps = [s for s in _ladder_steps(run) if s.get("p99_ms") is not None]
        if not steps:
            continue
        drawn = True
        color = COLORS.get(design, "black")
        x = [s["rate"] for s in steps]
        for key, style in (("p50_ms", ":"), ("p90_ms", "--"), ("p99_ms", "-")):
            ax.plot(x, [max(0.05, s[key]) for s in steps], style, color=color, marker="o", markersize=3,
                    label=f"{design} {key[:3]}")
        failed = [s for s in steps if not s.get("pass")]
        ax.plot([s["rate"] for s in failed], [max(0.05, s["p99_ms"]) for s in failed], "x", color=color,
                markersize=10, mew=2)
        server_cpu = [sum(v["cpu_pct"] or 0 for k, v in s["servers"].items() if k != "redis") for s in steps]
        ax2.plot(x, server_cpu, "-o", color=color, markersize=3, label=f"{design}: its 2 servers")
        ax2.plot(x, [s["gen_cpu_pct"] for s in steps], ":", color=color, label=f"{design}: generator")
    if not drawn:
        plt.close(fig)
        return None
    ax.axhline(limit_ms, color="grey", lw=1)
    ax.text(ax.get_xlim()[0], limit_ms * 1.08, f" {limit_ms:g} ms", color="grey", fontsize=8)
    ax.set(xscale="log", yscale="log", xlabel="offered load (posts/s into the room(s))",
           ylabel="receive latency (ms)", title=f"{title}: latency (x = failed step)")
    ax.legend(fontsize=7, ncol=3)
    ax.grid(True, which="both", alpha=0.3)
    ax2.set(xscale="log", xlabel="offered load (posts/s)", ylabel="CPU, % of one core (2 cores in all)",
            title=f"{title}: CPU (dotted = load generator)")
    ax2.legend(fontsize=8)
    ax2.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def memory_plot(memory: dict[str, list[Json]], path: Path) -> Path | None:
    if not any(memory.values()):
        return None
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.4))
    for design, curve in memory.items():
        if not curve:
            continue
        color = COLORS.get(design, "black")
        x = [c["sockets"] for c in curve]
        ax.plot(x, [c["kb_per_socket"] for c in curve], "-o", color=color, label=design)
        ax2.plot(x, [c["rss_kb"] / 1024 for c in curve], "-o", color=color, label=design)
    ax.axhline(20, color="grey", lw=1)
    ax.text(ax.get_xlim()[0], 20.5, " 20 KB target", color="grey", fontsize=8)
    ax.set(xlabel="idle sockets on one server process", ylabel="KB per socket (RSS growth / sockets)",
           title="memory per idle socket", ylim=(0, None))
    ax2.set(xlabel="idle sockets on one server process", ylabel="RSS (MB)", title="server RSS",
            ylim=(0, None))
    for a in (ax, ax2):
        a.grid(True, alpha=0.3)
        a.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def conversion_plot(conv: Json, path: Path) -> Path | None:
    files = {k: v for k, v in conv.get("files", {}).items() if "wall_median_s" in v.get("job", {})}
    if not files:
        return None
    fig, ax = plt.subplots(figsize=(8, 4))
    names = list(files)
    xs = range(len(names))
    direct = [files[n]["direct"]["wall_median_s"] for n in names]
    job = [files[n]["job"]["wall_median_s"] for n in names]
    ax.bar([x - 0.2 for x in xs], direct, 0.4, label="converter called directly")
    ax.bar([x + 0.2 for x in xs], job, 0.4, label="as a job (upload → done)")
    for x, d, j in zip(xs, direct, job, strict=True):
        ax.text(x + 0.2, j, f"+{1000 * (j - d):.0f} ms\n(+{100 * (j / d - 1):.0f}%)", ha="center",
                va="bottom", fontsize=7)
    ax.set_xticks(list(xs), [f"{n}\n{files[n]['file']}→{files[n]['target']}" for n in names], fontsize=8)
    ax.set(ylabel="seconds (median)", yscale="log", title="conversion: direct vs job")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_all(results: dict[str, Json], out: Path) -> list[Path]:
    """Every plot the results allow; returns the files written."""
    written: list[Path | None] = []
    fan = results.get("fanout", {})
    limit = fan.get("settings", {}).get("p99_limit_ms", 200.0)
    for n, runs in fan.get("runs", {}).items():
        written.append(latency_plot(runs, f"fan-out, 1 room x {n} sockets", out / f"fanout_{n}.png", limit))
    rooms = results.get("many_rooms", {})
    if rooms.get("runs"):
        s = rooms.get("settings", {})
        written.append(latency_plot(rooms["runs"], f"{s.get('rooms')} rooms x {s.get('room_size')} sockets",
                                    out / "many_rooms.png", limit))
    idle = results.get("idle", {})
    if idle.get("memory"):
        written.append(memory_plot(idle["memory"], out / "idle_memory.png"))
    if results.get("conversion", {}).get("files"):
        written.append(conversion_plot(results["conversion"], out / "conversion.png"))
    return [p for p in written if p is not None]


def main(argv: list[str] | None = None) -> int:
    """Redraw the plots of a results directory: ``python -m bench.plots [bench/results]``."""
    import json
    import sys

    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0]) if args else Path(__file__).resolve().parent / "results"
    results = {p.stem: json.loads(p.read_text()) for p in out.glob("*.json") if p.stem != "summary"}
    for path in write_all(results, out):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
