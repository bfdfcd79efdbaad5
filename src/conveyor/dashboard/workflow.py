"""A workflow (chain, group, chord) drawn as a graph: the tasks linked by a root, a group or a
parent, an arrow from each task to the tasks it sent (``parent_id``), members of a group boxed
together. Drawn
on the server as SVG with links to each task's page (no script: the strict CSP holds)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import quote

from markupsafe import Markup, escape

from .history import TaskRow

NODE_W, NODE_H = 190, 44
GAP_X, GAP_Y = 56, 14
PAD = 12
#: Most tasks drawn (a workflow larger than this shows its first ones).
MAX_NODES = 120


@dataclass(frozen=True)
class Placed:
    row: TaskRow
    column: int
    line: int


def family(
    start: TaskRow,
    related: Callable[[str, str], Sequence[TaskRow]],
    get: Callable[[str], TaskRow | None],
) -> list[TaskRow]:
    """The tasks of ``start``'s workflow: those linked to it by a shared root or group, or as
    parent and child, and so on from each (a chord's header tasks share a group but each has
    its own root; its body is a child of one of them). At most :data:`MAX_NODES` tasks, found
    with a bounded number of indexed look-ups."""
    found = {start.id: start}
    todo = [start]
    asked: set[tuple[str, str]] = set()
    while todo and len(found) < MAX_NODES and len(asked) < 4 * MAX_NODES:
        row = todo.pop(0)
        links = [("root_id", row.root_id), ("group_id", row.group_id), ("parent_id", row.id)]
        for column, value in links:
            if not value or (column, value) in asked:
                continue
            asked.add((column, value))
            for other in related(column, value):
                if other.id not in found:
                    found[other.id] = other
                    todo.append(other)
        for task_id in (row.parent_id, row.root_id):
            if task_id and task_id not in found and ("id", task_id) not in asked:
                asked.add(("id", task_id))
                other_row = get(task_id)
                if other_row is not None:
                    found[other_row.id] = other_row
                    todo.append(other_row)
    return list(found.values())[:MAX_NODES]


def layout(rows: Sequence[TaskRow]) -> list[Placed]:
    """Columns by depth (how many parents up to a task of the workflow without one), lines
    in order of first sight; group members next to each other."""
    rows = sorted(rows, key=lambda r: (r.first_at, r.id))[:MAX_NODES]
    known = {r.id: r for r in rows}
    depth: dict[str, int] = {}

    def depth_of(row: TaskRow) -> int:
        seen = []
        current: TaskRow | None = row
        while current is not None and current.id not in depth and current.id not in seen:
            seen.append(current.id)
            current = known.get(current.parent_id or "")
        base = depth.get(current.id, 0) + 1 if current is not None and current.id in depth else 0
        for offset, task_id in enumerate(reversed(seen)):
            depth[task_id] = base + offset
        return depth[row.id]

    columns: dict[int, list[TaskRow]] = {}
    for row in rows:
        columns.setdefault(depth_of(row), []).append(row)
    placed = []
    for column, members in sorted(columns.items()):
        members.sort(key=lambda r: (r.group_id or "", r.first_at, r.id))
        placed += [Placed(row, column, line) for line, row in enumerate(members)]
    return placed


def draw(rows: Sequence[TaskRow], current: str) -> Markup:
    """The SVG of the workflow of ``rows``, ``current`` highlighted. Its links are relative
    (``OTHER-ID``), for a task's page at ``.../tasks/ID``."""
    placed = layout(rows)
    if not placed:
        return Markup("")
    where = {p.row.id: p for p in placed}
    width = PAD * 2 + (max(p.column for p in placed) + 1) * (NODE_W + GAP_X) - GAP_X
    height = PAD * 2 + (max(p.line for p in placed) + 1) * (NODE_H + GAP_Y) - GAP_Y
    parts: list[str] = [
        '<defs><marker id="arrow" viewBox="0 0 8 8" refX="8" refY="4" markerWidth="7" '
        'markerHeight="7" orient="auto"><path d="M0,0 L8,4 L0,8 z" class="arrowhead"/></marker>'
        "</defs>"
    ]
    parts += _groups(placed)
    for p in placed:
        parent = where.get(p.row.parent_id or "")
        if parent is not None:
            x1, y1 = _x(parent.column) + NODE_W, _y(parent.line) + NODE_H / 2
            x2, y2 = _x(p.column), _y(p.line) + NODE_H / 2
            mid = (x1 + x2) / 2
            parts.append(
                f'<path class="edge" d="M{x1},{y1} C{mid},{y1} {mid},{y2} {x2},{y2}" '
                'marker-end="url(#arrow)"/>'
            )
    for p in placed:
        row = p.row
        x, y = _x(p.column), _y(p.line)
        classes = f"node state-{escape(row.state.lower())}" + (
            " current" if row.id == current else ""
        )
        name = row.name or "?"
        name = name if len(name) <= 26 else "..." + name[-23:]
        href = escape(quote(row.id, safe=""))
        parts.append(
            f'<a href="{href}" data-node="{escape(row.id)}"><rect class="{classes}" x="{x}" '
            f'y="{y}" width="{NODE_W}" height="{NODE_H}" rx="5"/>'
            f'<text class="node-name" x="{x + 8}" y="{y + 18}">{escape(name)}</text>'
            f'<text class="node-state" x="{x + 8}" y="{y + 35}">{escape(row.state)} · '
            f"{escape(row.id[:8])}</text><title>{escape(row.name)} {escape(row.id)}</title></a>"
        )
    return Markup(
        f'<svg class="workflow" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" role="img" aria-label="workflow graph" '
        f'xmlns="http://www.w3.org/2000/svg">{"".join(parts)}</svg>'
    )


def _groups(placed: Sequence[Placed]) -> list[str]:
    """A dashed box around each group's members that stand in one column."""
    boxes: dict[tuple[str, int], list[Placed]] = {}
    for p in placed:
        if p.row.group_id:
            boxes.setdefault((p.row.group_id, p.column), []).append(p)
    out = []
    for (group_id, column), members in boxes.items():
        if len(members) < 2:
            continue
        first, last = min(m.line for m in members), max(m.line for m in members)
        x, y = _x(column) - 6, _y(first) - 6
        h = _y(last) + NODE_H + 6 - y
        out.append(
            f'<rect class="group" x="{x}" y="{y}" width="{NODE_W + 12}" height="{h}" rx="7">'
            f"<title>group {escape(group_id)}</title></rect>"
        )
    return out


def _x(column: int) -> int:
    return PAD + column * (NODE_W + GAP_X)


def _y(line: int) -> int:
    return PAD + line * (NODE_H + GAP_Y)
