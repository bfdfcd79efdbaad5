"""Round-trip latency in a fresh client process: ``python -m bench._latency conveyor|celery N``.

A fresh process keeps the measurement clean: a Celery client that has sent thousands of tasks
with results on still holds a result subscription for each of them. Prints the samples (s) as
JSON. Brokers come from ``$CONVEYOR_BROKER_URL`` / ``$BENCH_REDIS_URL``.
"""

from __future__ import annotations

import json
import sys
import time


def main() -> None:
    side, count = sys.argv[1], int(sys.argv[2])
    if side == "conveyor":
        from bench.conveyor_app import noop_result
    else:
        from bench.celery_app import noop_result  # type: ignore[assignment]
    for _ in range(20):  # connections, scripts, subscriptions
        noop_result.delay().get(timeout=10)
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        noop_result.delay().get(timeout=10)
        samples.append(time.perf_counter() - start)
    json.dump(samples, sys.stdout)


if __name__ == "__main__":
    main()
