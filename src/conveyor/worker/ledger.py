"""The prefetch ledger: which messages a child process leased but never started.

A child prefetches messages beyond its free slots (adaptive prefetch,
:mod:`conveyor.worker.prefetch`). If the child dies - a task that kills its process, the
OOM killer, a hard time limit - those messages were leased but never ran. Left to their
lease expiry they would come back charged a delivery: a poison task would push the messages
prefetched beside it towards the dead-letter queue, and a row of poison tasks at the end of
a queue would be dead-lettered after fewer runs than ``task_max_deliveries``.

So the child keeps, in memory it shares with its supervisor (made before the child starts),
what waits in its prefetch queue - no system call, nothing for the supervisor to do while
the child lives:

* ``passed``: how many prefetched messages have left the queue (taken for a slot, or given
  back), which they do in the order they entered it;
* the queue itself (ids, queues, receipts; no bodies), written again at each prefetch, with
  the number of messages that had left it then (``base``), under a write counter that is odd
  while a write is under way.

When the child ends, the supervisor gives back, uncharged, the messages of the last write
past ``passed``: those that never left the queue.
"""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Sequence
from multiprocessing.context import BaseContext

import msgspec

from ..brokers.base import Delivery

#: passed, writes, base, length of the queue's encoding that follows.
HEADER = struct.Struct("<QQQI")
#: Bytes of shared memory per child: a prefetch queue whose encoding does not fit is not
#: written (its messages then come back at their lease expiry, charged).
SIZE = 64 * 1024

#: A prefetched message as written: id, queue, priority, receipt, delivery count.
type Entry = tuple[str, str, int, str, int]

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(list[tuple[str, str, int, str, int]]).decode


class ChildLedger:
    """The child's side: writes its prefetch queue and counts what leaves it. Called under
    the in-flight lock (one writer)."""

    def __init__(self, memory: ctypes.Array[ctypes.c_char]) -> None:
        self._view = memoryview(memory).cast("B")
        self._entered = 0
        self._passed = 0
        self._writes = 0

    def entered(self, prefetched: Sequence[Delivery], added: int) -> None:
        """``added`` messages joined the end of the prefetch queue, now ``prefetched``
        (call before any of them can start)."""
        self._entered += added
        blob = _encode(
            [(d.id, d.queue, d.priority, d.receipt, d.delivery_count) for d in prefetched]
        )
        view = self._view
        if len(blob) > len(view) - HEADER.size:
            blob = b""  # too big to keep: these come back at their lease expiry
        self._writes += 1  # odd: a write is under way
        struct.pack_into("<Q", view, 8, self._writes)
        view[HEADER.size : HEADER.size + len(blob)] = blob
        struct.pack_into("<QI", view, 16, self._entered - len(prefetched), len(blob))
        self._writes += 1
        struct.pack_into("<Q", view, 8, self._writes)

    def left(self, count: int) -> None:
        """The ``count`` oldest prefetched messages were taken for slots or given back."""
        self._passed += count
        struct.pack_into("<Q", self._view, 0, self._passed)


class PrefetchLedger:
    """The supervisor's side, for one child: the shared memory, and what it says the child
    left in its prefetch queue."""

    def __init__(self, context: BaseContext) -> None:
        #: Given to the child (made before it starts, so a spawned child can inherit it).
        self.memory: ctypes.Array[ctypes.c_char] = context.RawArray(ctypes.c_char, SIZE)

    def unstarted(self) -> list[Delivery]:
        """The messages still in the child's prefetch queue (once the child ended: those
        it never started)."""
        view = memoryview(self.memory).cast("B")
        passed, writes, base, length = HEADER.unpack_from(view)
        if writes % 2 or not length:
            return []  # it died while writing, or wrote nothing: left to lease expiry
        try:
            entries = _decode(view[HEADER.size : HEADER.size + length])
        except msgspec.DecodeError:
            return []
        skip = max(passed - base, 0)
        return [
            Delivery(id_, queue, b"", priority, receipt, count)
            for id_, queue, priority, receipt, count in entries[skip:]
        ]
