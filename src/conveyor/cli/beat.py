"""``conveyor beat``: the scheduler sending periodic tasks."""

from __future__ import annotations

import logging

import click

from .. import __version__
from ..app import Conveyor
from ..loading import LOG_FORMATS, LOG_LEVELS, prepare_app, redact_text, setup_logging
from .base import State, app_option, held_pidfile, process_options
from .celery_cli import Command
from .output import echo_banner

logger = logging.getLogger("conveyor.beat")

#: What ``-s/--schedule`` (Celery's beat state file) means for Conveyor.
SCHEDULE_NOTE = (
    "-s/--schedule names Celery's beat state file; Conveyor's beat keeps its state (the last "
    "run of each entry and the claim of each due run) in the broker, so %s is not used"
)


def schedule_option(fn: click.decorators.FC) -> click.decorators.FC:
    """Celery's ``-s/--schedule FILE``: accepted, and explained in the log."""
    return click.option(
        "-s",
        "--schedule",
        "schedule_file",
        metavar="FILE",
        help="Celery's beat state file: not used (Conveyor keeps beat state in the broker).",
    )(fn)


@click.command("beat", cls=Command)
@app_option
@click.option("-n", "--name", help="Name of this beat in logs (default: beat@host:pid).")
@click.option(
    "--max-interval",
    type=click.FloatRange(0, min_open=True),
    default=5.0,
    show_default=True,
    help="Longest sleep between ticks (seconds).",
)
@click.option(
    "-l",
    "--loglevel",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    default="info",
    show_default=True,
)
@schedule_option
@process_options
@click.option(
    "--log-format",
    type=click.Choice(LOG_FORMATS),
    default="text",
    show_default=True,
    help="json: one JSON object per line.",
)
@click.pass_obj
def beat_command(
    state: State,
    app_spec: str | None,
    name: str | None,
    max_interval: float,
    loglevel: str,
    schedule_file: str | None,
    pidfile: str | None,
    logfile: str | None,
    log_format: str,
) -> None:
    """Run the beat scheduler: send periodic tasks (any number of beats may run)."""
    app = state.app(app_spec)  # first: the app module may connect setup_logging receivers
    setup_logging(loglevel, logfile, log_format)
    if schedule_file:
        logger.warning(SCHEDULE_NOTE, schedule_file)
    with held_pidfile(pidfile):
        run(state, app, app_spec, name, max_interval, log_format)


def run(
    state: State,
    app: Conveyor,
    app_spec: str | None,
    name: str | None,
    max_interval: float,
    log_format: str,
) -> None:
    prepare_app(app)
    app.broker.time()  # fail fast, with a clear error, if the broker is unreachable
    entries = sorted(app.conf.beat_schedule)
    if log_format == "json":
        logging.getLogger("conveyor.beat").info(
            "conveyor %s beat",
            __version__,
            extra={"broker": redact_text(app.broker_url), "entries": entries},
        )
    else:
        echo_banner(
            f"conveyor {__version__}",
            "beat",
            [
                f"  app:      {app.main or '__main__'} ({state.spec(app_spec)})",
                f"  broker:   {redact_text(app.broker_url)}",
                f"  entries ({len(entries)}):",
                *(f"    . {entry}" for entry in entries),
            ],
        )
    app.run_beat(name=name, max_interval=max_interval)
