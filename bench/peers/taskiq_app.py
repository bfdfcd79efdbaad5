"""taskiq: ``taskiq worker bench.peers.taskiq_app:broker --workers 2`` on taskiq-redis's
``ListQueueBroker`` (a Redis list, as Celery's and Huey's), results in Redis. Its tasks are
async; the counter uses redis-py's asyncio client."""

from __future__ import annotations

import os

from redis.asyncio import Redis
from taskiq_redis import ListQueueBroker, RedisAsyncResultBackend

URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
broker = ListQueueBroker(URL).with_result_backend(RedisAsyncResultBackend(URL))
_counter: Redis | None = None


def counter() -> Redis:
    global _counter
    if _counter is None:  # one client per worker process, made inside its event loop
        _counter = Redis.from_url(URL)
    return _counter


@broker.task(task_name="peers.count")
async def count() -> None:
    await counter().incr("bench:done")


@broker.task(task_name="peers.echo")
async def echo() -> int:
    return 1
