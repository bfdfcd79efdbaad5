"""The Celery side of the Redis benchmark: ``celery -A bench.celery_app worker``.

Broker and result backend are ``$BENCH_REDIS_URL`` (the broker ``$BENCH_BROKER_URL`` when set,
e.g. RabbitMQ in ``bench.amqp_vs_celery``). Settings are Celery's defaults
(``task_acks_late=False``, ``worker_prefetch_multiplier=4``) unless ``$BENCH_CELERY_ACKS_LATE``
is ``1``, which sets ``task_acks_late=True`` (Conveyor's default guarantee).
"""

from __future__ import annotations

import os

from celery import Celery

url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
app = Celery("bench", broker=os.environ.get("BENCH_BROKER_URL") or url, backend=url)
app.conf.broker_connection_retry_on_startup = True  # only silences a deprecation warning
if os.environ.get("BENCH_CELERY_ACKS_LATE") == "1":
    app.conf.task_acks_late = True


@app.task(name="bench.noop", ignore_result=True)
def noop() -> None:
    return None


@app.task(name="bench.noop_result")
def noop_result() -> None:
    return None
