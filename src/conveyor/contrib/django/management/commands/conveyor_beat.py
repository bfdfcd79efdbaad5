"""``manage.py conveyor_beat``: send periodic tasks from ``CONVEYOR_BEAT_SCHEDULE`` and the
database (edited in the admin; changes are picked up within ``--poll-interval`` seconds).

Any number of beats may run: each run is claimed in the broker and sent exactly once.
"""

from __future__ import annotations

import sys
from typing import TypedDict, Unpack

from django.core.management.base import BaseCommand, CommandParser

from conveyor.cli import find_app, setup_logging

from ...schedules import run_beat
from .. import child_arguments, default_app_spec, run_with_reloader


class Options(TypedDict, total=False):
    """The options :meth:`Command.handle` reads (Django passes its own ones too)."""

    app_spec: str | None
    loglevel: str
    name: str | None
    max_interval: float
    poll_interval: float
    reload: bool


class Command(BaseCommand):  # type: ignore[misc]
    help = "Run the Conveyor beat scheduler with periodic tasks from settings and the database."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("-A", "--app", dest="app_spec", help="The Conveyor app.")
        parser.add_argument("-l", "--loglevel", default="info", help="Log level.")
        parser.add_argument("-n", "--name", default=None, help="Name of this beat in logs.")
        parser.add_argument(
            "--max-interval", type=float, default=5.0, help="Longest sleep between ticks (s)."
        )
        parser.add_argument(
            "--poll-interval",
            type=float,
            default=2.0,
            help="How often the database is checked for schedule changes (s).",
        )
        parser.add_argument("--reload", action="store_true", help="Restart on code changes.")

    def handle(self, *args: str, **options: Unpack[Options]) -> None:
        if options["reload"]:
            sys.exit(run_with_reloader(child_arguments()))
        app = find_app(options["app_spec"] or default_app_spec())
        setup_logging(options["loglevel"])  # after: the app may connect setup_logging receivers
        run_beat(
            app,
            name=options["name"],
            max_interval=options["max_interval"],
            poll_interval=options["poll_interval"],
        )
