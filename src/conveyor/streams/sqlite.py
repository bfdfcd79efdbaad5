"""Streams in an SQLite file (``sqlite://`` brokers): a ring table.

Each entry is a row of ``conveyor_streams`` (created by the broker's schema, v4) with the
owner's key prefix (``ns``), the stream name, an increasing ``seq`` (AUTOINCREMENT, so a
position is never reused) and an expiry. ``append`` inserts a batch and, in the same
transaction, deletes what is over ``max_length`` and every expired row: the table stays as
large as the caps allow, whatever the write rate.
"""

from __future__ import annotations

import threading
import time

from .._sqlite import Database
from . import START, Entry

TABLE = "conveyor_streams"
#: Seconds between looks at the table while ``read(wait=...)`` waits for an entry.
POLL_INTERVAL = 0.05

MIGRATION = (
    f"CREATE TABLE {TABLE} (seq INTEGER PRIMARY KEY AUTOINCREMENT, ns TEXT NOT NULL, "
    "stream TEXT NOT NULL, at REAL NOT NULL, expires REAL NOT NULL, body BLOB NOT NULL)",
    f"CREATE INDEX {TABLE}_stream ON {TABLE} (ns, stream, seq)",
    f"CREATE INDEX {TABLE}_expires ON {TABLE} (expires)",
)


class SQLiteStreams:
    """:class:`~conveyor.streams.Streams` in ``db`` (positions are decimal row numbers)."""

    def __init__(self, db: Database, ns: str) -> None:
        self._db = db
        self._ns = ns
        self._idle = threading.Event()  # never set: a wait that a stop cannot cut short

    def append(self, stream: str, bodies: list[bytes], *, max_length: int, max_age: float) -> None:
        if not bodies:
            return
        ns = self._ns
        with self._db.write() as conn:
            now = time.time()
            conn.executemany(
                f"INSERT INTO {TABLE} (ns, stream, at, expires, body) VALUES (?, ?, ?, ?, ?)",
                [(ns, stream, now, now + max_age, body) for body in bodies],
            )
            conn.execute(
                f"DELETE FROM {TABLE} WHERE ns = ? AND stream = ? AND seq <= (SELECT seq FROM "
                f"{TABLE} WHERE ns = ? AND stream = ? ORDER BY seq DESC LIMIT 1 OFFSET ?)",
                (ns, stream, ns, stream, max_length),
            )
            conn.execute(f"DELETE FROM {TABLE} WHERE expires <= ?", (now,))

    def read(
        self,
        stream: str,
        after: str | None = None,
        *,
        limit: int = 100,
        wait: float = 0.0,
        since: float | None = None,
    ) -> list[Entry]:
        start = _position(after)
        deadline = time.monotonic() + wait
        while True:
            with self._db.read() as conn:
                rows = conn.execute(
                    f"SELECT seq, at, body FROM {TABLE} WHERE ns = ? AND stream = ? "
                    "AND seq > ? AND at >= ? AND expires > ? ORDER BY seq LIMIT ?",
                    (self._ns, stream, start, since or 0.0, time.time(), max(0, limit)),
                ).fetchall()
            remaining = deadline - time.monotonic()
            if rows or remaining <= 0:
                return [Entry(str(seq), at, bytes(body)) for seq, at, body in rows]
            self._idle.wait(min(POLL_INTERVAL, remaining))

    def last(self, stream: str) -> str:
        with self._db.read() as conn:
            row = conn.execute(
                f"SELECT MAX(seq) FROM {TABLE} WHERE ns = ? AND stream = ?", (self._ns, stream)
            ).fetchone()
        return START if row is None or row[0] is None else str(row[0])

    def delete(self, stream: str) -> None:
        with self._db.write() as conn:
            conn.execute(f"DELETE FROM {TABLE} WHERE ns = ? AND stream = ?", (self._ns, stream))


def _position(after: str | None) -> int:
    if after is None:
        return 0
    try:
        return int(after)
    except ValueError:
        raise ValueError(f"not a stream position of this broker: {after!r}") from None
