"""Celery: ``celery -A bench.peers.celery_app worker -P prefork -c 2`` with Celery's defaults
(prefork, ``task_acks_late=False``, prefetch 4 per process, JSON), results in the same Redis."""

from __future__ import annotations

import os

from celery import Celery
from redis import Redis

URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
app = Celery("peers", broker=URL, backend=URL)
app.conf.broker_connection_retry_on_startup = True  # only silences a deprecation warning
counter = Redis.from_url(URL)


@app.task(name="peers.count", ignore_result=True)
def count() -> None:
    counter.incr("bench:done")


@app.task(name="peers.echo")
def echo() -> int:
    return 1
