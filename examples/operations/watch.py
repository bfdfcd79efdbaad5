"""Events, inspect/control and queue pause on one in-process worker (memory broker).

    python examples/operations/watch.py

The same calls work against a fleet of ``conveyor worker`` processes on SQLite or Redis.
"""

from __future__ import annotations

from conveyor import Conveyor
from conveyor.events import EventFilter
from conveyor.testing import TestWorker

app = Conveyor(
    "watch", broker="memory://", result_backend="memory://", worker_send_task_events=True
)


@app.task(name="shop.add")
def add(x: int, y: int) -> int:
    return x + y


@app.task(name="shop.boom")
def boom() -> None:
    raise ValueError("out of stock")


with TestWorker(app, hostname="shop-worker") as worker:
    add.delay(2, 3).get(timeout=5)
    boom.delay()
    worker.run_until_idle(propagate=False)

    # Events: the history, filtered (a live tail is app.events.follow(...)).
    app.events.flush()
    for event in app.events.read(where=EventFilter.of(names=["shop.*"])):
        print(event.type, event.name, event.get("exception", ""))

    # Inspect and control, Celery's names.
    print("ping:", app.control.inspect(timeout=5).ping())
    print("rate limit:", app.control.rate_limit("shop.add", "10/s", reply=True, timeout=5))

    # Durable pause: no worker leases from 'default' until resumed.
    app.control.pause_queue("default")
    print("paused:", app.control.paused_queues())
    app.control.resume_queue("default")
