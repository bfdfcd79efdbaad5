"""The Conveyor side of the benchmarks: ``conveyor worker -A bench.conveyor_app``.

The broker comes from ``$CONVEYOR_BROKER_URL`` (read by Conveyor itself); everything else is
Conveyor's default (``BENCH_EVENTS=on|off`` turns events on or off,
``BENCH_PREFETCH_MAX=N`` sets ``worker_prefetch_max``). ``noop`` stores no result
(``ignore_result=True``); ``noop_result`` does; ``clock`` returns when it started (time.time());
``incr`` INCRs a counter in the Redis at ``$BENCH_REDIS_URL`` (no result), the task body of
``bench.redis_peers``: a task that does one blocking round trip of its own.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

from conveyor import Conveyor

if TYPE_CHECKING:
    from redis import Redis

#: ``BENCH_EVENTS=on`` / ``off``: the workers (and this producer) emit events or not
#: (default: Conveyor's default, off).
_EVENTS = {"on": True, "off": False}.get(os.environ.get("BENCH_EVENTS", ""))
_SETTINGS: dict[str, object] = {} if _EVENTS is None else {"worker_send_task_events": _EVENTS}
if os.environ.get("BENCH_PREFETCH_MAX"):  # the adaptive prefetch's cap (a variant to compare)
    _SETTINGS["worker_prefetch_max"] = int(os.environ["BENCH_PREFETCH_MAX"])
app = Conveyor("bench", **_SETTINGS)


@app.task(name="bench.noop", ignore_result=True)
def noop() -> None:
    return None


@app.task(name="bench.noop_result")
def noop_result() -> None:
    return None


_counter: Redis | None = None


@app.task(name="bench.incr", ignore_result=True)
def incr() -> None:
    global _counter
    if _counter is None:  # made in the worker process that runs it (connections and fork)
        from redis import Redis

        _counter = Redis.from_url(os.environ["BENCH_REDIS_URL"])
    _counter.incr("bench:done")


@app.task(name="bench.clock")
def clock() -> float:
    return time.time()
