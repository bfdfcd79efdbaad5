"""Huey: ``huey_consumer bench.peers.huey_app.huey -w 8 -k thread`` (a ``RedisHuey`` with its
defaults; 8 worker threads in one process, Huey's usual way to run many). Huey stores a
result only when a task returns something other than None."""

from __future__ import annotations

import os

from huey import RedisHuey
from redis import Redis

URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
huey = RedisHuey("peers", url=URL)
counter = Redis.from_url(URL)


@huey.task()
def count() -> None:
    counter.incr("bench:done")


@huey.task()
def echo() -> int:
    return 1
