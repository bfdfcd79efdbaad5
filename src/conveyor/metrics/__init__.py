"""Prometheus metrics: counters and histograms per task name and queue, worker and queue gauges.

``conveyor worker --metrics-port 9808`` serves a worker's figures (its child processes send
theirs to the supervisor, which serves the sum); ``conveyor metrics`` serves the cluster's
queue depths and live workers, read from the broker. See ``docs/monitoring.md``."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .middleware import MetricsMiddleware, find_metrics
from .names import CELERY_EXPORTER_RENAMES
from .tally import Delta, Tally

if TYPE_CHECKING:
    from .collectors import ClusterCollector, TallyCollector
    from .server import InlineServer, serve_in_thread

#: Names of the modules that import prometheus_client (and with it http.server, wsgiref, ...):
#: loaded on first use, so a worker without ``--metrics-port`` never pays for them.
_LAZY = {
    "ClusterCollector": "collectors",
    "TallyCollector": "collectors",
    "InlineServer": "server",
    "serve_in_thread": "server",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


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
