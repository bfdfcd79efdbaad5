"""Delayed STARTED records.

STARTED is recorded once a task has run for ``worker_started_delay`` (0.1 s): a *started*
thread stores, in one call, the records of the tasks that ran that long, holding their
control locks so that none can end (and store its outcome) before its STARTED record landed.
A task that ends sooner goes from QUEUED straight to its outcome, whose record carries the
start time: no round trip for a state nobody could have seen. ``acks_late=False`` tasks
record STARTED at once, in the round trip of their early ack (see
:mod:`conveyor.worker.consumer`).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from functools import partial

from ..results.base import ResultRecord
from .inflight import InFlight, Running
from .loops import LoopErrors


class StartedRecords:
    """Stores the STARTED records of tasks running longer than ``delay``. Call :meth:`run`
    on a thread; it returns once ``stopped`` is set. An unexpected error in one round is
    logged and the next round goes on."""

    def __init__(
        self,
        inflight: InFlight,
        stopped: threading.Event,
        delay: float,
        store: Callable[[list[ResultRecord]], None],
    ) -> None:
        self._inflight = inflight
        self._stopped = stopped
        self.delay = delay
        self._store = store

    def defer(self, control: Running, record: ResultRecord) -> None:
        """Keep ``record`` until the task ran ``delay`` seconds (or drop it when the task
        records its own state first)."""
        control.started = record  # stored if it runs long enough
        control.job.request.before_state_update = partial(self._drop, control)

    def run(self) -> None:
        delay = self.delay
        errors = LoopErrors("started records")
        while not self._stopped.wait(delay / 2):
            began = time.monotonic() - delay
            try:
                due = [
                    control
                    for control in self._inflight.controls()
                    if control.started is not None and control.active and control.since <= began
                ]
                if due:
                    self._record(due)
            except Exception as exc:
                errors.failed(exc)

    @staticmethod
    def _drop(control: Running) -> None:
        """The task records its own state: its STARTED record must not follow (or be
        stored after) it."""
        with control.lock:  # waits for a STARTED record being stored right now
            control.started = None

    def _record(self, due: list[Running]) -> None:
        with contextlib.ExitStack() as locked:
            records: list[ResultRecord] = []
            for control in due:
                # Held until stored: the task cannot end and store its outcome before.
                locked.enter_context(control.lock)
                if control.active and control.started is not None:
                    records.append(control.started)
                    control.started = None
            if records:
                self._store(records)
