"""``conveyor metrics``: a Prometheus exporter of the cluster's queues and live workers."""

from __future__ import annotations

import threading

import click
from prometheus_client import CollectorRegistry

from ..loading import LOG_FORMATS, LOG_LEVELS, setup_logging
from ..metrics import ClusterCollector, serve_in_thread
from .base import State, app_option, split


@click.command("metrics")
@app_option
@click.option(
    "-p", "--port", type=click.IntRange(0, 65535), default=9808, show_default=True, help="Port."
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("-Q", "--queues", metavar="Q1,Q2", help="Queues to report (default: all known).")
@click.option(
    "-l",
    "--loglevel",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    default="info",
    show_default=True,
)
@click.option("--log-format", type=click.Choice(LOG_FORMATS), default="text", show_default=True)
@click.pass_obj
def metrics_command(
    state: State,
    app_spec: str | None,
    port: int,
    host: str,
    queues: str | None,
    loglevel: str,
    log_format: str,
) -> None:
    """Serve queue depths and live workers to Prometheus, read from the broker at each scrape
    (per-task counters and histograms come from `conveyor worker --metrics-port`)."""
    setup_logging(loglevel, log_format=log_format)
    app = state.app(app_spec)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ClusterCollector(app, split(queues) or None))
    server = serve_in_thread(registry, host, port)
    click.echo(f"serving http://{host}:{server.port}/metrics (Ctrl-C stops)", err=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        server.server_close()
