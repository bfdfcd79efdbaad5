"""A prefork worker's metrics: children count, the supervisor sums and serves.

Each child's :class:`~conveyor.metrics.MetricsMiddleware` gathers into its own tally;
:class:`ChildFigures` sends what it gathered to the supervisor over the child's report pipe
(with the running-task snapshots, every ``SNAPSHOT_INTERVAL`` seconds, and once more before
the child exits), and :class:`SupervisorMetrics` adds it to the supervisor's tally and answers
scrapes from the supervisor's loop. Nothing is written to disk, and a scrape costs the same
however many children came and went."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..metrics.middleware import MetricsMiddleware, find_metrics
from ..metrics.tally import Delta

if TYPE_CHECKING:
    from ..app import Conveyor
    from ..metrics.collectors import SlotsView
    from .process import ProcessWorker, Report

logger = logging.getLogger("conveyor.metrics")


def ensure_metrics(app: Conveyor) -> MetricsMiddleware:
    """The app's :class:`MetricsMiddleware`, added if it has none (before children fork)."""
    metrics = find_metrics(app.middleware)
    if metrics is None:
        metrics = MetricsMiddleware()
        app.add_middleware(metrics)
    return metrics


class ChildFigures:
    """In a child process: report what its metrics middleware gathered (if the app has one)."""

    def __init__(self, app: Conveyor, report: Callable[[Report], None]) -> None:
        self._metrics = find_metrics(app.middleware)
        if self._metrics is not None:
            self._metrics.tally.clear()  # a forked child starts with the supervisor's figures
        self._report = report

    def flush(self) -> None:
        if self._metrics is None:
            return
        delta = self._metrics.tally.take()
        if delta is not None:
            self._report(("figures", delta))


class SupervisorMetrics:
    """In the supervisor: the sum of its children's figures (and its own), served by an
    :class:`~conveyor.metrics.InlineServer` on ``host:port``."""

    def __init__(
        self, app: Conveyor, hostname: str, host: str, port: int, slots: SlotsView
    ) -> None:
        # Deferred: prometheus_client and the HTTP server only with --metrics-port.
        from prometheus_client import CollectorRegistry

        from ..metrics.collectors import TallyCollector
        from ..metrics.server import InlineServer

        self.metrics = ensure_metrics(app)
        registry = CollectorRegistry(auto_describe=False)
        registry.register(TallyCollector(self.metrics.tally, hostname, slots))
        self.server = InlineServer(registry, host, port)
        logger.info("serving metrics on http://%s:%d/metrics", host, self.server.port)

    def merge(self, delta: Delta) -> None:
        try:
            self.metrics.tally.merge(delta)
        except (TypeError, ValueError, AttributeError) as exc:
            logger.warning("skipping malformed figures from a child: %r", exc)

    def fileno(self) -> int:
        return self.server.fileno()

    def handle(self) -> None:
        try:
            self.server.handle()
        except Exception:
            logger.exception("answering a metrics scrape failed")

    def close(self) -> None:
        self.server.close()


def serve_solo_metrics(app: Conveyor, worker: ProcessWorker, host: str, port: int) -> None:
    """``--pool solo``: serve this process's figures and slots from a thread."""
    # Deferred: prometheus_client and the HTTP server only with --metrics-port.
    from prometheus_client import CollectorRegistry

    from ..metrics.collectors import TallyCollector
    from ..metrics.server import serve_in_thread

    metrics = ensure_metrics(app)

    def slots() -> tuple[int, int, int]:
        return 1, worker.concurrency, len(worker.running_jobs())

    registry = CollectorRegistry(auto_describe=False)
    registry.register(TallyCollector(metrics.tally, worker.hostname, slots))
    server = serve_in_thread(registry, host, port)
    logger.info("serving metrics on http://%s:%d/metrics", host, server.port)
