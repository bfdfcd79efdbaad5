"""``conveyor beat``: the scheduler sending periodic tasks."""

from __future__ import annotations

import click

from .. import __version__
from ..loading import LOG_LEVELS, prepare_app, redact_text, setup_logging
from .base import State, app_option
from .output import banner_console


@click.command("beat")
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
@click.pass_obj
def beat_command(
    state: State, app_spec: str | None, name: str | None, max_interval: float, loglevel: str
) -> None:
    """Run the beat scheduler: send periodic tasks (any number of beats may run)."""
    app = state.app(app_spec)  # first: the app module may connect setup_logging receivers
    setup_logging(loglevel)
    prepare_app(app)
    app.broker.time()  # fail fast, with a clear error, if the broker is unreachable
    entries = sorted(app.conf.beat_schedule)
    banner_console().print(
        "\n".join(
            [
                f"[bold]conveyor {__version__}[/] beat",
                f"  app:      {app.main or '__main__'} ({state.spec(app_spec)})",
                f"  broker:   {redact_text(app.broker_url)}",
                f"  entries ({len(entries)}):",
                *(f"    . {entry}" for entry in entries),
            ]
        )
    )
    app.run_beat(name=name, max_interval=max_interval)
