"""The PNGs of ``bench/cost_curve.py``: one per series, drain rate and CPU per task.

    .venv/bin/python -m bench.cost_curve_plot bench/results-cost-curve-*.json [--out bench]

Writes ``cost-curve-backlog.png``, ``cost-curve-queues.png`` and ``cost-curve-payload.png``
(the series present in the files). Each point is the median of its windows; the bars span
their lowest and highest value.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

LABELS = {
    "backlog": "tasks queued (log scale)",
    "queues": "queues consumed by the worker (log scale)",
    "payload": "payload: argument bytes (log scale)",
}
COLORS = {"redis": "tab:red", "sqlite": "tab:blue"}


def spread(point: dict[str, Any], key: str) -> tuple[float, float, float]:
    """(median, lowest, highest) of a window value: tasks/s, or CPU µs per task."""
    if key == "rate":
        values = [w["tasks"] / w["seconds"] for w in point["windows"]]
    else:
        values = [w[key] / w["tasks"] * 1e6 for w in point["windows"]]
    return statistics.median(values), min(values), max(values)


def plot(series: str, points: list[dict[str, Any]], out: Path, note: str) -> Path:
    fig, (rate_ax, cpu_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    for broker in sorted({p["broker"] for p in points}):
        mine = sorted((p for p in points if p["broker"] == broker), key=lambda p: p["x"])
        measured = [p for p in mine if p["windows"]]
        xs = [p["x"] for p in measured]
        color = COLORS.get(broker)
        curves = [(rate_ax, "rate", f"{broker}", "-")]
        curves.append((cpu_ax, "worker_cpu", f"{broker}: worker", "-"))
        if broker == "redis":
            curves.append((cpu_ax, "server_cpu", "redis: redis-server", "--"))
        for ax, key, label, style in curves:
            stats = [spread(p, key) for p in measured]
            mid = [s[0] for s in stats]
            err = [[s[0] - s[1] for s in stats], [s[2] - s[0] for s in stats]]
            ax.errorbar(
                xs, mid, yerr=err, label=label, color=color, ls=style, marker="o", capsize=3
            )
        for p in mine:
            if p["skipped"]:
                rate_ax.annotate(f"{broker}: {p['x']:,} skipped", (p["x"], 0), color=color)
    rate_ax.set_title("drain rate (tasks/s)")
    cpu_ax.set_title("CPU time per task (µs)")
    # A window starved by other load can cost many times the rest: keep the medians readable.
    tops = [spread(p, k)[0] for p in points if p["windows"] for k in ("worker_cpu", "server_cpu")]
    cpu_ax.set_ylim(0, 1.6 * max(tops))
    for ax in (rate_ax, cpu_ax):
        ax.set_xscale("log")
        xs = sorted({p["x"] for p in points})
        ax.set_xticks(xs, [f"{x:,}" for x in xs])
        ax.minorticks_off()
        ax.set_xlabel(LABELS[series])
        if ax is rate_ax:
            ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Conveyor cost curve: {series} ({note})", fontsize=10)
    fig.tight_layout()
    path = out / f"cost-curve-{series}.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("json", nargs="+", type=Path, help="files written by cost_curve --json")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    points: list[dict[str, Any]] = []
    dates, loads = set(), []
    for path in args.json:
        data = json.loads(path.read_text())
        points += data["points"]
        dates.add(data["machine"]["date"][:10])
        loads += [p["load"] for p in data["points"] if p["windows"]]
    note = (
        f"default worker -c 2, results off; {', '.join(sorted(dates))}, "
        f"load average {min(loads):.0f}-{max(loads):.0f} on {os.cpu_count()} cores"
    )
    for series in LABELS:
        mine = [p for p in points if p["series"] == series]
        if mine:
            print(plot(series, mine, args.out, note))
    return 0


if __name__ == "__main__":
    sys.exit(main())
