"""What the dashboard reads and changes, without any web code: queues, workers, dead letters
and tasks of one app, through its broker, result store and key/value store. Every read is
total: a malformed stored value shows as such, never as an error page."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlencode

from ..app import Conveyor
from ..brokers.base import DeadLetter, PriorityCounts, QueueStats
from ..describe import preview
from ..metrics.collectors import ready_since
from ..registry import WorkerInfo, read_announcements
from ..results.base import ResultRecord

logger = logging.getLogger("conveyor.dashboard")

#: Most dead letters a page or a "everything matching" action considers at once.
DEAD_LETTER_LIMIT = 10_000
#: Counting every queue's messages this long (seconds) or longer is slow (a broker holding a
#: million messages): the counts are then shared by the pages for 4x as long as they took,
#: and after that served as they are while a background thread counts again.
SLOW_COUNT = 0.05


@dataclass(frozen=True)
class Worker:
    name: str
    info: WorkerInfo
    malformed: bool = False


@dataclass(frozen=True)
class DeadLetterFilter:
    """Narrows the dead-letter list; kept in the page's URL."""

    queue: str = ""
    reason: str = ""
    search: str = ""

    def matches(self, letter: DeadLetter) -> bool:
        return (not self.reason or letter.reason == self.reason) and (
            not self.search
            or self.search in letter.id
            or self.search in preview(letter.body, 10_000, redacted=True)
        )

    def query(self) -> str:
        """The filter as a query string (``queue=emails&reason=expired``)."""
        return urlencode({name: value for name, value in self._fields() if value})

    def _fields(self) -> tuple[tuple[str, str], ...]:
        return (("queue", self.queue), ("reason", self.reason), ("search", self.search))

    def describe(self) -> str:
        parts = [
            f"{k}={v}"
            for k, v in (("queue", self.queue), ("reason", self.reason), ("search", self.search))
            if v
        ]
        return ", ".join(parts) or "all"


