"""Middleware example: stamp every message when it is sent, and count outcomes per state
and time the slowest task when it has run.

Run it from the repository root:  .venv/bin/python examples/middleware/timing.py
"""

from __future__ import annotations

import collections
import time

from conveyor import Conveyor, Middleware
from conveyor.message import Envelope
from conveyor.testing import TestWorker
from conveyor.worker.job import Job, Outcome


class Timing(Middleware):
    """Counts outcomes by state and remembers the slowest task."""

    def __init__(self) -> None:
        self.states: collections.Counter[str] = collections.Counter()
        self.slowest = (0.0, "")

    def before_publish(self, app: Conveyor, envelope: Envelope) -> None:
        envelope.headers["sent_at"] = time.time()  # travels with the message

    def after_process(self, job: Job, outcome: Outcome) -> None:
        self.states[outcome.state] += 1
        if outcome.runtime > self.slowest[0]:
            self.slowest = (outcome.runtime, job.task.name)


timing = Timing()
app = Conveyor("example", broker="memory://", middleware=[timing])


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task
def nap(seconds: float) -> None:
    time.sleep(seconds)


@app.task
def fail() -> None:
    raise ValueError("on purpose")


if __name__ == "__main__":
    for i in range(10):
        add.delay(i, i)
    nap.delay(0.05)
    fail.delay()
    with TestWorker(app) as worker:
        worker.run_until_idle(propagate=False)
    print(f"states: {dict(sorted(timing.states.items()))}; slowest: {timing.slowest[1]}")
