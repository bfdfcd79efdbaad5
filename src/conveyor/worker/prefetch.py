"""Adaptive prefetch (the default, ``worker_prefetch_multiplier`` unset): lease more than
one message per free slot only while the tasks of the worker's queues are short.

It applies to every worker: the one-thread processes of the prefork pool and ``--pool solo``,
whose every lease is a round trip no task overlaps, and workers with task threads, whose
lease loop runs on a thread of its own. There the round trips overlap the tasks, but each
still costs both sides CPU: leasing one message per free slot, a worker with 2 threads spent
~260 µs of its CPU and ~90 µs of redis-server's per short task, against ~165 and ~37 with
batches (``bench/README.md``).

* :class:`RuntimeEstimate` keeps, per queue, a moving average (EWMA) of how long its tasks
  ran. Per queue rather than per task name because the lease is a queue operation: what it
  brings is known only after it returned, so the decision can only use the queues.
* :class:`AdaptivePrefetch` decides each lease: up to ``worker_prefetch_max`` messages per
  free slot while every queue with an estimate averages under ``worker_prefetch_short``
  seconds, else one per slot (also at start, before any task finished).
* The messages leased beyond the free slots are *prefetched*: leased and held (the heartbeat
  renews their leases) but not admitted - no revocation check, no STARTED, no early ack yet.
  The lease loop takes them, before leasing again, for whichever slot frees first, and checks
  their revocation again if they waited (:data:`RECHECK_AFTER`) since their lease or the last
  re-check, which covers every message then prefetched (one call per batch, not per message).
  A stop gives them back to the broker uncharged.
* **Reclaim**: a prefetched message that waited more than ``RECLAIM_FACTOR`` times the
  threshold means every slot of this worker runs a long task: :meth:`AdaptivePrefetch.run`
  gives the prefetched messages back to the broker (uncharged), so another worker or child
  runs them now. A short task never waits behind a long one for longer than that (50 ms at
  the defaults, plus the check's period).

**A task that kills its process** (a poison task, the OOM killer) costs its neighbours
nothing: the acks of tasks that finished wait for the next lease, but go out first when a
task that never ran to its end in this process is about to start (one round trip per task
name per process), and the broker then gives back what it pushed ahead of the leases
(RabbitMQ's consumers: ``Broker.give_back_unleased``); the supervisor gives back the
messages still prefetched, uncharged (:mod:`conveyor.worker.ledger`).

Priorities: a prefetched message starts before a higher-priority message that reached the
broker after it was leased at most once - it runs within one lease round (``max - 1``
short tasks per slot, or it is reclaimed); the next lease sees the higher-priority message.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

from ..brokers.base import Delivery
from ..exceptions import ConveyorError
from .inflight import InFlight

logger = logging.getLogger("conveyor.worker")

#: Weight of the newest runtime in a queue's moving average.
WEIGHT = 0.2
#: A prefetched message that waited this many times ``worker_prefetch_short`` is reclaimed.
RECLAIM_FACTOR = 10
#: Seconds a prefetched message may wait before its revocation is checked again at start
#: (as ``conveyor.worker.dispatch.RECHECK_REVOKED_AFTER`` for a fixed prefetch).
RECHECK_AFTER = 0.01


class RuntimeEstimate:
    """Per-queue moving average of task runtimes, in seconds.

    Updated from task threads without a lock: a lost update of a heuristic costs nothing."""

    def __init__(self, weight: float = WEIGHT) -> None:
        if not 0 < weight <= 1:
            raise ValueError(f"weight must be in (0, 1], got {weight!r}")
        self.weight = weight
        self._average: dict[str, float] = {}
        #: Names of the tasks that ran to their end in this process. One that never did
        #: may kill it: the lease loop acks the tasks that finished before it starts one.
        self.ended: set[str] = set()

    def observe(self, queue: str, seconds: float) -> None:
        """One task of ``queue`` ran ``seconds``."""
        average = self._average.get(queue)
        if average is None:
            self._average[queue] = seconds
        else:
            self._average[queue] = average + self.weight * (seconds - average)

    def get(self, queue: str) -> float | None:
        """The queue's average, None before any of its tasks finished."""
        return self._average.get(queue)

    def short(self, queues: Sequence[str], threshold: float) -> bool:
        """Whether the tasks of ``queues`` are short: some queue has an average, and every
        average is under ``threshold``."""
        known = [a for q in queues if (a := self._average.get(q)) is not None]
        return bool(known) and max(known) < threshold


class AdaptivePrefetch:
    """How many messages to lease per free slot, and the reclaim of prefetched messages that
    wait behind long tasks (:meth:`run`, on a thread of its own)."""

    def __init__(
        self,
        inflight: InFlight,
        *,
        short: float,
        most: int,
        release: Callable[[list[Delivery]], None],
        stopped: threading.Event,
        runtimes: RuntimeEstimate | None = None,
    ) -> None:
        if most < 1:
            raise ValueError(f"most must be at least 1, got {most!r}")
        if short <= 0:
            raise ValueError(f"short must be a positive number of seconds, got {short!r}")
        self.inflight = inflight
        self.short = short
        self.most = most
        self.runtimes = runtimes or RuntimeEstimate()
        #: Seconds a prefetched message may wait before it is reclaimed.
        self.reclaim_after = RECLAIM_FACTOR * short
        self._release = release
        self._stopped = stopped
        #: Prefetched messages given back so far (for tests and stats).
        self.reclaimed = 0

    def per_slot(self, queues: Sequence[str]) -> int:
        """Messages to lease per free slot for a lease from ``queues``."""
        return self.most if self.runtimes.short(queues, self.short) else 1

    def run(self) -> None:
        """Reclaim prefetched messages that waited too long, until the worker stops."""
        inflight, period = self.inflight, self.reclaim_after / 2
        while not self._stopped.is_set():
            if not inflight.prefetching.wait(0.5):
                continue
            if self._stopped.wait(period):
                return
            self.reclaim()

    def reclaim(self) -> int:
        """Give back the prefetched messages if the oldest waited more than
        ``reclaim_after``; return how many."""
        back = self.inflight.reclaim(self.reclaim_after)
        if not self._give_back(back):
            return 0
        logger.debug("gave back %d prefetched message(s) waiting behind long tasks", len(back))
        return len(back)

    def give_back_all(self) -> int:
        """Give back every prefetched message now; return how many."""
        back = self.inflight.take_all_prefetched()
        return len(back) if self._give_back(back) else 0

    def _give_back(self, back: list[Delivery]) -> bool:
        """Release ``back`` (uncharged); on failure keep them prefetched (renewed)."""
        if not back:
            return False
        try:
            self._release(back)
        except ConveyorError as exc:
            # Keep them (renewed): the lease loop runs them once a slot frees.
            logger.error("could not give back %d prefetched message(s): %s", len(back), exc)
            self.inflight.prefetch(back)
            return False
        self.reclaimed += len(back)
        return True


def waited(since: float) -> bool:
    """Whether a prefetched message taken now waited long enough to re-check its revocation."""
    return time.monotonic() - since >= RECHECK_AFTER
