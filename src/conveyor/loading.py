"""Loading: find the app a process runs, get it ready to run tasks, and set up logging.

Used by the command line and by the processes a worker starts. Errors are
ConfigurationErrors whose message is one line naming the place, and URL passwords never
reach the logs.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
import traceback
from collections.abc import Callable
from importlib.metadata import entry_points
from types import ModuleType
from typing import TYPE_CHECKING

from . import signals
from .app import Conveyor
from .exceptions import ConfigurationError, ConveyorError
from .utils.log import LOG_FORMAT, JsonFormatter, RedactingFormatter
from .utils.redaction import redact_text

if TYPE_CHECKING:
    from .worker.execution import TaskRunner

__all__ = [
    "LOG_FORMAT",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "WORKER_SETUP_GROUP",
    "JsonFormatter",
    "RedactingFormatter",
    "WorkerSetup",
    "describe_error",
    "find_app",
    "prepare_app",
    "redact_text",
    "setup_logging",
]

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
#: Values of ``--log-format``.
LOG_FORMATS = ("text", "json")
#: Entry point group of integrations that prepare processes running tasks (see prepare_app).
WORKER_SETUP_GROUP = "conveyor.worker_setup"

# Frames of Conveyor's command-line code (this module and conveyor/cli/) are skipped, like
# importlib's, when an error names its place.
_OWN_CODE = (__file__, os.path.join(os.path.dirname(__file__), "cli", ""))


# -- logging ---------------------------------------------------------------------------------
def setup_logging(level: str, logfile: str | None = None, log_format: str = "text") -> None:
    """Log lines at ``level`` and above to stderr (or appended to ``logfile``), passwords
    redacted: text lines, or with ``log_format="json"`` one JSON object per line
    (:class:`~conveyor.utils.log.JsonFormatter`).

    As in Celery: if a receiver is connected to ``conveyor.signals.setup_logging``, it is
    sent instead and logging is left to it; otherwise ``after_setup_logger`` and
    ``after_setup_task_logger`` are sent once logging is set up (``logger``: the root
    logger both times: task loggers, :func:`conveyor.utils.log.get_task_logger`, log through
    it)."""
    options: dict[str, object] = {
        "loglevel": logging.getLevelNamesMapping()[level.upper()],
        "logfile": logfile,
        "format": LOG_FORMAT,
        "colorize": False,
    }
    if signals.setup_logging.has_receivers():
        signals.setup_logging.send(sender=None, **options)
        return
    handler: logging.Handler = (
        logging.FileHandler(logfile, encoding="utf-8")
        if logfile
        else logging.StreamHandler(sys.stderr)
    )
    if log_format not in LOG_FORMATS:
        raise ConfigurationError(f"unknown log format {log_format!r}: use text or json")
    formatter = JsonFormatter() if log_format == "json" else RedactingFormatter(LOG_FORMAT)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    signals.after_setup_logger.send(sender=None, logger=root, **options)
    signals.after_setup_task_logger.send(sender=None, logger=root, **options)


# -- finding the app -------------------------------------------------------------------------
#: Submodules of a package searched for the app of a bare ``-A proj`` (Celery looks in
#: ``proj.celery``; Conveyor's own layout is ``proj.conveyor``).
APP_SUBMODULES = ("conveyor", "celery")
#: Attributes searched for the app in a module, in order (Celery's ``app``, then ``celery``).
APP_ATTRIBUTES = ("app", "celery")


def find_app(spec: str) -> Conveyor:
    """The app named by ``-A spec``, found the way Celery finds it.

    ``module:attr`` (or ``module.attr``) names it. For a bare module: its ``app`` attribute,
    then ``celery``; for a package, then the same in ``proj.conveyor`` and ``proj.celery``
    (Celery's ``proj/celery.py`` layout); then the only Conveyor instance in the module. When
    nothing is found, the error lists what was tried."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `python -m`, so `-A proj` finds ./proj
    module_name, _, attr = spec.partition(":")
    try:
        module = _import(module_name)
    except ConfigurationError:
        # ``proj.celery.app``: Celery also accepts the attribute after a dot.
        head, _, tail = module_name.rpartition(".")
        if attr or not head or not _importable(head):
            raise
        module_name, attr, spec = head, tail, f"{head}:{tail}"
        module = _import(module_name)
    if attr:
        obj: object = module
        for part in attr.split("."):
            if not hasattr(obj, part):
                raise ConfigurationError(f"module {module_name!r} has no attribute {attr!r}")
            obj = getattr(obj, part)
        if not isinstance(obj, Conveyor):
            kind = type(obj).__name__
            raise ConfigurationError(f"{spec!r} is a {kind}, not a Conveyor app")
        return obj
    tried: list[str] = []
    found = _app_in(module, tried)
    if found is not None:
        return found
    if hasattr(module, "__path__"):
        for sub in APP_SUBMODULES:
            name = f"{module_name}.{sub}"
            if not _importable(name):
                tried.append(f"{name} (no such module)")
                continue
            found = _app_in(_import(name), tried)
            if found is not None:
                return found
    apps: dict[int, tuple[str, Conveyor]] = {}
    for name, value in vars(module).items():
        if isinstance(value, Conveyor):
            apps.setdefault(id(value), (name, value))
    if len(apps) == 1:
        return next(iter(apps.values()))[1]
    if apps:
        names = ", ".join(sorted(name for name, _ in apps.values()))
        raise ConfigurationError(
            f"module {module_name!r} has several Conveyor apps ({names}): "
            f"pick one with -A {module_name}:NAME"
        )
    tried.append(f"any Conveyor instance in {module_name}")
    where = module_name.replace(".", "/")
    fix = (
        f"define `app = Conveyor(...)` in {where}/celery.py or {where}/__init__.py"
        if hasattr(module, "__path__")
        else f"define `app = Conveyor(...)` in {where}.py"
    )
    raise ConfigurationError(
        f"no Conveyor app found for -A {module_name} (tried {', '.join(tried)}): "
        f"{fix}, or pass -A MODULE:NAME"
    )


def _app_in(module: ModuleType, tried: list[str]) -> Conveyor | None:
    """The app in ``module``'s ``app`` or ``celery`` attribute (noting each name tried)."""
    for attr in APP_ATTRIBUTES:
        candidate = getattr(module, attr, None)
        if isinstance(candidate, Conveyor):
            return candidate
        tried.append(f"{module.__name__}.{attr}")
    return None


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _import(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and (name == missing or name.startswith(missing + ".")):
            raise ConfigurationError(
                f"cannot import {name!r}: no module named {missing!r} (searched from {os.getcwd()})"
            ) from None
        raise ConfigurationError(f"importing {name!r} failed: {describe_error(exc)}") from None
    except ConveyorError:
        raise
    except Exception as exc:
        raise ConfigurationError(f"importing {name!r} failed: {describe_error(exc)}") from None


def describe_error(exc: BaseException) -> str:
    """``Type: message (file:line)``, the line being the innermost frame outside importlib
    and Conveyor's command-line code."""
    frames = [
        frame
        for frame in traceback.extract_tb(exc.__traceback__)
        if not frame.filename.startswith("<frozen") and not frame.filename.startswith(_OWN_CODE)
    ]
    where = f" ({frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"


# -- getting the app ready -------------------------------------------------------------------
#: What a ``conveyor.worker_setup`` entry point refers to.
type WorkerSetup = Callable[[Conveyor], type[TaskRunner] | None]


def prepare_app(app: Conveyor) -> type[TaskRunner] | None:
    """Get ``app`` ready to run tasks in this process; return the TaskRunner class its tasks
    need, or None for the default one.

    First every integration registered in the ``conveyor.worker_setup`` entry point group
    (name: the integration, value: ``module:function``) is called with the app, in name order:
    it sets up what it needs (``conveyor.contrib.django`` calls ``django.setup()`` for a
    project that set ``DJANGO_SETTINGS_MODULE``) and returns a TaskRunner subclass or None.
    Then the app is finalized (its task modules imported). An integration whose module cannot
    be imported because a package it needs is not installed is skipped.
    """
    runner_class: type[TaskRunner] | None = None
    chosen_by = ""
    for entry in sorted(entry_points(group=WORKER_SETUP_GROUP), key=lambda e: e.name):
        try:
            setup: WorkerSetup = entry.load()
        except ModuleNotFoundError as exc:
            own_package = entry.module.partition(".")[0]
            if not exc.name or exc.name.partition(".")[0] == own_package:
                raise
            continue  # e.g. conveyor's Django setup where Django is not installed
        runner = setup(app)
        if runner is None:
            continue
        if runner_class is not None and runner is not runner_class:
            raise ConfigurationError(
                f"worker setups {chosen_by!r} and {entry.name!r} both choose a task runner "
                f"({runner_class.__qualname__}, {runner.__qualname__}); only one may"
            )
        runner_class, chosen_by = runner, entry.name
    app.finalize()
    return runner_class
