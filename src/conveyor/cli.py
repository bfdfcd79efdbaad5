"""The ``conveyor`` command line.

``conveyor -A proj worker`` runs workers; ``beat`` the scheduler; ``status``, ``purge``,
``dlq``, ``revoke`` and ``result`` inspect and steer a broker. ``-A`` may also come from
``$CONVEYOR_APP``. Errors are one line on stderr (exit code 1; 2 for usage errors), and URL
passwords never reach the terminal or the logs.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
import re
import socket
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NoReturn

import click
from rich.console import Console
from rich.table import Table

from .exceptions import ConfigurationError, ConveyorError

if TYPE_CHECKING:
    from .app import Conveyor
    from .worker.execution import TaskRunner

_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][\w+.-]*://[^:/@\s]*):[^@\s]*@")
LOG_FORMAT = "[%(asctime)s %(levelname)s/%(processName)s] %(name)s: %(message)s"
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def redact_text(text: str) -> str:
    """Replace the password of every URL in ``text`` with ``***``."""
    if "@" not in text:  # no URL with credentials: skip the regex (one line per task)
        return text
    return _URL_PASSWORD.sub(r"\g<head>:***@", text)


class RedactingFormatter(logging.Formatter):
    """A formatter that hides URL passwords in the whole line, tracebacks included.

    It formats the default timestamp once per second, not once per line: a worker logs a
    line per task, and ``localtime`` + ``strftime`` were a fifth of that line's cost."""

    _second: tuple[int, str] = (-1, "")

    def format(self, record: logging.LogRecord) -> str:
        return redact_text(super().format(record))

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        second = int(record.created // 1)
        cached_second, text = self._second
        if cached_second != second:
            text = time.strftime(self.default_time_format, self.converter(second))
            self._second = (second, text)
        return f"{text},{int(record.msecs):03d}"


def setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter(LOG_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


# -- finding the app -------------------------------------------------------------------------
def find_app(spec: str) -> Conveyor:
    """The app named by ``module[:attr]``. For a bare module: its ``app`` attribute, then
    ``module.conveyor:app``, then the only Conveyor instance in the module."""
    from .app import Conveyor

    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `python -m`, so `-A proj` finds ./proj
    module_name, _, attr = spec.partition(":")
    module = _import(module_name)
    if attr:
        obj: Any = module
        for part in attr.split("."):
            if not hasattr(obj, part):
                raise ConfigurationError(f"module {module_name!r} has no attribute {attr!r}")
            obj = getattr(obj, part)
        if not isinstance(obj, Conveyor):
            kind = type(obj).__name__
            raise ConfigurationError(f"{spec!r} is a {kind}, not a Conveyor app")
        return obj
    candidate = getattr(module, "app", None)
    if isinstance(candidate, Conveyor):
        return candidate
    if hasattr(module, "__path__") and importlib.util.find_spec(f"{module_name}.conveyor"):
        candidate = getattr(_import(f"{module_name}.conveyor"), "app", None)
        if isinstance(candidate, Conveyor):
            return candidate
    found: dict[int, tuple[str, Conveyor]] = {}
    for name, value in vars(module).items():
        if isinstance(value, Conveyor):
            found.setdefault(id(value), (name, value))
    if len(found) == 1:
        return next(iter(found.values()))[1]
    if found:
        names = ", ".join(sorted(name for name, _ in found.values()))
        raise ConfigurationError(
            f"module {module_name!r} has several Conveyor apps ({names}): "
            f"pick one with -A {module_name}:NAME"
        )
    raise ConfigurationError(
        f"no Conveyor app found in {module_name!r}: define `app = Conveyor(...)` there "
        f"or pass -A {module_name}:NAME"
    )


def _import(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if missing and (name == missing or name.startswith(missing + ".")):
            raise ConfigurationError(
                f"cannot import {name!r}: no module named {missing!r} (searched from {os.getcwd()})"
            ) from None
        raise ConfigurationError(f"importing {name!r} failed: {_describe(exc)}") from None
    except ConveyorError:
        raise
    except Exception as exc:
        raise ConfigurationError(f"importing {name!r} failed: {_describe(exc)}") from None


def _describe(exc: BaseException) -> str:
    """``Type: message (file:line)``, the line being the innermost frame outside importlib."""
    frames = [
        frame
        for frame in traceback.extract_tb(exc.__traceback__)
        if not frame.filename.startswith("<frozen") and frame.filename != __file__
    ]
    where = f" ({frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"


# -- the command group -----------------------------------------------------------------------
class _Group(click.Group):
    """Turns errors into one line: Conveyor and OS errors, and (with a hint) anything else."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except (ConveyorError, OSError) as exc:
            raise click.ClickException(redact_text(str(exc) or type(exc).__name__)) from None
        except Exception as exc:
            if os.environ.get("CONVEYOR_TRACEBACK"):
                raise
            message = f"{_describe(exc)} (set CONVEYOR_TRACEBACK=1 for the traceback)"
            raise click.ClickException(redact_text(message)) from None


class _State:
    def __init__(self, app_spec: str | None) -> None:
        self.app_spec = app_spec
        self._app: Conveyor | None = None

    def spec(self, override: str | None) -> str:
        spec = override or self.app_spec
        if not spec:
            raise click.UsageError("no app given: pass -A module[:attr] or set CONVEYOR_APP")
        return spec

    def app(self, override: str | None) -> Conveyor:
        if self._app is None:
            self._app = find_app(self.spec(override))
        return self._app


def _app_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "-A", "--app", "app_spec", metavar="MODULE[:ATTR]", help="The Conveyor app."
    )(fn)


def _split(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
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
    ctx.obj = _State(app_spec)


# -- worker ----------------------------------------------------------------------------------
@cli.command()
@_app_option
@click.option(
    "-c", "--concurrency", type=click.IntRange(1), help="Child processes (default: CPU count)."
)
@click.option("--threads", type=click.IntRange(1), help="Threads per child for sync tasks.")
@click.option(
    "-P",
    "--pool",
    type=click.Choice(["prefork", "solo"]),
    default="prefork",
    show_default=True,
    help="solo: one process, no supervisor (debugging).",
)
@click.option("-Q", "--queues", metavar="Q1,Q2", help="Queues to consume (default: the default).")
@click.option(
    "--prefetch",
    type=click.IntRange(1),
    help="Messages leased per free slot (default 1: only what can run now).",
)
@click.option("--max-tasks-per-child", type=click.IntRange(1), help="Recycle a child after N.")
@click.option(
    "--max-memory-per-child",
    type=click.IntRange(1),
    metavar="KIB",
    help="Recycle a child once it uses more memory (checked after each task).",
)
@click.option(
    "-l",
    "--loglevel",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    default="info",
    show_default=True,
)
@click.option("-n", "--hostname", help="Node name (%h: host name, %i: pid).")
@click.option(
    "--shutdown-timeout",
    type=click.FloatRange(0, min_open=True),
    help="Seconds a warm shutdown waits for running tasks.",
)
@click.option(
    "--terminate-grace",
    type=click.FloatRange(0),
    default=5.0,
    show_default=True,
    help="Seconds a terminated task gets before its process is killed.",
)
@click.option(
    "-B", "--beat", is_flag=True, help="Also run beat (safe on several workers: runs go once)."
)
@click.pass_obj
def worker(
    state: _State,
    app_spec: str | None,
    concurrency: int | None,
    threads: int | None,
    pool: str,
    queues: str | None,
    prefetch: int | None,
    max_tasks_per_child: int | None,
    max_memory_per_child: int | None,
    loglevel: str,
    hostname: str | None,
    shutdown_timeout: float | None,
    terminate_grace: float,
    beat: bool,
) -> None:
    """Run a worker: a supervisor and child processes consuming tasks."""
    setup_logging(loglevel)
    spec = state.spec(app_spec)
    app = state.app(app_spec)
    runner_class = _prepare(app)
    if beat:
        _beat_runner()  # fails now, clearly, if beat is unavailable
    conf = app.conf
    name = _expand_hostname(hostname) if hostname else None
    queue_list = _split(queues) or [conf.task_default_queue]
    threads = threads or conf.worker_threads
    timeout = float(shutdown_timeout or conf.worker_shutdown_timeout)
    if pool == "solo":
        from .worker.child import run_solo
        from .worker.consumer import default_hostname

        _banner(app, spec, "solo", 1, threads, queue_list, prefetch, beat)
        run_solo(
            app,
            shutdown_timeout=timeout,
            max_memory_kib=max_memory_per_child or conf.worker_max_memory_per_child,
            queues=queue_list,
            concurrency=threads,
            hostname=name or default_hostname(),
            prefetch_multiplier=prefetch,
            max_tasks=max_tasks_per_child or conf.worker_max_tasks_per_child,
            beat=beat,
            runner_class=runner_class,
        )
        return
    from .worker.supervisor import Supervisor

    supervisor = Supervisor(
        app,
        concurrency=concurrency,
        threads=threads,
        queues=queue_list,
        prefetch_multiplier=prefetch,
        max_tasks_per_child=max_tasks_per_child,
        max_memory_per_child=max_memory_per_child,
        hostname=name,
        shutdown_timeout=timeout,
        terminate_grace=terminate_grace,
        app_spec=spec,
        beat=beat,
        runner_class=runner_class,
    )
    _banner(app, spec, "prefork", supervisor.concurrency, threads, queue_list, prefetch, beat)
    sys.exit(supervisor.run())


def _prepare(app: Conveyor) -> type[TaskRunner] | None:
    """Finalize ``app`` (import its task modules). For a Django project - one whose app module
    set ``DJANGO_SETTINGS_MODULE``, as with Celery - set Django up first and return the task
    runner that keeps database connections fresh around each task."""
    runner_class: type[TaskRunner] | None = None
    if os.environ.get("DJANGO_SETTINGS_MODULE") and importlib.util.find_spec("django"):
        from .contrib.django.worker import DjangoTaskRunner, setup_worker

        setup_worker(app)
        runner_class = DjangoTaskRunner
    app.finalize()
    return runner_class


def _expand_hostname(template: str) -> str:
    host = socket.gethostname()
    return (
        template.replace("%h", host)
        .replace("%n", host.split(".")[0])
        .replace("%i", str(os.getpid()))
    )


def _banner(
    app: Conveyor,
    spec: str,
    pool: str,
    processes: int,
    threads: int,
    queues: Sequence[str],
    prefetch: int | None,
    beat: bool,
) -> None:
    console = Console(stderr=True, highlight=False, soft_wrap=True)
    tasks = sorted(name for name in app.tasks if not name.startswith("conveyor."))
    lines = [
        f"[bold]conveyor {_version()}[/] worker",
        f"  app:          {app.main or '__main__'} ({spec})",
        f"  broker:       {redact_text(app.broker_url)}",
        f"  results:      {redact_text(app.result_backend_url)}",
        f"  queues:       {', '.join(queues)}",
        f"  concurrency:  {processes} process(es) x {threads} thread(s) ({pool})",
        f"  prefetch:     {prefetch or app.conf.worker_prefetch_multiplier} per free slot",
        f"  beat:         {'embedded' if beat else 'off'}",
        f"  tasks ({len(tasks)}):",
        *(f"    . {name}" for name in tasks),
    ]
    console.print("\n".join(lines), markup=True)


# -- beat ------------------------------------------------------------------------------------
def _beat_runner() -> Callable[..., Any]:
    if importlib.util.find_spec("conveyor.beat.scheduler") is None:
        raise click.ClickException("beat is not available: conveyor.beat.scheduler is missing")
    from .beat.scheduler import run_beat

    return run_beat


@cli.command()
@_app_option
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
def beat(
    state: _State, app_spec: str | None, name: str | None, max_interval: float, loglevel: str
) -> None:
    """Run the beat scheduler: send periodic tasks (any number of beats may run)."""
    setup_logging(loglevel)
    app = state.app(app_spec)
    _prepare(app)
    _beat_runner()
    app.broker.time()  # fail fast, with a clear error, if the broker is unreachable
    entries = sorted(app.conf.beat_schedule)
    Console(stderr=True, highlight=False, soft_wrap=True).print(
        "\n".join(
            [
                f"[bold]conveyor {_version()}[/] beat",
                f"  app:      {app.main or '__main__'} ({state.spec(app_spec)})",
                f"  broker:   {redact_text(app.broker_url)}",
                f"  entries ({len(entries)}):",
                *(f"    . {entry}" for entry in entries),
            ]
        )
    )
    app.run_beat(name=name, max_interval=max_interval)


def _version() -> str:
    from . import __version__

    return __version__


# -- inspection and maintenance --------------------------------------------------------------
def _console() -> Console:
    return Console(highlight=False, soft_wrap=False)


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def _when(timestamp: float | None) -> str:
    if not timestamp:
        return "-"
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _ago(timestamp: float | None) -> str:
    """``12s``, ``5m``, ``3h``, ``2d`` since ``timestamp``."""
    if not timestamp:
        return "-"
    seconds = max(0.0, time.time() - timestamp)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


@cli.command()
@_app_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def status(state: _State, app_spec: str | None, as_json: bool) -> None:
    """Queue sizes and live workers."""
    app = state.app(app_spec)
    broker = app.broker
    stats = broker.stats()
    workers = {}
    for key, raw in sorted(app.kv.values("worker:").items()):
        try:
            workers[key.removeprefix("worker:")] = json.loads(raw)
        except ValueError:
            workers[key.removeprefix("worker:")] = {}
    if as_json:
        queues = {
            name: {"ready": s.ready, "delayed": s.delayed, "leased": s.leased, "dead": s.dead}
            for name, s in sorted(stats.items())
        }
        _print_json({"queues": queues, "workers": workers})
        return
    console = _console()
    table = Table(title=f"Queues ({redact_text(app.broker_url)})", title_justify="left")
    for column in ("queue", "ready", "delayed", "leased", "dead"):
        table.add_column(column, justify="left" if column == "queue" else "right")
    for name, s in sorted(stats.items()):
        table.add_row(name, str(s.ready), str(s.delayed), str(s.leased), str(s.dead))
    console.print(table)
    table = Table(title=f"Workers alive: {len(workers)}", title_justify="left")
    for column in ("worker", "pid", "queues", "running", "processed", "up", "seen"):
        table.add_column(column, no_wrap=column == "worker")
    for name, info in workers.items():
        table.add_row(
            name,
            str(info.get("pid", "-")),
            ",".join(info.get("queues") or []),
            str(info.get("running", "-")),
            str(info.get("processed", "-")),
            _ago(info.get("started_at")),
            f"{_ago(info.get('seen_at'))} ago",
        )
    console.print(table)


@cli.command()
@_app_option
@click.option("-Q", "--queues", metavar="Q1,Q2", help="Queues to purge (default: all known).")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_obj
def purge(state: _State, app_spec: str | None, queues: str | None, yes: bool) -> None:
    """Delete ready and delayed messages (leased ones stay)."""
    app = state.app(app_spec)
    names = _split(queues) or sorted(app.broker.stats()) or [app.conf.task_default_queue]
    if not yes:
        stats = app.broker.stats(names)
        waiting = sum(s.ready + s.delayed for s in stats.values())
        click.confirm(f"Purge {waiting} message(s) from {', '.join(names)}?", abort=True, err=True)
    count = app.broker.purge(names)
    click.echo(f"Purged {count} message(s) from {', '.join(names)}.")


@cli.command()
@_app_option
@click.argument("task_ids", nargs=-1, required=True)
@click.option("--terminate", is_flag=True, help="Also stop the tasks if they are running.")
@click.pass_obj
def revoke(state: _State, app_spec: str | None, task_ids: tuple[str, ...], terminate: bool) -> None:
    """Revoke tasks: they never start (and stop, with --terminate)."""
    app = state.app(app_spec)
    app.revoke(list(task_ids), terminate=terminate)
    how = " (terminate)" if terminate else ""
    click.echo(f"Revoked {len(task_ids)} task(s){how}.")


@cli.command()
@_app_option
@click.argument("task_id")
@click.option("--json", "as_json", is_flag=True, help="Print the whole record as JSON.")
@click.pass_obj
def result(state: _State, app_spec: str | None, task_id: str, as_json: bool) -> None:
    """Show the state and result of a task."""
    import msgspec

    app = state.app(app_spec)
    record = app.results.get(task_id)
    if as_json:
        data = msgspec.to_builtins(record) if record is not None else {"id": task_id}
        data.setdefault("state", "PENDING")
        _print_json(data)
        return
    if record is None:
        click.echo("PENDING")
        return
    click.echo(record.state)
    if record.result is not None:
        click.echo(json.dumps(record.result, default=str))
    if record.traceback:
        click.echo(record.traceback.rstrip(), err=True)


# -- dead letters ----------------------------------------------------------------------------
@cli.group(cls=_Group)
def dlq() -> None:
    """List, replay and purge dead letters."""


def _preview(body: bytes, width: int = 60) -> str:
    from .message import decode_envelope

    try:
        envelope = decode_envelope(body)
    except ConveyorError:
        text = repr(body[:width])
    else:
        args = json.dumps(envelope.args, default=str)[1:-1]
        kwargs = ", ".join(f"{k}={json.dumps(v, default=str)}" for k, v in envelope.kwargs.items())
        text = f"{envelope.task}({', '.join(filter(None, [args, kwargs]))})"
    return text if len(text) <= width else text[: width - 3] + "..."


@dlq.command("list")
@_app_option
@click.option("-Q", "--queue", help="Only this queue.")
@click.option("--limit", type=click.IntRange(1), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def dlq_list(
    state: _State, app_spec: str | None, queue: str | None, limit: int, as_json: bool
) -> None:
    """Dead letters, oldest first."""
    app = state.app(app_spec)
    letters = app.broker.dead_letters(limit=limit, queue=queue)
    if as_json:
        _print_json(
            [
                {
                    "id": d.id,
                    "queue": d.queue,
                    "reason": d.reason,
                    "detail": d.detail,
                    "dead_at": d.dead_at,
                    "delivery_count": d.delivery_count,
                    "body": _preview(d.body, 1000),
                }
                for d in letters
            ]
        )
        return
    table = Table(title=f"Dead letters: {len(letters)}", title_justify="left")
    table.add_column("id", no_wrap=True)
    for column in ("queue", "reason", "detail", "time", "body"):
        table.add_column(column)
    for d in letters:
        table.add_row(d.id, d.queue, d.reason, d.detail, _when(d.dead_at), _preview(d.body))
    _console().print(table)


def _selection(ids: tuple[str, ...], all_: bool) -> list[str] | None:
    if ids and all_:
        raise click.UsageError("give message ids or --all, not both")
    if not ids and not all_:
        raise click.UsageError("give message ids, or --all")
    return None if all_ else list(ids)


@dlq.command("replay")
@_app_option
@click.argument("ids", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Replay every dead letter.")
@click.pass_obj
def dlq_replay(state: _State, app_spec: str | None, ids: tuple[str, ...], all_: bool) -> None:
    """Send dead letters back to their queues."""
    selected = _selection(ids, all_)
    count = state.app(app_spec).broker.replay_dead(selected)
    _report_count("Replayed", count, selected)


@dlq.command("purge")
@_app_option
@click.argument("ids", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Delete every dead letter.")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation (with --all).")
@click.pass_obj
def dlq_purge(
    state: _State, app_spec: str | None, ids: tuple[str, ...], all_: bool, yes: bool
) -> None:
    """Delete dead letters."""
    selected = _selection(ids, all_)
    if selected is None and not yes:
        click.confirm("Delete every dead letter?", abort=True, err=True)
    count = state.app(app_spec).broker.purge_dead(selected)
    _report_count("Deleted", count, selected)


def _report_count(verb: str, count: int, selected: list[str] | None) -> None:
    click.echo(f"{verb} {count} dead letter(s).")
    if selected is not None and count < len(selected):
        _fail(f"{len(selected) - count} of the given id(s) were not in the dead-letter queue")


def _fail(message: str) -> NoReturn:
    raise click.ClickException(message)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``conveyor`` script and ``python -m conveyor``."""
    cli.main(args=list(argv) if argv is not None else None, prog_name="conveyor")


__all__ = ["cli", "find_app", "main", "redact_text", "setup_logging"]
