"""Prometheus collectors: a tally's counters and histograms (:class:`TallyCollector`), and the
cluster's queues and workers read from the broker (:class:`ClusterCollector`)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

import msgspec
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.metrics_core import Metric

from ..exceptions import ConveyorError
from ..registry import read_announcements
from .names import (
    BUCKETS,
    HISTOGRAMS,
    QUEUE_LENGTH,
    QUEUE_MESSAGES,
    QUEUE_OLDEST_AGE,
    SCRAPE_ERRORS,
    TASK_COUNTERS,
    WORKER_PROCESSES,
    WORKER_SLOTS,
    WORKER_SLOTS_IDLE,
    WORKER_TASKS_ACTIVE,
    WORKER_UP,
    WORKERS_ACTIVE,
)
from .tally import Tally

if TYPE_CHECKING:
    from ..app import Conveyor

logger = logging.getLogger("conveyor.metrics")

_LABELS = ["name", "hostname", "queue_name"]
_BOUNDS = [*(repr(float(b)) for b in BUCKETS), "+Inf"]

_HELP = {
    "sent": "Task messages published",
    "received": "Task messages a worker took in (run or not)",
    "started": "Tasks started",
    "succeeded": "Tasks that succeeded",
    "failed": "Tasks that failed (final failures)",
    "retried": "Tasks that asked for a retry",
    "revoked": "Tasks revoked (not run, or terminated)",
    "dead_lettered": "Messages moved to the dead-letter queue",
    "runtime": "Seconds tasks ran",
    "queue_wait": "Seconds from a message's due time (created or eta) to its task's start",
}


class _Times(msgspec.Struct):
    """The two fields of an envelope that say since when its message is due."""

    created_at: float = 0.0
    eta: float | None = None


_times = msgspec.json.Decoder(_Times)


def ready_since(bodies: list[bytes]) -> float | None:
    """The earliest time since which one of ``bodies`` has been due (its ``created_at`` or
    its ``eta``, the later one); None if none tells. Undecodable bodies are skipped."""
    since: float | None = None
    for body in bodies:
        try:
            times = _times.decode(body)
        except (msgspec.DecodeError, msgspec.ValidationError):
            continue
        due = max(times.created_at, times.eta or 0.0)
        if due > 0.0 and (since is None or due < since):
            since = due
    return since


#: What a worker knows of its own slots: (processes, slots, busy slots).
type SlotsView = Callable[[], tuple[int, int, int]]


class TallyCollector:
    """Exposes a :class:`~conveyor.metrics.tally.Tally` (and, given ``slots``, the worker's
    busy and idle slots) with the label ``hostname``."""

    def __init__(self, tally: Tally, hostname: str, slots: SlotsView | None = None) -> None:
        self.tally = tally
        self.hostname = hostname
        self.slots = slots

    def collect(self) -> Iterator[Metric]:
        counters, histograms = self.tally.snapshot()
        families = {
            event: CounterMetricFamily(metric, _HELP[event], labels=_LABELS)
            for event, metric in TASK_COUNTERS.items()
        }
        for (event, name, queue), value in sorted(counters.items()):
            family = families.get(event)
            if family is not None:
                family.add_metric([name, self.hostname, queue], value)
        yield from families.values()
        for kind, metric in HISTOGRAMS.items():
            histogram = HistogramMetricFamily(metric, _HELP[kind], labels=_LABELS)
            for (which, name, queue), figures in sorted(histograms.items()):
                if which != metric:
                    continue
                cumulative, buckets = 0.0, []
                for bound, count in zip(_BOUNDS, figures[:-1], strict=True):
                    cumulative += count
                    buckets.append((bound, cumulative))
                histogram.add_metric([name, self.hostname, queue], buckets, figures[-1])
            yield histogram
        if self.slots is not None:
            processes, slots, busy = self.slots()
            yield from _worker_gauges([(self.hostname, processes, slots, busy)])


def _worker_gauges(workers: Iterable[tuple[str, int, int, int]]) -> Iterator[Metric]:
    up = GaugeMetricFamily(WORKER_UP, "1 for each live worker", labels=["hostname"])
    processes = GaugeMetricFamily(WORKER_PROCESSES, "Worker processes", labels=["hostname"])
    slots = GaugeMetricFamily(WORKER_SLOTS, "Task slots (processes x threads)", labels=["hostname"])
    active = GaugeMetricFamily(WORKER_TASKS_ACTIVE, "Tasks running now", labels=["hostname"])
    idle = GaugeMetricFamily(WORKER_SLOTS_IDLE, "Free task slots", labels=["hostname"])
    for hostname, n_processes, n_slots, busy in workers:
        up.add_metric([hostname], 1)
        processes.add_metric([hostname], n_processes)
        slots.add_metric([hostname], n_slots)
        active.add_metric([hostname], busy)
        idle.add_metric([hostname], max(0, n_slots - busy))
    yield from (up, processes, slots, active, idle)


class ClusterCollector:
    """Queue depths and live workers, read from the broker at each scrape (``conveyor
    metrics``). A broker error is logged and counted in ``conveyor_exporter_scrape_errors``;
    the scrape then has what could be read."""

    def __init__(self, app: Conveyor, queues: list[str] | None = None) -> None:
        self.app = app
        self.queues = queues
        self.errors = 0

    def collect(self) -> Iterator[Metric]:
        yield from self._queues()
        yield from self._workers()
        errors = CounterMetricFamily(SCRAPE_ERRORS, "Broker reads that failed during scrapes")
        errors.add_metric([], self.errors)
        yield errors

    def _queues(self) -> Iterator[Metric]:
        broker = self.app.broker
        try:
            stats = broker.stats(self.queues)
            oldest = broker.oldest_ready([q for q, s in stats.items() if s.ready])
            now = broker.time()
        except ConveyorError as exc:
            self.errors += 1
            logger.error("reading queue stats failed: %s", exc)
            return
        length = GaugeMetricFamily(QUEUE_LENGTH, "Messages ready to run", labels=["queue_name"])
        messages = GaugeMetricFamily(
            QUEUE_MESSAGES, "Messages by state", labels=["queue_name", "state"]
        )
        age = GaugeMetricFamily(
            QUEUE_OLDEST_AGE,
            "Seconds the oldest ready message has been due (0 when none is ready)",
            labels=["queue_name"],
        )
        for queue, s in sorted(stats.items()):
            length.add_metric([queue], s.ready)
            for state in ("ready", "delayed", "leased", "dead"):
                messages.add_metric([queue, state], getattr(s, state))
            since = ready_since(oldest.get(queue, []))
            age.add_metric([queue], max(0.0, now - since) if since is not None else 0.0)
        yield from (length, messages, age)

    def _workers(self) -> Iterator[Metric]:
        try:
            announced = read_announcements(self.app.kv)
        except ConveyorError as exc:
            self.errors += 1
            logger.error("reading the worker registry failed: %s", exc)
            return
        nodes: dict[str, list[int]] = {}
        for name, info in announced.items():
            try:
                if info is None:
                    raise ValueError(name)
                slots, busy = int(info.get("concurrency", 0)), int(info.get("running", 0))
            except (ValueError, TypeError):
                logger.warning("skipping a malformed worker announcement %r", name)
                continue
            # A prefork worker's children announce themselves as NODE/SLOT.
            node = name.partition("/")[0]
            figures = nodes.setdefault(node, [0, 0, 0])
            figures[0] += 1
            figures[1] += slots
            figures[2] += busy
        count = GaugeMetricFamily(WORKERS_ACTIVE, "Live workers (nodes)")
        count.add_metric([], len(nodes))
        yield count
        yield from _worker_gauges((node, p, s, b) for node, (p, s, b) in sorted(nodes.items()))