class Fleet:
    """The dashboard's view of ``app``."""

    def __init__(self, app: Conveyor) -> None:
        self.app = app
        self._lock = threading.Lock()
        #: Slow counts by kind: (when counted, how long it took, the counts).
        self._counted: dict[str, tuple[float, float, Mapping[str, object]]] = {}
        self._recounting: set[str] = set()
        #: Bumped by each action: a count started before one is not kept.
        self._generation = 0

    # -- reads -------------------------------------------------------------------------
    def queues(self) -> dict[str, QueueStats]:
        """Counts per queue (the default queue always). When counting took
        :data:`SLOW_COUNT` or longer, the pages (and every viewer) share them for 4x as
        long, then get them as they are while a background thread counts again, until the
        next action: the dashboard never spends more than a fifth of its time counting, and
        a page waits for a slow count only when there is none yet (see :meth:`counted_ago`)."""
        stats = self._shared("stats", self.app.broker.stats)
        stats.setdefault(self.app.conf.task_default_queue, QueueStats(0, 0, 0, 0))
        return dict(sorted(stats.items()))

    def priority_counts(self) -> dict[str, PriorityCounts]:
        """Every known queue's counts per state and priority, shared as :meth:`queues`."""
        return self._shared("split", self.app.broker.priority_counts)

    def counted_ago(self, key: str = "split") -> float | None:
        """Seconds since the shared counts (``"split"``: :meth:`priority_counts`,
        ``"stats"``: :meth:`queues`) were made, or None when they are counted per request."""
        with self._lock:
            entry = self._counted.get(key)
        return None if entry is None else time.monotonic() - entry[0]

    def _shared[T: Mapping[str, object]](self, key: str, count: Callable[[], T]) -> T:
        """``count()``, or its last result while it is shared (the result is a copy)."""
        with self._lock:
            entry = self._counted.get(key)
            if entry is not None:
                at, took, value = entry
                if time.monotonic() >= at + 4 * took and key not in self._recounting:
                    self._recounting.add(key)
                    threading.Thread(target=self._recount, args=(key, count), daemon=True).start()
                return cast(T, dict(value))
        return self._count(key, count)

    def _count[T: Mapping[str, object]](self, key: str, count: Callable[[], T]) -> T:
        with self._lock:
            generation = self._generation
        started = time.monotonic()
        counted = count()
        took = time.monotonic() - started
        with self._lock:
            if generation != self._generation:
                pass  # an action changed the counts meanwhile: the next page counts afresh
            elif took >= SLOW_COUNT:
                self._counted[key] = (time.monotonic(), took, dict(counted))
            else:
                self._counted.pop(key, None)
        return counted

    def _recount(self, key: str, count: Callable[[], Mapping[str, object]]) -> None:
        try:
            self._count(key, count)
        except Exception:  # the next page counts itself and shows the error
            logger.warning("dashboard: counting queues failed", exc_info=True)
            with self._lock:
                self._counted.pop(key, None)
        finally:
            with self._lock:
                self._recounting.discard(key)

    def forget_counts(self) -> None:
        """Count afresh next time (an action changed them)."""
        with self._lock:
            self._counted.clear()
            self._generation += 1

    def workers(self) -> list[Worker]:
        return [
            Worker(name, info or {}, malformed=info is None)
            for name, info in read_announcements(self.app.kv).items()
        ]

    def dead_letters(self, where: DeadLetterFilter, limit: int = 500) -> list[DeadLetter]:
        """The oldest ``limit`` dead letters matching ``where``. A reason or text filter is
        applied to the oldest :data:`DEAD_LETTER_LIMIT` of the queue(s)."""
        queue = where.queue or None
        if not where.reason and not where.search:
            return self.app.broker.dead_letters(limit, queue)
        letters = self.app.broker.dead_letters(DEAD_LETTER_LIMIT, queue)
        return [d for d in letters if where.matches(d)][:limit]

    def count_dead(self, where: DeadLetterFilter) -> int:
        """How many dead letters match ``where`` (from the queue counts when only the queue
        is filtered)."""
        if not where.reason and not where.search:
            stats = self.queues()
            return sum(s.dead for q, s in stats.items() if not where.queue or q == where.queue)
        return len(self.dead_letters(where, DEAD_LETTER_LIMIT))

    def oldest_ages(self) -> dict[str, float]:
        """Seconds the oldest ready message of each queue with ready messages has been due
        (brokers that cannot tell cheaply give none)."""
        ready = [q for q, s in self.queues().items() if s.ready]
        oldest = self.app.broker.oldest_ready(ready) if ready else {}
        now = self.app.broker.time()
        found = {q: ready_since(bodies) for q, bodies in oldest.items()}
        return {q: max(0.0, now - since) for q, since in sorted(found.items()) if since}

    def task(self, task_id: str) -> ResultRecord | None:
        return self.app.results.get(task_id)

    # -- actions (each returns how many things it changed) -------------------------------
    def purge_queue(self, queue: str) -> int:
        return self.app.broker.purge([queue])

    def replay_dead(self, ids: Sequence[str]) -> int:
        return self.app.broker.replay_dead(list(ids)) if ids else 0

    def purge_dead(self, ids: Sequence[str]) -> int:
        return self.app.broker.purge_dead(list(ids)) if ids else 0

    def move_matching_dead(self, where: DeadLetterFilter, *, replay: bool) -> int:
        """Replay (or delete) every dead letter matching ``where``: all of them when only the
        queue is filtered (in batches), else those among the oldest DEAD_LETTER_LIMIT."""
        move = self.replay_dead if replay else self.purge_dead
        if not where.queue and not where.reason and not where.search:
            broker = self.app.broker
            return broker.replay_dead(None) if replay else broker.purge_dead(None)
        total = 0
        for _ in range(10_000):  # bounded: letters arriving meanwhile cannot keep it going
            ids = [d.id for d in self.dead_letters(where, DEAD_LETTER_LIMIT)]
            moved = move(ids)
            total += moved
            if moved == 0 or len(ids) < DEAD_LETTER_LIMIT or where.reason or where.search:
                break
        return total

    def revoke(self, task_id: str, terminate: bool) -> int:
        self.app.revoke(task_id, terminate=terminate)
        return 1
