"""Soft and hard time limits of running tasks: one timer thread sleeping until the earliest
deadline of a heap."""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import threading
import time
from collections.abc import Callable

from ..exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from .inflight import InFlight, Running
from .job import Job
from .loops import LoopErrors

logger = logging.getLogger("conveyor.worker")

#: The timer never sleeps longer than this in one wait (a far deadline is re-checked).
MAX_WAIT = 3600.0


class TimeLimits:
    """Interrupts a task that runs past its soft limit (``SoftTimeLimitExceeded``) or hard
    limit (``TimeLimitExceeded``, or ``on_hard_limit`` instead: the supervisor kills the
    process). Call :meth:`run` on a thread; it returns once ``stopped`` is set and
    :meth:`wake` was called. An error while acting on one deadline is logged and the timer
    goes on with the next: one bad task never switches off the limits of the others."""

    def __init__(
        self,
        inflight: InFlight,
        stopped: threading.Event,
        interrupt: Callable[[Running, type[BaseException]], None],
        on_hard_limit: Callable[[Job], None] | None = None,
    ) -> None:
        self._inflight = inflight
        self._stopped = stopped
        self._interrupt = interrupt
        self._on_hard_limit = on_hard_limit
        self._timers: list[tuple[float, int, str, Running]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._errors = LoopErrors("time limits")

    def arm(self, control: Running) -> None:
        envelope = control.job.envelope
        if not (envelope.soft_time_limit or envelope.time_limit):
            return  # most tasks: nothing to arm, no need to wake the timer thread
        soft, hard = envelope.soft_time_limit, envelope.time_limit
        now = time.monotonic()
        with self._cond:
            first = self._timers[0][0] if self._timers else None
            if soft and _usable(soft):
                heapq.heappush(self._timers, (now + soft, next(self._seq), "soft", control))
            if hard and _usable(hard):
                heapq.heappush(self._timers, (now + hard, next(self._seq), "hard", control))
            if first is None or self._timers[0][0] < first:
                self._cond.notify()  # it sleeps until the earliest deadline: a new one

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def run(self) -> None:
        while not self._stopped.is_set():
            with self._cond:
                while not self._timers and not self._stopped.is_set():
                    self._cond.wait()
                if self._stopped.is_set():
                    return
                due, _, kind, control = self._timers[0]
                delay = due - time.monotonic()
                if delay > 0:
                    self._cond.wait(min(delay, MAX_WAIT))
                    continue
                heapq.heappop(self._timers)
            try:
                self._expired(kind, control)
            except Exception as exc:
                self._errors.failed(exc)

    def _expired(self, kind: str, control: Running) -> None:
        if self._inflight.get(control.job.envelope.id) is None or not control.active:
            return
        job = control.job
        if kind == "soft":
            logger.warning("%s[%s] soft time limit exceeded", job.task.name, job.envelope.id)
            self._interrupt(control, SoftTimeLimitExceeded)
        elif self._on_hard_limit is not None:
            self._on_hard_limit(job)
        else:
            logger.error("%s[%s] hard time limit exceeded", job.task.name, job.envelope.id)
            self._interrupt(control, TimeLimitExceeded)


def _usable(limit: float) -> bool:
    """A limit to arm: positive and finite (decoding refuses the others; 0 means none)."""
    return limit > 0 and math.isfinite(limit)
