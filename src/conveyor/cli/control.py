"""``conveyor inspect``, ``conveyor control`` and ``conveyor queue pause|resume|paused``.

Replies are printed per worker (``--json``: one JSON document). The exit code is 1 when no
worker replied in time or a worker replied with an error; an unknown command, bad arguments
or an unknown ``--destination`` are refused before anything is sent.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import click

from ..app import Conveyor
from ..control import ControlError
from .base import State, app_option, split
from .output import print_json

_INSPECT = (
    "ping",
    "active",
    "reserved",
    "scheduled",
    "revoked",
    "registered",
    "stats",
    "active_queues",
    "conf",
    "query_task",
)


def _common(fn: Callable[..., None]) -> Callable[..., None]:
    fn = click.option("--json", "as_json", is_flag=True, help="Print JSON.")(fn)
    fn = click.option(
        "-t", "--timeout", type=click.FloatRange(0), default=1.0, show_default=True,
        help="Seconds to wait for replies.",
    )(fn)  # fmt: skip
    fn = click.option(
        "-d", "--destination", metavar="W1,W2", help="Only these workers (default: all)."
    )(fn)
    return app_option(fn)


def _show(replies: list[dict[str, object]], as_json: bool, timeout: float) -> None:
    merged: dict[str, object] = {}
    for reply in replies:
        merged.update(reply)
    if as_json:
        print_json(merged)
    else:
        for hostname, value in sorted(merged.items()):
            failed = isinstance(value, dict) and "error" in value
            click.echo(f"-> {hostname}: {'ERROR' if failed else 'OK'}")
            if isinstance(value, dict) and set(value) <= {"ok", "error"}:
                click.echo(f"    {value.get('ok') or value.get('error')}")
            elif value not in ([], {}):
                text = json.dumps(value, indent=2, default=str)
                click.echo("\n".join("    " + line for line in text.splitlines()))
            else:
                click.echo("    - empty -")
    if not merged:
        raise click.ClickException(f"no worker replied within {timeout}s")
    if any(isinstance(v, dict) and "error" in v for v in merged.values()):
        raise SystemExit(1)


def _send(
    state: State,
    app_spec: str | None,
    command: str,
    arguments: dict[str, object],
    destination: str | None,
    timeout: float,
    as_json: bool,
) -> None:
    app = state.app(app_spec)
    targets = split(destination) or None
    try:
        if command in ("rate_limit", "time_limit"):
            app.control._known_task(str(arguments.get("task_name")))
        if command in ("revoke", "terminate"):
            ids = arguments["task_id"]
            assert isinstance(ids, list)
            terminate = command == "terminate" or bool(arguments.get("terminate"))
            replies = app.control.revoke(
                ids, targets, terminate, str(arguments.get("signal", "SIGTERM")), True, timeout
            )
        else:
            replies = app.control.broadcast(command, arguments, targets, True, timeout)
    except ControlError as exc:
        raise click.UsageError(str(exc)) from None
    _show(replies or [], as_json, timeout)


# -- conveyor inspect ------------------------------------------------------------------------
@click.group("inspect")
def inspect_group() -> None:
    """Ask workers what they do (Celery's inspect): ping, active, stats, ..."""


def _inspect_command(name: str) -> click.Command:
    @_common
    @click.pass_obj
    def command(
        state: State, /, app_spec: str | None, destination: str | None, timeout: float,
        as_json: bool, **arguments: object,
    ) -> None:  # fmt: skip
        if name == "query_task":
            ids = arguments.pop("ids", ())
            arguments = {"ids": list(ids) if isinstance(ids, tuple) else ids}
        _send(state, app_spec, name, arguments, destination, timeout, as_json)

    command.__doc__ = f"Inspect: {name.replace('_', ' ')}."
    if name == "conf":
        command = click.option("--with-defaults", is_flag=True, help="Also default settings.")(
            command
        )
    if name == "query_task":
        command = click.argument("ids", nargs=-1, required=True)(command)
    return click.command(name)(command)


for _name in _INSPECT:
    inspect_group.add_command(_inspect_command(_name))


# -- conveyor control ------------------------------------------------------------------------
@click.group("control")
def control_group() -> None:
    """Steer workers (Celery's control): revoke, rate_limit, pool_grow, shutdown, ..."""


def _limit(value: str | None) -> float | None:
    if value is None or value.lower() == "none":
        return None
    try:
        return float(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a number of seconds or 'none'") from None


@control_group.command("revoke")
@click.argument("task_ids", nargs=-1, required=True)
@click.option("--terminate", is_flag=True, help="Also stop the tasks where they run.")
@click.option("--signal", default="SIGTERM", show_default=True, help="Celery compatibility.")
@_common
@click.pass_obj
def control_revoke(
    state: State, task_ids: tuple[str, ...], terminate: bool, signal: str, app_spec: str | None,
    destination: str | None, timeout: float, as_json: bool,
) -> None:  # fmt: skip
    """Revoke tasks (durable); --terminate stops running ones."""
    arguments: dict[str, object] = {
        "task_id": list(task_ids), "terminate": terminate, "signal": signal,
    }  # fmt: skip
    _send(state, app_spec, "revoke", arguments, destination, timeout, as_json)


@control_group.command("terminate")
@click.argument("task_ids", nargs=-1, required=True)
@click.option("--signal", default="SIGTERM", show_default=True, help="Celery compatibility.")
@_common
@click.pass_obj
def control_terminate(
    state: State, task_ids: tuple[str, ...], signal: str, app_spec: str | None,
    destination: str | None, timeout: float, as_json: bool,
) -> None:  # fmt: skip
    """Revoke tasks and stop them where they run."""
    arguments: dict[str, object] = {"task_id": list(task_ids), "signal": signal}
    _send(state, app_spec, "terminate", arguments, destination, timeout, as_json)


@control_group.command("rate_limit")
@click.argument("task_name")
@click.argument("rate")
@_common
@click.pass_obj
def control_rate_limit(
    state: State, task_name: str, rate: str, app_spec: str | None, destination: str | None,
    timeout: float, as_json: bool,
) -> None:  # fmt: skip
    """Set a task's rate limit (10/s, 100/m, 1000/h; 0 or none: off)."""
    value = None if rate.lower() in ("none", "0", "") else rate
    arguments: dict[str, object] = {"task_name": task_name, "rate_limit": value}
    _send(state, app_spec, "rate_limit", arguments, destination, timeout, as_json)


@control_group.command("time_limit")
@click.argument("task_name")
@click.argument("soft")
@click.argument("hard", required=False)
@_common
@click.pass_obj
def control_time_limit(
    state: State, task_name: str, soft: str, hard: str | None, app_spec: str | None,
    destination: str | None, timeout: float, as_json: bool,
) -> None:  # fmt: skip
    """Set a task's soft (and hard) time limit in seconds ('none': no limit)."""
    arguments: dict[str, object] = {
        "task_name": task_name, "soft": _limit(soft), "hard": _limit(hard),
    }  # fmt: skip
    _send(state, app_spec, "time_limit", arguments, destination, timeout, as_json)


def _counted(name: str, doc: str) -> click.Command:
    @click.argument("n", type=int, default=1, required=False)
    @_common
    @click.pass_obj
    def command(
        state: State, n: int, app_spec: str | None, destination: str | None, timeout: float,
        as_json: bool,
    ) -> None:  # fmt: skip
        _send(state, app_spec, name, {"n": n}, destination, timeout, as_json)

    command.__doc__ = doc
    return click.command(name)(command)


control_group.add_command(_counted("pool_grow", "Start N more child processes."))
control_group.add_command(_counted("pool_shrink", "Retire N child processes (warm)."))


@control_group.command("autoscale")
@click.argument("max_", metavar="MAX", type=int)
@click.argument("min_", metavar="MIN", type=int, default=1, required=False)
@_common
@click.pass_obj
def control_autoscale(
    state: State, max_: int, min_: int, app_spec: str | None, destination: str | None,
    timeout: float, as_json: bool,
) -> None:  # fmt: skip
    """Autoscale the pool between MIN and MAX child processes."""
    _send(state, app_spec, "autoscale", {"max": max_, "min": min_}, destination, timeout, as_json)


def _queue_command(name: str, doc: str) -> click.Command:
    @click.argument("queue")
    @_common
    @click.pass_obj
    def command(
        state: State, queue: str, app_spec: str | None, destination: str | None,
        timeout: float, as_json: bool,
    ) -> None:  # fmt: skip
        _send(state, app_spec, name, {"queue": queue}, destination, timeout, as_json)

    command.__doc__ = doc
    return click.command(name)(command)


control_group.add_command(_queue_command("add_consumer", "Also consume QUEUE."))
control_group.add_command(_queue_command("cancel_consumer", "Stop consuming QUEUE."))


def _plain(name: str, doc: str) -> click.Command:
    @_common
    @click.pass_obj
    def command(
        state: State, app_spec: str | None, destination: str | None, timeout: float,
        as_json: bool,
    ) -> None:  # fmt: skip
        _send(state, app_spec, name, {}, destination, timeout, as_json)

    command.__doc__ = doc
    return click.command(name)(command)


control_group.add_command(_plain("shutdown", "Warm shutdown of the workers."))
control_group.add_command(_plain("ping", "Ask the workers to answer."))


# -- conveyor queue --------------------------------------------------------------------------
@click.group("queue")
def queue_group() -> None:
    """Pause or resume queues for every worker (durable, also for workers started later)."""


def _pause_app(state: State, app_spec: str | None) -> Conveyor:
    return state.app(app_spec)


@queue_group.command("pause")
@click.argument("queues", nargs=-1, required=True)
@app_option
@click.pass_obj
def queue_pause(state: State, queues: tuple[str, ...], app_spec: str | None) -> None:
    """Stop every worker leasing from QUEUES (running tasks finish) until resumed."""
    app = _pause_app(state, app_spec)
    for queue in queues:
        app.control.pause_queue(queue)
        click.echo(f"paused {queue}")


@queue_group.command("resume")
@click.argument("queues", nargs=-1, required=True)
@app_option
@click.pass_obj
def queue_resume(state: State, queues: tuple[str, ...], app_spec: str | None) -> None:
    """Let workers lease from QUEUES again."""
    app = _pause_app(state, app_spec)
    for queue in queues:
        app.control.resume_queue(queue)
        click.echo(f"resumed {queue}")


@queue_group.command("paused")
@app_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def queue_paused(state: State, app_spec: str | None, as_json: bool) -> None:
    """List the paused queues."""
    paused = _pause_app(state, app_spec).control.paused_queues()
    if as_json:
        print_json(paused)
    else:
        click.echo("\n".join(paused) if paused else "no queue is paused")
