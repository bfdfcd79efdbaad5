"""``conveyor dlq``: list, replay and purge dead letters."""

from __future__ import annotations

import textwrap

import click
from rich.table import Table

from ..describe import preview
from .base import Group, State, app_option
from .output import console, print_json, when

#: Terminal width from which dead letters are listed as a table (id, queue, reason and time
#: alone take some 90 columns).
WIDE = 140


@click.group("dlq", cls=Group)
def dlq_group() -> None:
    """List, replay and purge dead letters."""


@dlq_group.command("list")
@app_option
@click.option("-Q", "--queue", help="Only this queue.")
@click.option("--limit", type=click.IntRange(1), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_obj
def dlq_list(
    state: State, app_spec: str | None, queue: str | None, limit: int, as_json: bool
) -> None:
    """Dead letters, oldest first."""
    app = state.app(app_spec)
    letters = app.broker.dead_letters(limit=limit, queue=queue)
    if as_json:
        print_json(
            [
                {
                    "id": d.id,
                    "queue": d.queue,
                    "reason": d.reason,
                    "detail": d.detail,
                    "dead_at": d.dead_at,
                    "delivery_count": d.delivery_count,
                    "body": preview(d.body, 1000),
                }
                for d in letters
            ]
        )
        return
    out = console()
    if out.width >= WIDE:
        table = Table(title=f"Dead letters: {len(letters)}", title_justify="left")
        for column in ("id", "queue", "reason", "time"):
            table.add_column(column, no_wrap=True)
        table.add_column("detail", overflow="fold", ratio=1)
        table.add_column("body", overflow="fold", ratio=1)
        for d in letters:
            table.add_row(d.id, d.queue, d.reason, when(d.dead_at), d.detail, preview(d.body))
        out.print(table)
        return
    # Narrow terminals: one block per letter, the id whole (replay and purge need it).
    click.echo(f"Dead letters: {len(letters)}")
    width = max(40, out.width)
    for d in letters:
        click.echo(f"\n{d.id}  {d.queue}  {d.reason}")
        lines = [
            f"at {when(d.dead_at)}, delivered {d.delivery_count} time(s)",
            f"detail: {d.detail}" if d.detail else "",
            f"body: {preview(d.body, 2 * width)}",
        ]
        for line in filter(None, lines):
            click.echo(wrap(line, width))


@dlq_group.command("replay")
@app_option
@click.argument("ids", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Replay every dead letter.")
@click.pass_obj
def dlq_replay(state: State, app_spec: str | None, ids: tuple[str, ...], all_: bool) -> None:
    """Send dead letters back to their queues."""
    selected = _selection(ids, all_)
    count = state.app(app_spec).broker.replay_dead(selected)
    _report_count("Replayed", count, selected)


@dlq_group.command("purge")
@app_option
@click.argument("ids", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Delete every dead letter.")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation (with --all).")
@click.pass_obj
def dlq_purge(
    state: State, app_spec: str | None, ids: tuple[str, ...], all_: bool, yes: bool
) -> None:
    """Delete dead letters."""
    selected = _selection(ids, all_)
    if selected is None and not yes:
        click.confirm("Delete every dead letter?", abort=True, err=True)
    count = state.app(app_spec).broker.purge_dead(selected)
    _report_count("Deleted", count, selected)


def wrap(line: str, width: int) -> str:
    """``line`` indented and wrapped to ``width``, at most four lines."""
    return textwrap.fill(
        line, width, initial_indent="  ", subsequent_indent="    ", max_lines=4, placeholder=" ..."
    )


def _selection(ids: tuple[str, ...], all_: bool) -> list[str] | None:
    if ids and all_:
        raise click.UsageError("give message ids or --all, not both")
    if not ids and not all_:
        raise click.UsageError("give message ids, or --all")
    return None if all_ else list(ids)


def _report_count(verb: str, count: int, selected: list[str] | None) -> None:
    click.echo(f"{verb} {count} dead letter(s).")
    if selected is not None and count < len(selected):
        raise click.ClickException(
            f"{len(selected) - count} of the given id(s) were not in the dead-letter queue"
        )
