"""Shared logic of ``manage.py conveyor_worker`` and ``manage.py conveyor_beat``."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from django.utils import autoreload

from conveyor._state import default_app
from conveyor.exceptions import ConfigurationError

logger = logging.getLogger("conveyor.django")

#: Options of ``manage.py`` itself, kept out of what is passed on to ``conveyor``.
DJANGO_FLAGS = frozenset({"--traceback", "--no-color", "--force-color", "--skip-checks"})
DJANGO_VALUED = frozenset({"--settings", "--pythonpath", "-v", "--verbosity"})


def default_app_spec() -> str:
    """``-A`` for the project's app: ``$CONVEYOR_APP``, else the module holding the default
    app (``proj.conveyor`` in the usual layout)."""
    if os.environ.get("CONVEYOR_APP"):
        return os.environ["CONVEYOR_APP"]
    app = default_app()
    found: list[tuple[bool, bool, str]] = []
    for module_name, module in list(sys.modules.items()):
        try:
            names = [attr for attr, value in vars(module).items() if value is app]
        except TypeError:  # not a module with a __dict__
            continue
        for attr in names:
            found.append(
                (attr != "app", not module_name.endswith(".conveyor"), f"{module_name}:{attr}")
            )
    if not found:
        raise ConfigurationError("cannot tell where the Conveyor app is defined: pass -A")
    return min(found)[2]


def strip_django_options(argv: Sequence[str]) -> list[str]:
    """``argv`` without the options ``manage.py`` already handled."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in DJANGO_FLAGS:
            continue
        elif arg in DJANGO_VALUED:
            skip = True
        elif arg.split("=", 1)[0] in DJANGO_VALUED:
            continue
        else:
            kept.append(arg)
    return kept


def run_with_reloader(child_args: Sequence[str], *, stop_timeout: float = 30.0) -> int:
    """Run ``child_args`` in a child process and restart it whenever a Python file of the
    project changes (Django's autoreloader watches the files; the child gets SIGTERM, so a
    worker finishes its tasks first). Returns the child's exit code once stopped."""
    changed = threading.Event()
    stopping = threading.Event()

    def on_change(sender: object, file_path: Path, **kwargs: object) -> bool:
        logger.info("%s changed, restarting", file_path)
        changed.set()
        return True  # handled: Django's own reload (sys.exit) must not happen here

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    autoreload.file_changed.connect(on_change, weak=False)
    reloader = autoreload.get_reloader()
    threading.Thread(target=reloader.run_loop, name="conveyor-reloader", daemon=True).start()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, on_signal)
    code = 0
    try:
        while not stopping.is_set():
            changed.clear()
            child = subprocess.Popen(list(child_args))
            while child.poll() is None and not changed.is_set() and not stopping.is_set():
                stopping.wait(0.2)
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
                try:
                    child.wait(stop_timeout)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
            code = child.returncode
            if not changed.is_set() and not stopping.is_set():
                logger.error("exited with code %s; waiting for a file change to restart", code)
                while not changed.is_set() and not stopping.is_set():
                    stopping.wait(0.2)
    finally:
        reloader.stop()
        autoreload.file_changed.disconnect(on_change)
    return code


def child_arguments() -> list[str]:
    """The command line of this process, without ``--reload``."""
    return [str(arg) for arg in autoreload.get_child_arguments() if arg != "--reload"]


def beat_arguments(app_spec: str, loglevel: str | None) -> list[str]:
    """The command line of ``manage.py conveyor_beat`` next to this worker's command line."""
    args = [str(arg) for arg in autoreload.get_child_arguments()]
    prefix = args[: args.index("conveyor_worker")] if "conveyor_worker" in args else args[:2]
    extra = ["-l", loglevel] if loglevel else []
    return [*prefix, "conveyor_beat", "-A", app_spec, *extra]


class PassThroughParser:
    """Mixin turning unknown options into positional ``args`` (passed on to ``conveyor``)."""

    def parse_args(
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> argparse.Namespace:
        parsed: tuple[argparse.Namespace, list[str]]
        parsed = self.parse_known_args(args, namespace)  # type: ignore[attr-defined]  # mixin of ArgumentParser
        known, rest = parsed
        known.args = [*(getattr(known, "args", None) or []), *rest]
        return known
