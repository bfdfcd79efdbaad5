"""Conveyor: ``python -m conveyor worker -A bench.peers.conveyor_app -c 2`` (defaults)."""

from __future__ import annotations

import os

from redis import Redis

from conveyor import Conveyor

URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
app = Conveyor("peers", broker=URL)
counter = Redis.from_url(URL)


@app.task(name="peers.count", ignore_result=True)
def count() -> None:
    counter.incr("bench:done")


@app.task(name="peers.echo")
def echo() -> int:
    return 1
