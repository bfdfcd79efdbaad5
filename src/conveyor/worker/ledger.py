"""The prefetch ledger: which messages a child process leased but never started.

A child prefetches messages beyond its free slots (adaptive prefetch,
:mod:`conveyor.worker.prefetch`). If the child dies - a task that kills its process, the
OOM killer, a hard time limit - those messages were leased but never ran. Left to their
lease expiry they would come back charged a delivery: a poison task would push the messages
prefetched beside it towards the dead-letter queue, and a row of poison tasks at the end of
a queue would be dead-lettered after fewer runs than ``task_max_deliveries``.

So the child keeps its supervisor informed, at little cost:

* each batch it prefetches is reported over the report pipe (ids, queues, receipts; no
  bodies) before any message of the batch can start - one report per lease, not per task;
* a counter in shared memory says how many prefetched messages have left the prefetch queue
  (taken for a slot, or given back), which they do in the order they entered it - a memory
  write per take, no system call.

When the child ends, the supervisor gives back, uncharged, the reported messages past the
counter: those that never left the prefetch queue.
"""

from __future__ import annotations

import ctypes
from collections import deque
from collections.abc import Callable, Sequence
from typing import Literal

from ..brokers.base import Delivery

#: A prefetched message as reported: ``Delivery(*fields)`` rebuilds it, without its body
#: (giving it back needs only its queue and receipt).
type LedgerEntry = tuple[str, str, bytes, int, str, int]
#: The report of a prefetched batch.
type PrefetchedReport = tuple[Literal["prefetched"], list[LedgerEntry]]


class ChildLedger:
    """The child's side: reports what it prefetches and counts what leaves the queue."""

    def __init__(self, report: Callable[[PrefetchedReport], None], passed: ctypes.c_uint64) -> None:
        self._report = report
        self._passed = passed

    def entered(self, deliveries: Sequence[Delivery]) -> None:
        """``deliveries`` are about to be prefetched (call before any of them can start)."""
        self._report(
            (
                "prefetched",
                [(d.id, d.queue, b"", d.priority, d.receipt, d.delivery_count) for d in deliveries],
            )
        )

    def left(self, count: int) -> None:
        """The ``count`` oldest prefetched messages were taken for slots or given back.
        (Called under the in-flight lock: one writer.)"""
        self._passed.value += count


class PrefetchLedger:
    """The supervisor's side, for one child: the reported prefetched messages that have
    not left the child's prefetch queue as far as the counter tells."""

    def __init__(self, passed: ctypes.c_uint64) -> None:
        #: The counter shared with the child (created before it starts).
        self.passed = passed
        self._entries: deque[LedgerEntry] = deque()
        #: How many reported messages were dropped from the front of ``_entries``.
        self._dropped = 0

    def add(self, entries: list[LedgerEntry]) -> None:
        """A report of a prefetched batch arrived."""
        self._entries.extend(entries)
        self._trim()

    def unstarted(self) -> list[Delivery]:
        """The messages still waiting in the child's prefetch queue (once the child ended
        and its last reports were read: those it never started)."""
        self._trim()
        return [Delivery(*entry) for entry in self._entries]

    def _trim(self) -> None:
        # The counter may run ahead of the reports read so far; the rest goes next time.
        entries, passed = self._entries, self.passed.value
        while self._dropped < passed and entries:
            entries.popleft()
            self._dropped += 1
