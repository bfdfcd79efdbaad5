"""The ``conveyor`` command line.

``conveyor -A proj worker`` runs workers; ``beat`` the scheduler; ``status``, ``purge``,
``dlq``, ``revoke`` and ``result`` inspect and steer a broker; ``migrate`` creates PostgreSQL
tables. ``-A`` may also come from
``$CONVEYOR_APP``. Errors are one line on stderr (exit code 1; 2 for usage errors), and URL
passwords never reach the terminal or the logs.
"""

from __future__ import annotations

from collections.abc import Sequence

import click

from ..loading import find_app, redact_text, setup_logging
from .base import Group, State
from .beat import beat_command
from .dlq import dlq_group
from .inspection import purge, result, revoke, status
from .migrate import migrate_command
from .worker import worker_command

__all__ = ["cli", "find_app", "main", "redact_text", "setup_logging"]


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-A",
    "--app",
    "app_spec",
    envvar="CONVEYOR_APP",
    metavar="MODULE[:ATTR]",
    help="The Conveyor app (default: $CONVEYOR_APP).",
)
@click.pass_context
def cli(ctx: click.Context, app_spec: str | None) -> None:
    """Conveyor: a distributed task queue."""
    ctx.obj = State(app_spec)


for command in (
    worker_command,
    beat_command,
    status,
    purge,
    revoke,
    result,
    dlq_group,
    migrate_command,
):
    cli.add_command(command)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``conveyor`` script and ``python -m conveyor``."""
    cli.main(args=list(argv) if argv is not None else None, prog_name="conveyor")
