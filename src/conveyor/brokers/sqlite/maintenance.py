"""What the SQLite broker does besides the hot path: promoting due messages, sweeping expired
leases, counting, the dead-letter queue and purging. Each function runs inside the caller's
connection or transaction, on the rows of one key prefix (``ns``)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from ..._sqlite import chunks, marks
from ..base import (
    DEPARTURE_CLAIM,
    PURGED,
    DeadLetter,
    DeadLetterReason,
    Departure,
)
from .rows import as_blob, as_float, as_int, as_text
from .schema import DELAYED, PROMOTE, PROMOTED, READY


def promote(conn: sqlite3.Connection, ns: str, now: float) -> int:
    """Make delayed messages due at ``now`` ready; return how many."""
    moved = int(conn.execute(PROMOTE, (ns, now)).rowcount)
    if moved:
        conn.execute(PROMOTED, (ns, now))
    return moved


def sweep(conn: sqlite3.Connection, ns: str, now: float, max_deliveries: int) -> int:
    """Dead-letter expired leases delivered ``max_deliveries`` times (``worker_lost``), return
    the other expired leases to their queues, promote due messages; return how many moved."""
    lost = (ns, now, max_deliveries)
    buried = conn.execute(
        "INSERT INTO conveyor_dead "
        "(ns, id, queue, priority, body, reason, detail, dead_at, deliveries) "
        "SELECT ns, id, queue, priority, body, ?, "
        "'lease expired after ' || deliveries || ' deliveries', ?, deliveries "
        "FROM conveyor_messages "
        "WHERE ns = ? AND state = 1 AND due <= ? AND deliveries >= ? ORDER BY seq",
        (str(DeadLetterReason.WORKER_LOST), now, *lost),
    ).rowcount
    if buried:
        conn.execute(
            "INSERT INTO conveyor_departures (ns, id, queue, body, reason) "
            "SELECT ns, id, queue, body, ? FROM conveyor_messages "
            "WHERE ns = ? AND state = 1 AND due <= ? AND deliveries >= ? ORDER BY seq",
            (str(DeadLetterReason.WORKER_LOST), *lost),
        )
        conn.execute(
            "DELETE FROM conveyor_messages "
            "WHERE ns = ? AND state = 1 AND due <= ? AND deliveries >= ?",
            lost,
        )
    returned = conn.execute(
        "UPDATE conveyor_messages SET state = 0, due = NULL, token = NULL "
        "WHERE ns = ? AND state = 1 AND due <= ?",
        (ns, now),
    ).rowcount
    return int(buried + returned + promote(conn, ns, now))


def oldest_ready(
    conn: sqlite3.Connection, ns: str, queues: Sequence[str], now: float
) -> dict[str, list[bytes]]:
    """See :meth:`Broker.oldest_ready`: per queue, the first published ready message of each
    priority (each an index lookup) and the first due of its due delayed messages."""
    out: dict[str, list[bytes]] = {}
    for queue in dict.fromkeys(queues):
        bodies: list[bytes] = []
        for priority in range(10):
            row = conn.execute(
                "SELECT body FROM conveyor_messages WHERE ns = ? AND queue = ? AND state = ? "
                "AND priority = ? ORDER BY seq LIMIT 1",
                (ns, queue, READY, priority),
            ).fetchone()
            if row is not None:
                bodies.append(as_blob(row[0]))
        due = conn.execute(
            "SELECT body FROM conveyor_messages WHERE ns = ? AND state = ? AND queue = ? "
            "AND due <= ? ORDER BY due LIMIT 1",
            (ns, DELAYED, queue, now),
        ).fetchone()
        if due is not None:
            bodies.append(as_blob(due[0]))
        if bodies:
            out[queue] = bodies
    return out


def dead_letters(
    conn: sqlite3.Connection, ns: str, limit: int, queue: str | None
) -> list[DeadLetter]:
    """Up to ``limit`` dead letters (of ``queue``, or all), oldest first."""
    where, params = ("", [ns]) if queue is None else ("AND queue = ?", [ns, queue])
    rows = conn.execute(
        "SELECT id, queue, body, reason, detail, dead_at, deliveries FROM conveyor_dead "
        f"WHERE ns = ? {where} ORDER BY seq LIMIT ?",
        (*params, max(limit, 0)),
    ).fetchall()
    return [
        DeadLetter(
            as_text(id_),
            as_text(queue_),
            as_blob(body),
            as_text(reason),
            as_text(detail),
            as_float(dead_at),
            as_int(count),
        )
        for id_, queue_, body, reason, detail, dead_at, count in rows
    ]


def replay_dead(conn: sqlite3.Connection, ns: str, ids: Sequence[str] | None) -> int:
    """Move dead letters (all when ``ids`` is None) back to their queues as new messages."""
    moved = 0
    for where, params in _dead_filters(ns, ids):
        conn.execute(
            "INSERT INTO conveyor_messages (ns, id, queue, priority, body, state) "
            f"SELECT ns, id, queue, priority, body, 0 FROM conveyor_dead {where} "
            "ORDER BY seq",
            params,
        )
        moved += conn.execute(f"DELETE FROM conveyor_dead {where}", params).rowcount
    return moved


def purge_dead(conn: sqlite3.Connection, ns: str, ids: Sequence[str] | None) -> int:
    """Delete dead letters (all when ``ids`` is None)."""
    removed = 0
    for where, params in _dead_filters(ns, ids):
        removed += conn.execute(f"DELETE FROM conveyor_dead {where}", params).rowcount
    return removed


def purge(conn: sqlite3.Connection, ns: str, queues: Sequence[str]) -> int:
    """Delete the ready and delayed messages of ``queues``."""
    removed = 0
    for part in chunks(list(dict.fromkeys(queues))):
        conn.execute(
            "INSERT INTO conveyor_departures (ns, id, queue, body, reason) "
            "SELECT ns, id, queue, body, ? FROM conveyor_messages WHERE ns = ? AND state != 1 "
            f"AND queue IN ({marks(len(part))}) ORDER BY seq",
            (PURGED, ns, *part),
        )
        removed += conn.execute(
            "DELETE FROM conveyor_messages WHERE ns = ? AND state != 1 "
            f"AND queue IN ({marks(len(part))})",
            (ns, *part),
        ).rowcount
    return removed


def has_departures(conn: sqlite3.Connection, ns: str, now: float) -> bool:
    """Whether a departure is waiting to be taken."""
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM conveyor_departures WHERE ns = ? AND claimed <= ?)",
        (ns, now),
    ).fetchone()
    return bool(row and row[0])


def take_departures(conn: sqlite3.Connection, ns: str, limit: int, now: float) -> list[Departure]:
    """Claim up to ``limit`` unclaimed departures, oldest first."""
    rows = conn.execute(
        "UPDATE conveyor_departures SET claimed = ? WHERE seq IN (SELECT seq FROM "
        "conveyor_departures WHERE ns = ? AND claimed <= ? ORDER BY seq LIMIT ?) "
        "RETURNING seq, id, queue, body, reason",
        (now + DEPARTURE_CLAIM, ns, now, max(limit, 0)),
    ).fetchall()
    found = [
        Departure(as_text(id_), as_text(queue), as_blob(body), as_text(reason), str(seq))
        for seq, id_, queue, body, reason in rows
    ]
    return sorted(found, key=lambda d: int(d.receipt))


def forget_departures(conn: sqlite3.Connection, ns: str, departures: Sequence[Departure]) -> None:
    """Delete the departures (by their receipts)."""
    seqs = [int(d.receipt) for d in departures if d.receipt.isdigit()]
    for part in chunks(seqs):
        conn.execute(
            f"DELETE FROM conveyor_departures WHERE ns = ? AND seq IN ({marks(len(part))})",
            (ns, *part),
        )


def _dead_filters(ns: str, ids: Sequence[str] | None) -> list[tuple[str, Sequence[object]]]:
    if ids is None:
        return [("WHERE ns = ?", (ns,))]
    unique = list(dict.fromkeys(ids))
    return [
        (f"WHERE ns = ? AND id IN ({marks(len(part))})", (ns, *part)) for part in chunks(unique)
    ]
