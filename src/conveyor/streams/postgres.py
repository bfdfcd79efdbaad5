"""Streams in PostgreSQL (``postgresql://`` brokers): a ring table, woken by LISTEN/NOTIFY.

Like the SQLite ring (:mod:`conveyor.streams.sqlite`), one ``append`` is **one row** of
``conveyor_streams`` holding the whole batch (each entry a 4-byte length, then its bytes),
numbered by ``n``, the number of the batch's last entry along its stream. ``n`` comes from a
counter row per stream in ``conveyor_stream_heads``; the upsert of that row locks it until the
append commits, so concurrent appenders of one stream commit in ``n`` order and a follower
reading ``n > position`` never skips a row that commits later. A new counter starts at the
current time in microseconds, so a position a reader holds is never reused by an entry written
after its stream expired.

An append is **one statement** (one round trip, atomic in autocommit): bump the counter,
insert the row, delete the stream's rows wholly over ``max_length`` or past their age (one
range delete along the primary key, after one short index walk to the oldest row kept: the
length cap may keep up to one batch more), and ``NOTIFY <schema>_streams``. Times are the
database clock's (``clock_timestamp()``), like the broker's due times. Once a minute an append
also deletes the expired rows of streams nobody writes to any more (control replies).

A waiting ``read`` LISTENs (one connection per process, shared with nothing else) and looks
again on every notification and at least every ``poll_interval`` seconds; without LISTEN
(``listen=false`` behind a transaction-mode pooler) it looks every :data:`POLL_INTERVAL`.
"""

from __future__ import annotations

import threading
import time

from .._postgres import Database, Listener, channel_name
from . import START, Entry, number_position, pack, unpack

TABLE = "conveyor_streams"
HEADS = "conveyor_stream_heads"
#: Seconds between deletions of expired rows of every stream (an append trims its own stream).
SWEEP_INTERVAL = 60.0
#: Seconds between looks while ``read(wait=...)`` waits without LISTEN.
POLL_INTERVAL = 0.05

_CHURN = (
    "autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 1000, "
    "autovacuum_analyze_scale_factor = 0.02, autovacuum_vacuum_cost_delay = 0"
)

#: The broker's schema version that adds the streams' tables (``{s}``: the schema).
MIGRATION = (
    f"CREATE TABLE {{s}}.{TABLE} (ns text NOT NULL, stream text NOT NULL, n bigint NOT NULL, "
    "count integer NOT NULL, at float8 NOT NULL, expires float8 NOT NULL, "
    f"body bytea NOT NULL, PRIMARY KEY (ns, stream, n)) WITH ({_CHURN})",
    f"CREATE INDEX {TABLE}_expires ON {{s}}.{TABLE} (expires)",
    f"CREATE TABLE {{s}}.{HEADS} (ns text NOT NULL, stream text NOT NULL, n bigint NOT NULL, "
    f"expires float8 NOT NULL, PRIMARY KEY (ns, stream)) WITH ({_CHURN})",
)

_NOW = "extract(epoch FROM clock_timestamp())::float8"

_APPEND = f"""
WITH clock AS (SELECT {_NOW} AS now),
head AS (
    INSERT INTO {{s}}.{HEADS} AS h (ns, stream, n, expires)
    SELECT %(ns)s, %(stream)s, (clock.now * 1000000)::bigint + %(count)s, clock.now + %(age)s
    FROM clock
    ON CONFLICT (ns, stream) DO UPDATE SET n = h.n + %(count)s, expires = excluded.expires
    RETURNING n
),
added AS (
    INSERT INTO {{s}}.{TABLE} (ns, stream, n, count, at, expires, body)
    SELECT %(ns)s, %(stream)s, head.n, %(count)s, clock.now, clock.now + %(age)s, %(body)s
    FROM head, clock
    RETURNING n
),
trimmed AS (
    DELETE FROM {{s}}.{TABLE} AS t
    USING head, clock
    WHERE t.ns = %(ns)s AND t.stream = %(stream)s AND t.n < COALESCE((
        SELECT k.n FROM {{s}}.{TABLE} AS k
        WHERE k.ns = %(ns)s AND k.stream = %(stream)s AND k.n > head.n - %(max_length)s
        AND k.expires > clock.now ORDER BY k.n LIMIT 1
    ), head.n + 1)
)
SELECT pg_notify(%(channel)s, %(payload)s) FROM added
"""

