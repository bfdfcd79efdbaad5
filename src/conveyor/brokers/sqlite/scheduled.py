"""The SQLite broker's delayed messages for the dashboard: list, run now, cancel."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from ..._sqlite import chunks, marks
from ..base import Scheduled
from .rows import as_blob, as_float, as_int, as_text
from .schema import DELAYED, READY


def listing(conn: sqlite3.Connection, ns: str, limit: int, queue: str | None) -> list[Scheduled]:
    """Up to ``limit`` delayed messages (of ``queue``, or all), soonest due first."""
    where, params = ("", [ns]) if queue is None else ("AND queue = ?", [ns, queue])
    rows = conn.execute(
        "SELECT id, queue, body, priority, due FROM conveyor_messages "
        f"WHERE ns = ? AND state = {DELAYED} {where} ORDER BY due, seq LIMIT ?",
        (*params, max(limit, 0)),
    ).fetchall()
    return [
        Scheduled(as_text(id_), as_text(q), as_blob(body), as_int(priority), as_float(due))
        for id_, q, body, priority, due in rows
    ]


def move(conn: sqlite3.Connection, ns: str, ids: Sequence[str], *, ready: bool) -> int:
    """Make the delayed messages ``ids`` ready (at the end of their queue: new seqs, in due
    order), or delete them."""
    moved = 0
    for part in chunks(list(dict.fromkeys(ids))):
        where = f"WHERE ns = ? AND state = {DELAYED} AND id IN ({marks(len(part))})"
        if ready:
            conn.execute(
                "INSERT INTO conveyor_messages (ns, id, queue, priority, body, state, deliveries) "
                f"SELECT ns, id, queue, priority, body, {READY}, deliveries "
                f"FROM conveyor_messages {where} ORDER BY due, seq",
                (ns, *part),
            )
        moved += conn.execute(f"DELETE FROM conveyor_messages {where}", (ns, *part)).rowcount
    return moved
