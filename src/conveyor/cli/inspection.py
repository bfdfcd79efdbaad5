"""Inspecting and steering a broker: ``conveyor status``, ``purge``, ``revoke``, ``result``."""

from __future__ import annotations

import json

import click
import msgspec
from rich.table import Table

from ..brokers.base import QueueStats
from ..loading import redact_text
from .base import State, app_option, split
from .celery_cli import Command
from .coverage import consumed, live_workers
from .output import ago, console, print_json


@click.command(cls=Command)
@app_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def status(state: State, app_spec: str | None, as_json: bool) -> None:
    """Queue sizes and live workers."""
    app = state.app(app_spec)
    stats = app.broker.stats()
    workers = live_workers(app)
    # Queues that exist even when empty (SQLite only knows queues with messages; Redis every
    # queue ever used): the default, the declared ones and those live workers consume.
    always = {app.conf.task_default_queue, *(q.name for q in app.conf.task_queues)}
    for name in sorted((always | consumed(workers)) - set(stats)):
        stats[name] = QueueStats()
    consumers = {
        name: sum(name in (info.get("queues") or []) for info in workers.values()) for name in stats
    }
    stranded = [name for name, s in sorted(stats.items()) if s.ready and not consumers[name]]
    if as_json:
        queues = {
            name: {
                "ready": s.ready,
                "delayed": s.delayed,
                "leased": s.leased,
                "dead": s.dead,
                "consumers": consumers[name],
            }
            for name, s in sorted(stats.items())
        }
        print_json({"queues": queues, "workers": workers, "unconsumed": stranded})
        return
    out = console()
    table = Table(title=f"Queues ({redact_text(app.broker_url)})", title_justify="left")
    for column in ("queue", "ready", "delayed", "leased", "dead", "workers"):
        table.add_column(column, justify="left" if column == "queue" else "right")
    for name, s in sorted(stats.items()):
        flag = "[bold red]0 (!)[/]" if name in stranded else str(consumers[name])
        table.add_row(name, str(s.ready), str(s.delayed), str(s.leased), str(s.dead), flag)
    out.print(table)
    for name in stranded:
        out.print(
            f"[bold red]![/] {name}: {stats[name].ready} ready message(s) and no live worker "
            f"consumes this queue (start one with: conveyor worker -Q {name})",
            markup=True,
        )
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
            ago(info.get("started_at")),
            f"{ago(info.get('seen_at'))} ago",
        )
    out.print(table)


@click.command(cls=Command)
@app_option
@click.option("-Q", "--queues", metavar="Q1,Q2", help="Queues to purge (default: all known).")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_obj
def purge(state: State, app_spec: str | None, queues: str | None, yes: bool) -> None:
    """Delete ready and delayed messages (leased ones stay)."""
    app = state.app(app_spec)
    names = split(queues) or sorted(app.broker.stats()) or [app.conf.task_default_queue]
    if not yes:
        stats = app.broker.stats(names)
        waiting = sum(s.ready + s.delayed for s in stats.values())
        click.confirm(f"Purge {waiting} message(s) from {', '.join(names)}?", abort=True, err=True)
    count = app.broker.purge(names)
    click.echo(f"Purged {count} message(s) from {', '.join(names)}.")


@click.command(cls=Command)
@app_option
@click.argument("task_ids", nargs=-1, required=True)
@click.option("--terminate", is_flag=True, help="Also stop the tasks if they are running.")
@click.pass_obj
def revoke(state: State, app_spec: str | None, task_ids: tuple[str, ...], terminate: bool) -> None:
    """Revoke tasks: they never start (and stop, with --terminate)."""
    app = state.app(app_spec)
    app.revoke(list(task_ids), terminate=terminate)
    how = " (terminate)" if terminate else ""
    click.echo(f"Revoked {len(task_ids)} task(s){how}.")


@click.command(cls=Command)
@app_option
@click.argument("task_id")
@click.option("--json", "as_json", is_flag=True, help="Print the whole record as JSON.")
@click.pass_obj
def result(state: State, app_spec: str | None, task_id: str, as_json: bool) -> None:
    """Show the state and result of a task."""
    app = state.app(app_spec)
    record = app.results.get(task_id)
    if as_json:
        data = msgspec.to_builtins(record) if record is not None else {"id": task_id}
        data.setdefault("state", "PENDING")
        print_json(data)
        return
    if record is None:
        click.echo("PENDING")
        return
    click.echo(record.state)
    if record.result is not None:
        click.echo(json.dumps(record.result, default=str))
    if record.traceback:
        click.echo(record.traceback.rstrip(), err=True)
