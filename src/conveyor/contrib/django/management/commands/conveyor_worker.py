"""``manage.py conveyor_worker``: ``conveyor worker`` for this project.

Every option of ``conveyor worker`` is accepted (``-c 4 -Q default,emails -l info``); ``-A``
defaults to the project's app. ``--reload`` restarts the worker when a Python file changes
(development); ``-B`` also runs ``manage.py conveyor_beat`` (periodic tasks from the settings
and the database) next to it.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from typing import TypedDict, Unpack

from django.core.management.base import BaseCommand, CommandParser

from conveyor.cli import find_app, main

from ...worker import setup_worker
from .. import (
    PassThroughParser,
    beat_arguments,
    child_arguments,
    default_app_spec,
    run_with_reloader,
    strip_django_options,
)


class Options(TypedDict, total=False):
    """The options :meth:`Command.handle` reads (Django passes its own ones too)."""

    app_spec: str | None
    beat: bool
    reload: bool
    loglevel: str | None


class Command(BaseCommand):  # type: ignore[misc]
    help = "Run a Conveyor worker (options of `conveyor worker`, plus --reload and -B)."

    def create_parser(self, prog_name: str, subcommand: str, **kwargs: object) -> CommandParser:
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        parser.__class__ = type("WorkerParser", (PassThroughParser, type(parser)), {})
        return parser

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("-A", "--app", dest="app_spec", help="The Conveyor app.")
        parser.add_argument("-B", "--beat", action="store_true", help="Also run beat.")
        parser.add_argument("--reload", action="store_true", help="Restart on code changes.")
        parser.add_argument("-l", "--loglevel", default=None, help="Log level (default: info).")

    def handle(self, *args: str, **options: Unpack[Options]) -> None:
        if options["reload"]:
            sys.exit(run_with_reloader(child_arguments()))
        spec = options["app_spec"] or default_app_spec()
        setup_worker(find_app(spec))
        argv = ["worker", "-A", spec, *strip_django_options(args)]
        if options["loglevel"]:
            argv += ["-l", options["loglevel"]]
        beat = None
        if options["beat"]:
            beat = subprocess.Popen(beat_arguments(spec, options["loglevel"]))
            argv += ["--beat-process", f"on (manage.py conveyor_beat, pid {beat.pid})"]
        try:
            main(argv)
        finally:
            if beat is not None and beat.poll() is None:
                beat.send_signal(signal.SIGTERM)
                beat.wait(30)
