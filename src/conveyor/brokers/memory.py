"""In-process broker (``memory://``): every promise that applies inside one process.

Used by tests and the eager/in-process worker. State lives in this object only, so producers
and workers must share the app instance.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..kv.memory import MemoryKeyValue
from ..limits.memory import MemoryLimits
from ..streams.memory import MemoryStreams
from .base import (
    DEPARTURE_CLAIM,
    PUBLISH_DEDUPE_WINDOW,
    PURGED,
    Broker,
    BrokerOptions,
    DeadLetter,
    DeadLetterReason,
    Delivery,
    Departure,
    Message,
    PriorityCounts,
    QueueStats,
    Scheduled,
    clamp_priority,
)


@dataclass(slots=True)
class _Entry:
    id: str
    queue: str
    body: bytes
    priority: int
    seq: int
    count: int = 0


class MemoryBroker(Broker):
    schemes = ("memory",)
    lease_checks_revoked = True

    def __init__(self, url: str = "memory://", options: BrokerOptions | None = None) -> None:
        super().__init__(url, options)
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._seq = itertools.count()
        self._receipts = itertools.count(1)
        self._ready: dict[str, list[tuple[int, int, _Entry]]] = {}
        self._delayed: list[tuple[float, int, _Entry]] = []
        self._leased: dict[str, tuple[_Entry, float]] = {}
        #: Dead letters with the priority they had (a replay keeps it).
        self._dead: dict[int, tuple[DeadLetter, int]] = {}
        self._revoked: dict[str, float] = {}
        self._published: dict[str, float] = {}  # id -> when publish() forgets it
        # seq -> (departure, claimed until): see Broker.take_departures.
        self._departures: dict[int, tuple[Departure, float]] = {}
        self.kv: MemoryKeyValue = MemoryKeyValue()
        self.limits: MemoryLimits = MemoryLimits()
        self._streams = MemoryStreams()

    @property
    def streams(self) -> MemoryStreams:
        return self._streams

    # -- helpers (lock held) -------------------------------------------------------------
    def _push_ready(self, entry: _Entry) -> None:
        heapq.heappush(self._ready.setdefault(entry.queue, []), (-entry.priority, entry.seq, entry))

    def _promote_due(self, now: float) -> int:
        moved = 0
        while self._delayed and self._delayed[0][0] <= now:
            _, _, entry = heapq.heappop(self._delayed)
            entry.seq = next(self._seq)
            self._push_ready(entry)
            moved += 1
        return moved

    def _entry(self, message: Message, now: float) -> tuple[float, _Entry]:
        """The message's due time and queue entry (raises on a malformed message)."""
        entry = _Entry(
            message.id,
            message.queue,
            message.body,
            clamp_priority(message.priority),
            next(self._seq),
        )
        return max(now + message.countdown, message.eta or 0.0), entry

    def _add(self, due: float, entry: _Entry, now: float) -> None:
        if due > now:
            heapq.heappush(self._delayed, (due, entry.seq, entry))
        else:
            self._push_ready(entry)

    def _bury(self, entry: _Entry, reason: str, detail: str, now: float) -> None:
        self._dead[next(self._seq)] = (
            DeadLetter(entry.id, entry.queue, entry.body, str(reason), detail, now, entry.count),
            entry.priority,
        )

    def _depart(self, entry: _Entry, reason: str) -> None:
        key = next(self._seq)
        departure = Departure(entry.id, entry.queue, entry.body, str(reason), str(key))
        self._departures[key] = (departure, 0.0)

    # -- producing -----------------------------------------------------------------------
    def publish(self, messages: Sequence[Message]) -> None:
        now = self.time()
        with self._lock:
            # Every message is checked before any is added (a batch is all or nothing), and an
            # id counts as published only once its message is in: a corrected re-publish of a
            # refused one is not dropped as a duplicate.
            fresh: dict[str, Message] = {}
            for message in messages:
                if self._published.get(message.id, 0.0) <= now:
                    fresh.setdefault(message.id, message)
            entries = [self._entry(message, now) for message in fresh.values()]
            for due, entry in entries:
                self._add(due, entry, now)
                self._published[entry.id] = now + PUBLISH_DEDUPE_WINDOW
            self._arrived.notify_all()

    # -- consuming -----------------------------------------------------------------------
    def lease(self, queues: Sequence[str], limit: int, wait: float) -> list[Delivery]:
        deadline = time.monotonic() + wait
        with self._lock:
            while True:
                now = self.time()
                self._promote_due(now)
                out = self._take(queues, limit, now)
                if out:
                    return out
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                if self._delayed:  # wake when the next delayed message is due
                    remaining = min(remaining, max(self._delayed[0][0] - now, 0.001))
                self._arrived.wait(remaining)

    def _take(self, queues: Sequence[str], limit: int, now: float) -> list[Delivery]:
        out: list[Delivery] = []
        heaps = [self._ready[q] for q in dict.fromkeys(queues) if self._ready.get(q)]
        while len(out) < limit and heaps:
            best = min(heaps, key=lambda h: h[0][:2])
            _, _, entry = heapq.heappop(best)
            if not best:
                heaps.remove(best)
            entry.count += 1
            receipt = str(next(self._receipts))
            self._leased[receipt] = (entry, now + self.options.lease_timeout)
            revoked = self._revoked.get(entry.id, 0.0) > now
            out.append(
                Delivery(
                    entry.id, entry.queue, entry.body, entry.priority, receipt, entry.count, revoked
                )
            )
        return out

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        with self._lock:
            for delivery in deliveries:
                self._leased.pop(delivery.receipt, None)

    def extend(self, deliveries: Sequence[Delivery]) -> None:
        deadline = self.time() + self.options.lease_timeout
        with self._lock:
            for delivery in deliveries:
                held = self._leased.get(delivery.receipt)
                if held is not None:
                    self._leased[delivery.receipt] = (held[0], deadline)

    def release(self, deliveries: Sequence[Delivery]) -> None:
        with self._lock:
            for delivery in deliveries:
                held = self._leased.pop(delivery.receipt, None)
                if held is not None:
                    entry = held[0]
                    entry.count -= 1
                    self._push_ready(entry)
            self._arrived.notify_all()

    def retry_later(self, delivery: Delivery, message: Message) -> None:
        # A receipt that is no longer held (acked, released, or reclaimed by sweep()) means
        # another worker owns the message now: publishing the retry would run it twice.
        now = self.time()
        with self._lock:
            if delivery.receipt not in self._leased:
                return
            due, entry = self._entry(message, now)
            del self._leased[delivery.receipt]
            self._add(due, entry, now)
            self._arrived.notify_all()

    def dead_letter(self, delivery: Delivery, reason: str, detail: str = "") -> None:
        # Like ack(): a receipt that is no longer held is a no-op, so a late worker cannot
        # bury a message that another worker holds.
        now = self.time()
        with self._lock:
            held = self._leased.pop(delivery.receipt, None)
            if held is not None:
                self._bury(held[0], reason, detail, now)

    def sweep(self) -> int:
        now = self.time()
        moved = 0
        with self._lock:
            for receipt, (entry, deadline) in list(self._leased.items()):
                if deadline > now:
                    continue
                del self._leased[receipt]
                moved += 1
                if entry.count >= self.options.max_deliveries:
                    self._depart(entry, DeadLetterReason.WORKER_LOST)
                    self._bury(
                        entry,
                        DeadLetterReason.WORKER_LOST,
                        f"lease expired after {entry.count} deliveries",
                        now,
                    )
                else:
                    self._push_ready(entry)  # at its own place, as release() does
            moved += self._promote_due(now)
            for key in [k for k, exp in self._revoked.items() if exp <= now]:
                del self._revoked[key]
            for key in [k for k, exp in self._published.items() if exp <= now]:
                del self._published[key]
            if moved:
                self._arrived.notify_all()
        self.kv.delete_expired()
        return moved

    # -- revocation ----------------------------------------------------------------------
    def revoke(self, ids: Iterable[str], ttl: float) -> None:
        expiry = self.time() + ttl
        with self._lock:
            for task_id in ids:
                self._revoked[task_id] = expiry

    def revoked(self, ids: Iterable[str]) -> set[str]:
        now = self.time()
        with self._lock:
            return {i for i in ids if self._revoked.get(i, 0.0) > now}

    # -- inspection ----------------------------------------------------------------------
    def oldest_ready(self, queues: Sequence[str]) -> dict[str, list[bytes]]:
        now = self.time()
        with self._lock:
            self._promote_due(now)
            out: dict[str, list[bytes]] = {}
            for queue in dict.fromkeys(queues):
                heap = self._ready.get(queue)
                if heap:
                    out[queue] = [min(heap, key=lambda item: item[1])[2].body]
            return out

    def stats(self, queues: Sequence[str] | None = None) -> dict[str, QueueStats]:
        with self._lock:
            out: dict[str, QueueStats] = {}

            def of(queue: str) -> QueueStats:
                return out.setdefault(queue, QueueStats())

            for queue, heap in self._ready.items():
                of(queue).ready += len(heap)
            for _, _, entry in self._delayed:
                of(entry.queue).delayed += 1
            for entry, _ in self._leased.values():
                of(entry.queue).leased += 1
            for dead, _ in self._dead.values():
                of(dead.queue).dead += 1
        if queues is not None:
            return {q: out.get(q, QueueStats()) for q in queues}
        return out

    def dead_letters(self, limit: int = 100, queue: str | None = None) -> list[DeadLetter]:
        with self._lock:
            found = [d for d, _ in self._dead.values() if queue is None or d.queue == queue]
        return found[:limit]

    def replay_dead(self, ids: Sequence[str] | None = None) -> int:
        wanted = None if ids is None else set(ids)
        with self._lock:
            keys = [k for k, (d, _) in self._dead.items() if wanted is None or d.id in wanted]
            for key in keys:
                dead, priority = self._dead.pop(key)
                entry = _Entry(dead.id, dead.queue, dead.body, priority, next(self._seq))
                self._push_ready(entry)
            self._arrived.notify_all()
        return len(keys)

    def purge_dead(self, ids: Sequence[str] | None = None) -> int:
        wanted = None if ids is None else set(ids)
        with self._lock:
            keys = [k for k, (d, _) in self._dead.items() if wanted is None or d.id in wanted]
            for key in keys:
                del self._dead[key]
        return len(keys)

    def purge(self, queues: Sequence[str]) -> int:
        wanted = set(queues)
        with self._lock:
            gone = [item[2] for q in wanted for item in sorted(self._ready.pop(q, []))]
            kept = [item for item in self._delayed if item[2].queue not in wanted]
            gone += [item[2] for item in self._delayed if item[2].queue in wanted]
            heapq.heapify(kept)
            self._delayed = kept
            for entry in gone:
                self._depart(entry, PURGED)
        return len(gone)

    # -- departures ------------------------------------------------------------------------
    def take_departures(self, limit: int = 100) -> list[Departure]:
        now = self.time()
        with self._lock:
            taken = [
                (key, departure)
                for key, (departure, claimed) in self._departures.items()
                if claimed <= now
            ][: max(limit, 0)]
            for key, departure in taken:
                self._departures[key] = (departure, now + DEPARTURE_CLAIM)
        return [departure for _, departure in taken]

    def forget_departures(self, departures: Sequence[Departure]) -> None:
        with self._lock:
            for departure in departures:
                if departure.receipt.isdigit():
                    self._departures.pop(int(departure.receipt), None)

    # -- delayed messages ----------------------------------------------------------------
    def scheduled(self, limit: int = 100, queue: str | None = None) -> list[Scheduled]:
        with self._lock:
            found = sorted(
                (due, entry.seq, entry)
                for due, _, entry in self._delayed
                if queue is None or entry.queue == queue
            )
        return [
            Scheduled(e.id, e.queue, e.body, e.priority, due)
            for due, _, e in found[: max(limit, 0)]
        ]

    def run_scheduled(self, ids: Sequence[str]) -> int:
        return self._take_delayed(ids, ready=True)

    def cancel_scheduled(self, ids: Sequence[str]) -> int:
        return self._take_delayed(ids, ready=False)

    def _take_delayed(self, ids: Sequence[str], *, ready: bool) -> int:
        wanted = set(ids)
        with self._lock:
            taken = sorted(item for item in self._delayed if item[2].id in wanted)
            if not taken:
                return 0
            self._delayed = [item for item in self._delayed if item[2].id not in wanted]
            heapq.heapify(self._delayed)
            if ready:
                for _, _, entry in taken:
                    entry.seq = next(self._seq)
                    self._push_ready(entry)
                self._arrived.notify_all()
        return len(taken)

    def priority_counts(self, queues: Sequence[str] | None = None) -> dict[str, PriorityCounts]:
        names = list(self.stats()) if queues is None else queues
        out = {queue: PriorityCounts() for queue in names}
        with self._lock:
            for queue, heap in self._ready.items():
                for _, _, entry in heap:
                    if queue in out:
                        out[queue].add("ready", entry.priority)
            for _, _, entry in self._delayed:
                if entry.queue in out:
                    out[entry.queue].add("delayed", entry.priority)
            for entry, _ in self._leased.values():
                if entry.queue in out:
                    out[entry.queue].add("leased", entry.priority)
            for dead, priority in self._dead.values():
                if dead.queue in out:
                    out[dead.queue].add("dead", priority)
        return out

    def time(self) -> float:
        return time.time()