_READ = f"""
SELECT n, count, at, body FROM {{s}}.{TABLE}
WHERE ns = %(ns)s AND stream = %(stream)s AND n > %(after)s AND at >= %(since)s
AND expires > {_NOW}
ORDER BY n LIMIT %(limit)s
"""

_LAST = f"SELECT max(n) FROM {{s}}.{TABLE} WHERE ns = %(ns)s AND stream = %(stream)s"

_STATEMENTS = {"append": _APPEND, "read": _READ, "last": _LAST}

_SWEEP = (
    f"DELETE FROM {{s}}.{TABLE} WHERE expires <= {_NOW}",
    f"DELETE FROM {{s}}.{HEADS} WHERE expires <= {_NOW}",
)


class PostgresStreams:
    """:class:`~conveyor.streams.Streams` in ``db``'s schema, rows of key prefix ``ns``
    (positions are decimal entry numbers)."""

    def __init__(
        self, db: Database, ns: str, *, listen: bool = True, poll_interval: float = 1.0
    ) -> None:
        self._db = db
        self._ns = ns
        self._listen = listen
        self._poll = poll_interval if listen else POLL_INTERVAL
        self._channel = channel_name(db.schema, "streams")
        self._sql = {name: text.format(s=db.schema) for name, text in _STATEMENTS.items()}
        self._sweeps = tuple(text.format(s=db.schema) for text in _SWEEP)
        self._next_sweep = 0.0
        self._arrived = threading.Condition()
        self._arrivals = 0
        self._listener = Listener(db, self._channel, self._wake)

    def _wake(self, _payload: str | None) -> None:
        with self._arrived:
            self._arrivals += 1
            self._arrived.notify_all()

    def append(self, stream: str, bodies: list[bytes], *, max_length: int, max_age: float) -> None:
        if not bodies:
            return
        params = {
            "ns": self._ns,
            "stream": stream,
            "count": len(bodies),
            "age": float(max_age),
            "max_length": max(int(max_length), 1),
            "body": pack(bodies),
            "channel": self._channel,
            # Followers re-read on any notification: the payload is for people with psql.
            "payload": f"{self._ns}:{stream}"[:1000],
        }
        sweep = time.monotonic() >= self._next_sweep
        with self._db.connection() as conn:
            conn.execute(self._sql["append"], params)
            if sweep:  # streams nobody writes to any more (old control replies)
                self._next_sweep = time.monotonic() + SWEEP_INTERVAL
                for statement in self._sweeps:
                    conn.execute(statement)
        self._wake(None)

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
        if limit <= 0:
            return []
        params = {
            "ns": self._ns,
            "stream": stream,
            "after": start,
            "since": float(since or 0.0),
            "limit": limit,
        }
        if wait > 0 and self._listen:
            self._listener.ensure()
        deadline = time.monotonic() + wait
        while True:
            with self._arrived:
                seen = self._arrivals
            entries = self._read_now(params, start)
            remaining = deadline - time.monotonic()
            if entries or remaining <= 0:
                return entries[:limit]
            with self._arrived:
                if self._arrivals == seen:
                    self._arrived.wait(min(self._poll, remaining))

    def _read_now(self, params: dict[str, object], start: int) -> list[Entry]:
        with self._db.connection() as conn:
            rows = conn.execute(self._sql["read"], params).fetchall()
        entries: list[Entry] = []
        for last, count, at, body in rows:
            if not (isinstance(last, int) and isinstance(count, int)):
                continue
            if not (isinstance(at, float) and isinstance(body, bytes)):
                continue
            first = last - count + 1
            for offset, item in enumerate(unpack(body)):
                if first + offset > start:
                    entries.append(Entry(str(first + offset), at, item))
        return entries

    def last(self, stream: str) -> str:
        with self._db.connection() as conn:
            row = conn.execute(self._sql["last"], {"ns": self._ns, "stream": stream}).fetchone()
        return START if row is None or row[0] is None else str(row[0])

    def delete(self, stream: str) -> None:
        with self._db.transaction() as conn:
            for table in (TABLE, HEADS):
                conn.execute(
                    f"DELETE FROM {self._db.schema}.{table} WHERE ns = %s AND stream = %s",
                    (self._ns, stream),
                )

    def close(self) -> None:
        """Stop this process's LISTEN connection (if a waiting read started it)."""
        self._listener.close()
