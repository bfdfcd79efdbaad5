"""The figures one process gathers: counters and histograms, as plain dicts under a lock.

A :class:`Tally` is cheap to update from task threads (a lock, a dict update, a bisect) and
turns into a :data:`Delta` that a worker's child sends its supervisor, which merges it into its
own tally: the supervisor alone is scraped, nothing is written to disk per process."""

from __future__ import annotations

import bisect
import threading

from .names import BUCKETS

#: A counter's key: (event, task name, queue).
type CounterKey = tuple[str, str, str]
#: A histogram's key: (histogram, task name, queue).
type HistogramKey = tuple[str, str, str]
#: A histogram's figures: the count in each bucket (the last one +Inf), then the sum.
type HistogramValue = list[float]
#: What a tally gathered since the last :meth:`Tally.take`: counters and histograms.
type Delta = tuple[dict[CounterKey, float], dict[HistogramKey, HistogramValue]]


class Tally:
    """Counters and histograms keyed by (what, task name, queue); thread-safe."""

    __slots__ = ("_counters", "_histograms", "_lock")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[CounterKey, float] = {}
        self._histograms: dict[HistogramKey, HistogramValue] = {}

    def count(self, event: str, name: str, queue: str, amount: float = 1.0) -> None:
        key = (event, name, queue)
        with self._lock:
            self._counters[key] = self._counters.get(key, 0.0) + amount

    def observe(self, histogram: str, name: str, queue: str, value: float) -> None:
        key = (histogram, name, queue)
        index = bisect.bisect_left(BUCKETS, value)  # le semantics: value <= bound
        with self._lock:
            figures = self._histograms.get(key)
            if figures is None:
                figures = self._histograms[key] = [0.0] * (len(BUCKETS) + 2)
            figures[index] += 1
            figures[-1] += value

    def take(self) -> Delta | None:
        """What was gathered since the last call (None if nothing), and start again."""
        with self._lock:
            if not self._counters and not self._histograms:
                return None
            delta = (self._counters, self._histograms)
            self._counters, self._histograms = {}, {}
        return delta

    def merge(self, delta: Delta) -> None:
        """Add ``delta`` (from :meth:`take`, maybe in another process) to these figures.
        Malformed parts are skipped: a child never takes the supervisor down."""
        counters, histograms = delta
        size = len(BUCKETS) + 2
        with self._lock:
            for key, amount in counters.items():
                self._counters[key] = self._counters.get(key, 0.0) + float(amount)
            for key, values in histograms.items():
                if len(values) != size:
                    continue
                figures = self._histograms.get(key)
                if figures is None:
                    figures = self._histograms[key] = [0.0] * size
                for i, value in enumerate(values):
                    figures[i] += value

    def snapshot(self) -> Delta:
        """Copies of the figures (for a scrape)."""
        with self._lock:
            return dict(self._counters), {k: list(v) for k, v in self._histograms.items()}

    def clear(self) -> None:
        with self._lock:
            self._counters, self._histograms = {}, {}
