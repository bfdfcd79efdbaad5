"""Per-worker task rate limits: the fallback of ``rate_limit="5/s"`` on brokers that keep no
cluster-wide limits (RabbitMQ with a Django result store; elsewhere ``conveyor.limits`` keeps
one bucket for the cluster).

A limit here is per worker, as in Celery: a worker of several processes (``-c 2``) starts a
rate-limited task at most ``rate`` times a second in all, not in each process. A limiter
books start times spaced ``1 / rate`` apart; a delivery that comes too early goes back to
the broker until its turn (:class:`conveyor.worker.execution.TaskRunner`).

* :class:`LocalRateLimiter`: the start times in this process (an in-process worker, ``--pool
  solo``).
* :class:`SharedRateLimiter`: the start times in shared memory that the supervisor creates
  before it starts its children, so every process of the worker books in one table.

Both implement :class:`RateLimiter`; :class:`conveyor.limits.gate.FlowGate` uses it when the
broker's ``limits`` is None.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from ctypes import c_double
from multiprocessing.context import BaseContext
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ctypes import Array
    from multiprocessing.synchronize import Lock

    from ..app import Conveyor


class RateLimiter(Protocol):
    def wait(self, name: str, rate: float, now: float) -> float:
        """Seconds until task ``name`` (limited to ``rate`` starts a second) may start; 0
        means it may start at ``now``, and that start is booked."""
        ...


class LocalRateLimiter:
    """Start times booked in this process (shared by its threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._next_start: dict[str, float] = {}

    def wait(self, name: str, rate: float, now: float) -> float:
        with self._lock:
            earliest = self._next_start.get(name, 0.0)
            if now < earliest:
                return earliest - now
            self._next_start[name] = now + 1.0 / rate
            return 0.0


class SharedRateLimiter:
    """Start times in shared memory, one slot per rate-limited task known when the worker
    starts, booked under one inter-process lock. Build it in the supervisor before forking
    (or pass it to spawned children as a process argument). Tasks registered later fall
    back to a :class:`LocalRateLimiter`."""

    def __init__(self, names: Iterable[str], context: BaseContext) -> None:
        self._slots = {name: index for index, name in enumerate(sorted(set(names)))}
        self._times: Array[c_double] = context.RawArray(c_double, max(1, len(self._slots)))
        self._lock: Lock = context.Lock()
        self._local = LocalRateLimiter()

    def __getstate__(self) -> tuple[object, ...]:
        # Pickled only to hand it to a spawned child (multiprocessing shares the array
        # and the lock then); the fallback is per process.
        return (self._slots, self._times, self._lock)

    def __setstate__(self, state: tuple[dict[str, int], Array[c_double], Lock]) -> None:
        self._slots, self._times, self._lock = state
        self._local = LocalRateLimiter()

    @classmethod
    def for_app(cls, app: Conveyor, context: BaseContext) -> SharedRateLimiter | None:
        """A limiter for the rate-limited tasks of ``app``; None if it has none."""
        names = [task.name for task in app.tasks.values() if task.rate_limit]
        return cls(names, context) if names else None

    def wait(self, name: str, rate: float, now: float) -> float:
        slot = self._slots.get(name)
        if slot is None:
            return self._local.wait(name, rate, now)
        with self._lock:
            earliest = float(self._times[slot])
            if now < earliest:
                return earliest - now
            self._times[slot] = now + 1.0 / rate
            return 0.0
