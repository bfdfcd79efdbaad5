"""The SQLite broker's delayed messages for the dashboard: list, run now, cancel; and the
counts per state and priority."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from ..._sqlite import chunks, marks
from ..base import PriorityCounts, Scheduled
from .rows import as_blob, as_float, as_int, as_text
from .schema import DELAYED, LEASED, READY


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


def priority_counts(
    conn: sqlite3.Connection, ns: str, queues: Sequence[str], now: float
) -> dict[str, PriorityCounts]:
    """Messages per state and priority of each of ``queues``, split as ``queue_stats`` splits
    them (a due delayed message is ready); run it in a read transaction. One pass over each
    queue's rows, as ``stats()`` makes: a GROUP BY, no row is read twice."""
    names = list(dict.fromkeys(queues))
    out = {queue: PriorityCounts() for queue in names}
    for part in chunks(names, 400):  # each name is given twice
        where = f"queue IN ({marks(len(part))})"
        rows = conn.execute(
            "SELECT queue, CASE WHEN state = ? OR (state = ? AND due <= ?) THEN 'ready' "
            "WHEN state = ? THEN 'leased' ELSE 'delayed' END, priority, count(*) "
            f"FROM conveyor_messages WHERE ns = ? AND {where} GROUP BY 1, 2, 3 "
            "UNION ALL SELECT queue, 'dead', priority, count(*) FROM conveyor_dead "
            f"WHERE ns = ? AND {where} GROUP BY 1, 3",
            (READY, DELAYED, now, LEASED, ns, *part, ns, *part),
        ).fetchall()
        for queue, state, priority, count in rows:
            out[as_text(queue)].add(as_text(state), as_int(priority), as_int(count))
    return out
