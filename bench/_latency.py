"""Round-trip latency in a fresh client process: ``python -m bench._latency SIDE N [PAUSE]``.

SIDE is ``conveyor``, ``celery`` or ``huey``. Each of the N samples is one ``delay().get()``
(Huey: ``task().get(blocking=True)``). With PAUSE (seconds), the client waits that long
before each sample, so the worker has gone idle: the sample then includes how fast an idle
worker picks up new work (SQLite workers poll with a backoff; Redis workers block on a wake-up
list). A fresh process keeps the measurement clean: a Celery client that has sent thousands of
tasks with results on still holds a result subscription for each of them. Prints the samples
(s) as JSON. Brokers come from ``$CONVEYOR_BROKER_URL`` / ``$BENCH_REDIS_URL`` /
``$BENCH_HUEY_DB``. :func:`measure` runs it from a benchmark.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
#: Seconds without work before each "after idle" sample: longer than the SQLite broker's
#: longest poll interval (25 ms), so its worker has backed off fully.
IDLE_PAUSE = 0.2


def measure(side: str, count: int, env: Mapping[str, str], pause: float = 0.0) -> list[float]:
    """``count`` round trips of ``side`` (see the module docstring), timed in a new process."""
    done = subprocess.run(
        [sys.executable, "-m", "bench._latency", side, str(count), str(pause)],
        cwd=ROOT,
        env=dict(env),
        capture_output=True,
        timeout=120 + count * (pause + 1.0),
        check=True,
    )
    return [float(x) for x in json.loads(done.stdout)]


def _round_trip(side: str) -> Callable[[], Any]:
    if side == "conveyor":
        from bench.conveyor_app import noop_result

        return lambda: noop_result.delay().get(timeout=10)
    if side == "celery":
        from bench.celery_app import noop_result as celery_task

        return lambda: celery_task.delay().get(timeout=10)
    from bench.huey_app import noop_result as huey_task

    return lambda: huey_task().get(blocking=True, timeout=10)


def main() -> None:
    side, count = sys.argv[1], int(sys.argv[2])
    pause = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
    round_trip = _round_trip(side)
    for _ in range(20):  # connections, scripts, subscriptions
        round_trip()
    samples = []
    for _ in range(count):
        if pause:
            time.sleep(pause)  # let the worker go idle
        start = time.perf_counter()
        round_trip()
        samples.append(time.perf_counter() - start)
    json.dump(samples, sys.stdout)


if __name__ == "__main__":
    main()
