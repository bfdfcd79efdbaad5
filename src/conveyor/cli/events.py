"""``conveyor events``: the event stream, live or from a point in its history."""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime

import click

from ..events import Event, EventFilter
from .base import State, app_option

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
#: Fields shown after the task on a line, in this order (the others: --json).
_SHOWN = ("runtime", "exception", "reason", "retries", "running", "processed", "load")


def parse_since(text: str) -> float:
    """``90``, ``10m``, ``2h``, ``1d`` ago, or an ISO time (UTC unless it says) -> POSIX."""
    match = _DURATION.match(text)
    if match:
        return time.time() - float(match[1]) * _UNITS[match[2]]
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(
            f"{text!r}: use a duration (90, 10m, 2h, 1d) or an ISO time", param_hint="--since"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def format_event(event: Event) -> str:
    """One line: time, type, task (or worker), queue, host and the telling fields."""
    stamp = datetime.fromtimestamp(event.timestamp, UTC).strftime("%H:%M:%S.%f")[:-3]
    parts = [stamp, f"{event.type:<18}"]
    if event.task_id is not None:
        parts.append(f"{event.name or '?'}[{event.task_id}]")
        if event.queue:
            parts.append(f"queue={event.queue}")
    parts.append(f"host={event.hostname}")
    for key in _SHOWN:
        value = event.fields.get(key)
        if value in (None, "", []):
            continue
        if key == "runtime" and isinstance(value, int | float):
            parts.append(f"runtime={value:.3f}s")
        else:
            parts.append(f"{key}={value}")
    return "  ".join(parts)


@click.command("events")
@app_option
@click.option("--name", "names", multiple=True, metavar="GLOB", help="Task name (repeatable).")
@click.option(
    "--state", "states", multiple=True, help="State: SUCCESS/succeeded, FAILURE/failed, ..."
)
@click.option("--queue", "queues", multiple=True, help="Queue (repeatable).")
@click.option("--type", "types", multiple=True, metavar="GLOB", help="Event type, e.g. worker-*.")
@click.option("--since", metavar="WHEN", help="Start this long ago (10m, 2h) or at an ISO time.")
@click.option(
    "--from",
    "start",
    metavar="POSITION",
    help="Start after this stream position ('start' for the oldest kept event).",
)
@click.option("--no-follow", is_flag=True, help="Print the history asked for, then exit.")
@click.option("--limit", type=click.IntRange(1), help="Stop after this many events.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_obj
def events_command(
    state: State,
    app_spec: str | None,
    names: tuple[str, ...],
    states: tuple[str, ...],
    queues: tuple[str, ...],
    types: tuple[str, ...],
    since: str | None,
    start: str | None,
    no_follow: bool,
    limit: int | None,
    as_json: bool,
) -> None:
    """Show task and worker events: live (from now), or from --since / --from onwards."""
    app = state.app(app_spec)
    try:
        where = EventFilter.of(names=names, states=states, queues=queues, types=types)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    since_time = parse_since(since) if since else None
    after = "0" if start == "start" else start
    if no_follow and after is None and since_time is None:
        after = "0"  # the whole history
    shown = 0

    def show(event: Event) -> bool:
        nonlocal shown
        if as_json:
            click.echo(json.dumps(event.as_dict(), default=str))
        else:
            click.echo(format_event(event))
        shown += 1
        return limit is not None and shown >= limit

    try:
        if no_follow:
            for event in app.events.read(
                after, since=since_time, limit=limit or 1_000_000, where=where
            ):
                if show(event):
                    return
            return
        for event in app.events.follow(after, since=since_time, where=where):
            if show(event):
                return
    except ValueError as exc:  # a position this broker does not know
        raise click.UsageError(str(exc)) from None
    except KeyboardInterrupt:
        return
