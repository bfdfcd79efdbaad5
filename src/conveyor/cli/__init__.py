"""The ``conveyor`` command line.

``conveyor -A proj worker`` runs workers; ``beat`` the scheduler; ``status``, ``purge``,
``dlq``, ``revoke`` and ``result`` inspect and steer a broker; ``events`` shows the event
stream; ``inspect``, ``control`` and ``queue`` ask and steer running workers; ``doctor`` checks
a deployment; ``dashboard`` serves the web dashboard; ``migrate`` creates PostgreSQL tables.
``-A`` may also come from
``$CONVEYOR_APP``. Errors are one line on stderr (exit code 1; 2 for usage errors), and URL
passwords never reach the terminal or the logs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import click

from ..app import Conveyor
from ..loading import find_app, redact_text, setup_logging
from .base import LazyGroup, State

__all__ = ["cli", "find_app", "main", "redact_text", "setup_logging"]


@click.group(
    cls=LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"]},
    # Each command is imported when it runs (``conveyor worker`` never loads the dashboard,
    # the metrics exporter or beat's scheduler): start-up time is part of the product.
    lazy_commands={
        "worker": "conveyor.cli.worker:worker_command",
        "beat": "conveyor.cli.beat:beat_command",
        "status": "conveyor.cli.inspection:status",
        "purge": "conveyor.cli.inspection:purge",
        "revoke": "conveyor.cli.inspection:revoke",
        "result": "conveyor.cli.inspection:result",
        "dlq": "conveyor.cli.dlq:dlq_group",
        "dashboard": "conveyor.cli.dashboard:dashboard_command",
        "doctor": "conveyor.cli.doctor:doctor",
        "migrate": "conveyor.cli.migrate:migrate_command",
        "events": "conveyor.cli.events:events_command",
        "inspect": "conveyor.cli.control:inspect_group",
        "control": "conveyor.cli.control:control_group",
        "queue": "conveyor.cli.control:queue_group",
        "metrics": "conveyor.cli.metrics:metrics_command",
    },
)
@click.option(
    "-A",
    "--app",
    "app_spec",
    envvar="CONVEYOR_APP",
    metavar="MODULE[:ATTR]",
    help="The Conveyor app (default: $CONVEYOR_APP).",
)
@click.option(
    "-b", "--broker", metavar="URL", help="Broker URL (sets $CONVEYOR_BROKER_URL, as in Celery)."
)
@click.option(
    "--result-backend", metavar="URL", help="Result store URL (sets $CONVEYOR_RESULT_BACKEND)."
)
@click.option(
    "--workdir",
    type=click.Path(exists=True, file_okay=False),
    help="Change to this directory before loading the app.",
)
@click.pass_context
def cli(
    ctx: click.Context,
    app_spec: str | None,
    broker: str | None,
    result_backend: str | None,
    workdir: str | None,
) -> None:
    """Conveyor: a distributed task queue."""
    if workdir:
        os.chdir(workdir)
    # Environment variables, not settings: they override the app's configuration the same
    # way in this process and in every process it starts.
    if broker:
        os.environ["CONVEYOR_BROKER_URL"] = broker
    if result_backend:
        os.environ["CONVEYOR_RESULT_BACKEND"] = result_backend
    given = ctx.obj if isinstance(ctx.obj, Conveyor) else None  # from main(app=...)
    ctx.obj = State(app_spec, given)


def main(argv: Sequence[str] | None = None, app: Conveyor | None = None) -> None:
    """Entry point of the ``conveyor`` script and ``python -m conveyor``; ``app`` (from
    ``Conveyor.start()``) is used when no ``-A`` is given."""
    cli.main(args=list(argv) if argv is not None else None, prog_name="conveyor", obj=app)
