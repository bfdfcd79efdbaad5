"""Prometheus metrics: counters and histograms per task name and queue, worker and queue gauges.

``conveyor worker --metrics-port 9808`` serves a worker's figures (its child processes send
theirs to the supervisor, which serves the sum); ``conveyor metrics`` serves the cluster's
queue depths and live workers, read from the broker. See ``docs/monitoring.md``."""

from __future__ import annotations

from .collectors import ClusterCollector, TallyCollector
from .middleware import MetricsMiddleware, find_metrics
from .names import CELERY_EXPORTER_RENAMES
from .server import InlineServer, serve_in_thread
from .tally import Delta, Tally

__all__ = [
    "CELERY_EXPORTER_RENAMES",
    "ClusterCollector",
    "Delta",
    "InlineServer",
    "MetricsMiddleware",
    "Tally",
    "TallyCollector",
    "find_metrics",
    "serve_in_thread",
]
