"""Streams in an SQLite file (``sqlite://`` brokers): a ring table.

Entries are numbered along their stream (the number is the position). One ``append`` is **one
row** of ``conveyor_streams`` (created by the broker's schema, v4) holding the whole batch:
the owner's key prefix (``ns``), the stream name, ``n`` (the number of the batch's last entry),
``count``, the time, an expiry and the entries packed (each a 4-byte length, then its bytes).
A row per batch, not per entry, keeps the write transaction short: a worker's events share
the file's one write lock with its leases and acks. In the same transaction the stream's rows
wholly over ``max_length`` or past their age go, in one range delete along the key (so the
length cap may keep up to one batch more); once a minute, expired rows of streams nobody
writes to any more go too.
"""

from __future__ import annotations

import threading
import time

from .._sqlite import Database
from . import START, Entry, number_position, pack, unpack

TABLE = "conveyor_streams"
HEADS = "conveyor_stream_heads"
#: Seconds between deletions of expired rows of every stream (an append trims its own stream).
SWEEP_INTERVAL = 60.0
#: Seconds between looks at the table while ``read(wait=...)`` waits for an entry.
POLL_INTERVAL = 0.05

# ``n`` numbers a stream's entries from a counter in HEADS, which makes the length cap one
# indexed range delete (``n <= head - max_length``). A head that expired with its stream (no
# write for ``max_age``) starts again at the current time in microseconds, like Redis stream
# ids, so a position held by a reader is never reused by a later entry.
MIGRATION = (
    f"CREATE TABLE {TABLE} (ns TEXT NOT NULL, stream TEXT NOT NULL, n INTEGER NOT NULL, "
    "count INTEGER NOT NULL, at REAL NOT NULL, expires REAL NOT NULL, body BLOB NOT NULL, "
    "PRIMARY KEY (ns, stream, n)) WITHOUT ROWID",
    f"CREATE TABLE {HEADS} (ns TEXT NOT NULL, stream TEXT NOT NULL, n INTEGER NOT NULL, "
    "expires REAL NOT NULL, PRIMARY KEY (ns, stream)) WITHOUT ROWID",
)


class SQLiteStreams:
    """:class:`~conveyor.streams.Streams` in ``db`` (positions are decimal row numbers)."""

    def __init__(self, db: Database, ns: str) -> None:
        self._db = db
        self._ns = ns
        self._idle = threading.Event()
        self._next_sweep = 0.0  # never set: a wait that a stop cannot cut short

    def append(self, stream: str, bodies: list[bytes], *, max_length: int, max_age: float) -> None:
        if not bodies:
            return
        ns = self._ns
        with self._db.write() as conn:
            now = time.time()
            conn.execute(f"DELETE FROM {HEADS} WHERE expires <= ?", (now,))
            head = conn.execute(
                f"INSERT INTO {HEADS} (ns, stream, n, expires) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (ns, stream) DO UPDATE SET n = n + ?, expires = excluded.expires "
                "RETURNING n",
                (ns, stream, int(now * 1_000_000) + len(bodies), now + max_age, len(bodies)),
            ).fetchone()[0]
            conn.execute(
                f"INSERT INTO {TABLE} (ns, stream, n, count, at, expires, body) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (ns, stream, head, len(bodies), now, now + max_age, pack(bodies)),
            )
            # Both caps of this stream: its oldest rows, found along the primary key.
            oldest = conn.execute(
                f"SELECT n FROM {TABLE} WHERE ns = ? AND stream = ? AND n > ? AND expires > ? "
                "ORDER BY n LIMIT 1",
                (ns, stream, head - max_length, now),
            ).fetchone()
            conn.execute(
                f"DELETE FROM {TABLE} WHERE ns = ? AND stream = ? AND n < ?",
                (ns, stream, head + 1 if oldest is None else oldest[0]),
            )
            if now >= self._next_sweep:  # streams nobody writes to any more (old replies)
                self._next_sweep = now + SWEEP_INTERVAL
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
        start = number_position(after)
        deadline = time.monotonic() + wait
        while True:
            with self._db.read() as conn:
                rows = conn.execute(
                    f"SELECT n, count, at, body FROM {TABLE} WHERE ns = ? AND stream = ? "
                    "AND n > ? AND at >= ? AND expires > ? ORDER BY n LIMIT ?",
                    (self._ns, stream, start, since or 0.0, time.time(), max(0, limit)),
                ).fetchall()
            entries: list[Entry] = []
            for last, count, at, body in rows:
                first = last - count + 1
                for offset, item in enumerate(unpack(bytes(body))):
                    if first + offset > start:
                        entries.append(Entry(str(first + offset), at, item))
            remaining = deadline - time.monotonic()
            if entries or remaining <= 0:
                return entries[: max(0, limit)]
            self._idle.wait(min(POLL_INTERVAL, remaining))

    def last(self, stream: str) -> str:
        with self._db.read() as conn:
            row = conn.execute(
                f"SELECT MAX(n) FROM {TABLE} WHERE ns = ? AND stream = ?", (self._ns, stream)
            ).fetchone()
        return START if row is None or row[0] is None else str(row[0])

    def delete(self, stream: str) -> None:
        with self._db.write() as conn:
            for table in (TABLE, HEADS):
                conn.execute(f"DELETE FROM {table} WHERE ns = ? AND stream = ?", (self._ns, stream))
