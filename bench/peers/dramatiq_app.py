"""Dramatiq: ``dramatiq bench.peers.dramatiq_app -p 2`` (2 processes x Dramatiq's default 8
threads) on its Redis broker. ``echo`` stores its result with the Results middleware (Redis
backend), which Dramatiq needs for ``get_result``."""

from __future__ import annotations

import os

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend
from redis import Redis

URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
broker = RedisBroker(url=URL)
broker.add_middleware(Results(backend=RedisBackend(url=URL)))
dramatiq.set_broker(broker)
counter = Redis.from_url(URL)


@dramatiq.actor(actor_name="peers.count")
def count() -> None:
    counter.incr("bench:done")


@dramatiq.actor(actor_name="peers.echo", store_results=True)
def echo() -> int:
    return 1
