"""Embedded broker (``sqlite:///path.db``): zero setup, several processes on one host.

All messages live in one table. ``state`` says where a message is: ready (0), leased (1) or
delayed (2); ``due`` is the lease deadline of a leased message and the due time of a delayed
one. A partial index over ready rows in (queue, priority, seq) order makes a lease one short
index walk; two more partial indexes over ``due`` find expired leases and due delayed
messages. A due message is re-inserted at the end of its queue (FIFO by the time it became
ready). Every row carries the broker's ``key_prefix`` (``ns``), so apps can share a file.

Writes are short ``BEGIN IMMEDIATE`` transactions. A receipt is ``"seq:token"`` with a random
token per lease: a receipt whose lease was released or reclaimed matches no row, so a late
worker's ack, extend, release, retry or dead-letter does nothing.

Waiting consumers poll with a backoff (1 ms doubling up to ``poll_interval``), look with a
read-only query before taking the write lock, and are woken at once by publishes made through
the same broker object.

Transport options: ``busy_timeout`` (s, default 5), ``lock_timeout`` (s a write may wait for
the file lock in total, default 60), ``poll_interval`` (s, longest pause between polls while
waiting for work, default 0.025).
"""

from __future__ import annotations

import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from .._sqlite import Database, chunks, marks, path_from_url
from ..exceptions import BrokerError, ConfigurationError
from ..kv.sqlite import SQLiteKeyValue, Tables
from .base import (
    Broker,
    BrokerOptions,
    DeadLetter,
    DeadLetterReason,
    Delivery,
    Message,
    QueueStats,
    clamp_priority,
)

READY, LEASED, DELAYED = 0, 1, 2

#: Writes a caller adds at the start of a broker transaction (see ``publish_with``).
Write = Callable[[sqlite3.Connection], None]

MIGRATIONS = [
    (
        """CREATE TABLE conveyor_messages (
            seq INTEGER PRIMARY KEY,
            ns TEXT NOT NULL,
            id TEXT NOT NULL,
            queue TEXT NOT NULL,
            priority INTEGER NOT NULL,
            body BLOB NOT NULL,
            state INTEGER NOT NULL,
            due REAL,
            token INTEGER,
            deliveries INTEGER NOT NULL DEFAULT 0
        )""",
        "CREATE INDEX conveyor_messages_ready "
        "ON conveyor_messages (ns, queue, priority DESC, seq) WHERE state = 0",
        "CREATE INDEX conveyor_messages_leased ON conveyor_messages (ns, due) WHERE state = 1",
        "CREATE INDEX conveyor_messages_delayed ON conveyor_messages (ns, due) WHERE state = 2",
        """CREATE TABLE conveyor_dead (
            seq INTEGER PRIMARY KEY,
            ns TEXT NOT NULL,
            id TEXT NOT NULL,
            queue TEXT NOT NULL,
            priority INTEGER NOT NULL,
            body BLOB NOT NULL,
            reason TEXT NOT NULL,
            detail TEXT NOT NULL,
            dead_at REAL NOT NULL,
            deliveries INTEGER NOT NULL
        )""",
        "CREATE INDEX conveyor_dead_id ON conveyor_dead (ns, id)",
        "CREATE TABLE conveyor_revoked (ns TEXT NOT NULL, id TEXT NOT NULL, "
        "expires REAL NOT NULL, PRIMARY KEY (ns, id)) WITHOUT ROWID",
        "CREATE TABLE conveyor_values (ns TEXT NOT NULL, key TEXT NOT NULL, "
        "value BLOB NOT NULL, expires REAL, PRIMARY KEY (ns, key)) WITHOUT ROWID",
    ),
    # v2: join sets of the broker's key/value storage (``KeyValue.join``).
    (
        "CREATE TABLE conveyor_sets (ns TEXT NOT NULL, key TEXT NOT NULL, "
        "member TEXT NOT NULL, PRIMARY KEY (ns, key, member)) WITHOUT ROWID",
        "CREATE TABLE conveyor_set_expiry (ns TEXT NOT NULL, key TEXT NOT NULL, "
        "expires REAL, PRIMARY KEY (ns, key)) WITHOUT ROWID",
    ),
]
KV_TABLES = Tables("conveyor_values", "conveyor_sets", "conveyor_set_expiry")

_INSERT = (
    "INSERT INTO conveyor_messages (ns, id, queue, priority, body, state, due) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)
# Each leased row says whether its id is revoked (the worker needs no second look).
_LEASE = (
    "UPDATE conveyor_messages SET state = 1, token = ?, due = ?, deliveries = deliveries + 1 "
    "WHERE seq IN ({pick}) RETURNING seq, id, queue, priority, body, deliveries, "
    "EXISTS (SELECT 1 FROM conveyor_revoked AS r WHERE r.ns = conveyor_messages.ns "
    "AND r.id = conveyor_messages.id AND r.expires > ?)"
)
_ACK = "DELETE FROM conveyor_messages WHERE state = 1 AND token = ? AND seq IN ({seqs})"
_PICK_ONE = (
    "SELECT seq FROM conveyor_messages WHERE ns = ? AND state = 0 AND queue = ? "
    "ORDER BY priority DESC, seq LIMIT ?"
)
_PICK_PART = (
    "SELECT * FROM (SELECT seq, priority FROM conveyor_messages "
    "WHERE ns = ? AND state = 0 AND queue = ? ORDER BY priority DESC, seq LIMIT ?)"
)
# Due messages move to the end of their queue in due order (new seqs): FIFO by ready time.
_PROMOTE = (
    "INSERT INTO conveyor_messages (ns, id, queue, priority, body, state, deliveries) "
    "SELECT ns, id, queue, priority, body, 0, deliveries FROM conveyor_messages "
    "WHERE ns = ? AND state = 2 AND due <= ? ORDER BY due, seq"
)
_PROMOTED = "DELETE FROM conveyor_messages WHERE ns = ? AND state = 2 AND due <= ?"
_UNLEASE = "DELETE FROM conveyor_messages WHERE seq = ? AND state = 1 AND token = ?"
_BURY = (
    "INSERT INTO conveyor_dead "
    "(ns, id, queue, priority, body, reason, detail, dead_at, deliveries) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
#: SQLite allows this many members in one compound SELECT (we stay well below).
_MAX_UNION = 100


class SQLiteBroker(Broker):
    schemes = ("sqlite",)
    lease_checks_revoked = True

    def __init__(self, url: str = "sqlite://", options: BrokerOptions | None = None) -> None:
        super().__init__(url, options)
        if ":memory:" in url:
            raise ConfigurationError(
                "an in-memory SQLite database cannot be shared between processes; "
                "use memory:// or a file (sqlite:///conveyor.sqlite3)"
            )
        transport = self.options.transport_options
        self.path = path_from_url(url)
        #: Rows of this broker carry its key prefix, so apps can share one file.
        self.ns = self.options.key_prefix
        self.poll_interval = float(transport.get("poll_interval", 0.025))
        self._db = Database(
            self.path,
            component="broker",
            migrations=MIGRATIONS,
            error=BrokerError,
            busy_timeout=float(transport.get("busy_timeout", 5.0)),
            lock_timeout=float(transport.get("lock_timeout", 60.0)),
        )
        self.kv: SQLiteKeyValue = SQLiteKeyValue(self._db, self.ns, KV_TABLES)
        self._lease_statements: dict[tuple[Any, ...], tuple[str, list[Any]]] = {}
        # Publishes through this object wake its waiting consumers without a poll.
        self._arrived = threading.Condition()
        self._arrivals = 0

    def __repr__(self) -> str:
        return f"<SQLiteBroker {self.path}>"

    def _notify(self) -> None:
        with self._arrived:
            self._arrivals += 1
            self._arrived.notify_all()

    # -- producing -----------------------------------------------------------------------
    def publish(self, messages: Sequence[Message]) -> None:
        if messages:
            self.publish_with(None, messages)

    def _insert(self, conn: sqlite3.Connection, messages: Iterable[Message]) -> None:
        now = self.time()
        rows = []
        for message in messages:
            due = now + message.countdown
            if message.eta is not None and message.eta > due:
                due = message.eta
            state, due_at = (DELAYED, due) if due > now else (READY, None)
            priority = clamp_priority(message.priority)
            rows.append((self.ns, message.id, message.queue, priority, message.body, state, due_at))
        conn.executemany(_INSERT, rows)

    # -- consuming -----------------------------------------------------------------------
    def lease(self, queues: Sequence[str], limit: int, wait: float) -> list[Delivery]:
        names = list(dict.fromkeys(queues))
        if limit <= 0 or not names:
            return []
        return self._wait_for(names, limit, wait, self._lease(names, limit))

    def _wait_for(
        self, names: list[str], limit: int, wait: float, found: list[Delivery]
    ) -> list[Delivery]:
        """``found`` (a first lease attempt) or, if empty, poll for up to ``wait`` s."""
        if found or wait <= 0:
            return found
        deadline = time.monotonic() + wait
        pause = 0.001
        while True:
            with self._arrived:
                seen = self._arrivals
            if self._has_work(names):
                found = self._lease(names, limit)
                if found:
                    return found
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            with self._arrived:
                if self._arrivals == seen:
                    self._arrived.wait(min(pause, remaining))
            pause = min(pause * 2, self.poll_interval)

    def _lease(
        self,
        queues: list[str],
        limit: int,
        acks: Sequence[Delivery] = (),
        first: Write | None = None,
    ) -> list[Delivery]:
        # Everything that can be prepared is, before the write lock is taken.
        token = secrets.randbits(63)
        sql, params = self._lease_sql(queues, limit)
        acked = _receipt_statements(_ACK, acks) if acks else ()
        with self._db.write() as conn:
            if first is not None:
                first(conn)
            for statement, args in acked:
                conn.execute(statement, args)
            now = self.time()
            self._promote(conn, now)
            cursor = conn.execute(sql, (token, now + self.options.lease_timeout, *params, now))
            rows = cursor.fetchall()
        rows.sort(key=_order)
        return [_delivery(row, token) for row in rows]

    def _promote(self, conn: sqlite3.Connection, now: float) -> int:
        moved = int(conn.execute(_PROMOTE, (self.ns, now)).rowcount)
        if moved:
            conn.execute(_PROMOTED, (self.ns, now))
        return moved

    def _lease_sql(self, queues: list[str], limit: int) -> tuple[str, list[Any]]:
        """The lease statement and its pick parameters (kept: a worker asks for the same few)."""
        key = (*queues, limit)
        found = self._lease_statements.get(key)
        if found is None:
            if len(self._lease_statements) >= 64:
                self._lease_statements.clear()
            pick, params = self._pick(queues, limit)
            found = self._lease_statements[key] = (_LEASE.format(pick=pick), params)
        return found

    def _pick(self, queues: list[str], limit: int) -> tuple[str, list[Any]]:
        if len(queues) == 1:
            return _PICK_ONE, [self.ns, queues[0], limit]
        if len(queues) <= _MAX_UNION:
            union = " UNION ALL ".join([_PICK_PART] * len(queues))
            params: list[Any] = []
            for queue in queues:
                params += (self.ns, queue, limit)
            sql = f"SELECT seq FROM ({union}) ORDER BY priority DESC, seq LIMIT ?"
            return sql, [*params, limit]
        return (
            "SELECT seq FROM conveyor_messages WHERE ns = ? AND state = 0 "
            f"AND queue IN ({marks(len(queues))}) ORDER BY priority DESC, seq LIMIT ?",
            [self.ns, *queues, limit],
        )

    def _has_work(self, queues: list[str]) -> bool:
        """A cheap read-only look, so idle consumers do not take the write lock."""
        with self._db.read() as conn:
            row = conn.execute(
                "SELECT EXISTS (SELECT 1 FROM conveyor_messages "
                "WHERE ns = ?1 AND state = 2 AND due <= ?2) "
                "OR EXISTS (SELECT 1 FROM conveyor_messages WHERE ns = ?1 AND state = 0 "
                f"AND queue IN ({marks(len(queues))}))",
                (self.ns, self.time(), *queues),
            ).fetchone()
        return bool(row[0])

    def _by_receipt(self, sql: str, deliveries: Sequence[Delivery], *params: Any) -> int:
        """Run ``sql`` (ending in ``token = ? AND seq IN ({seqs})``) once per lease batch."""
        statements = _receipt_statements(sql, deliveries, params)
        if not statements:
            return 0
        changed = 0
        with self._db.write() as conn:
            for statement, args in statements:
                changed += conn.execute(statement, args).rowcount
        return changed

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        self.ack_with(None, deliveries)

    def extend(self, deliveries: Sequence[Delivery]) -> None:
        self._by_receipt(
            "UPDATE conveyor_messages SET due = ? "
            "WHERE state = 1 AND token = ? AND seq IN ({seqs})",
            deliveries,
            self.time() + self.options.lease_timeout,
        )

    def release(self, deliveries: Sequence[Delivery]) -> None:
        released = self._by_receipt(
            "UPDATE conveyor_messages SET state = 0, due = NULL, token = NULL, "
            "deliveries = max(deliveries - 1, 0) "
            "WHERE state = 1 AND token = ? AND seq IN ({seqs})",
            deliveries,
        )
        if released:
            self._notify()

    def retry_later(self, delivery: Delivery, message: Message) -> None:
        held = _receipt(delivery.receipt)
        if held is None:
            return
        with self._db.write() as conn:
            # A stale receipt (the lease was reclaimed) must not publish a duplicate.
            if conn.execute(_UNLEASE, held).rowcount:
                self._insert(conn, [message])
        self._notify()

    def dead_letter(self, delivery: Delivery, reason: str, detail: str = "") -> None:
        held = _receipt(delivery.receipt)
        if held is None:
            return
        row = (
            self.ns,
            delivery.id,
            delivery.queue,
            delivery.priority,
            delivery.body,
            str(reason),
            detail,
        )
        with self._db.write() as conn:
            if conn.execute(_UNLEASE, held).rowcount:
                conn.execute(_BURY, (*row, self.time(), delivery.delivery_count))

    def sweep(self) -> int:
        with self._db.write() as conn:
            now = self.time()
            lost = (self.ns, now, self.options.max_deliveries)
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
                    "DELETE FROM conveyor_messages "
                    "WHERE ns = ? AND state = 1 AND due <= ? AND deliveries >= ?",
                    lost,
                )
            returned = conn.execute(
                "UPDATE conveyor_messages SET state = 0, due = NULL, token = NULL "
                "WHERE ns = ? AND state = 1 AND due <= ?",
                (self.ns, now),
            ).rowcount
            promoted = self._promote(conn, now)
            conn.execute("DELETE FROM conveyor_revoked WHERE expires <= ?", (now,))
            self.kv.delete_expired(conn, now)
        moved = int(buried + returned + promoted)
        if moved:
            self._notify()
        return moved

    # -- revocation ----------------------------------------------------------------------
    def revoke(self, ids: Iterable[str], ttl: float) -> None:
        expires = self.time() + ttl
        rows = [(self.ns, task_id, expires) for task_id in ids]
        if not rows:
            return
        with self._db.write() as conn:
            conn.executemany(
                "INSERT INTO conveyor_revoked (ns, id, expires) VALUES (?, ?, ?) "
                "ON CONFLICT (ns, id) DO UPDATE SET expires = excluded.expires",
                rows,
            )

    def revoked(self, ids: Iterable[str]) -> set[str]:
        wanted = list(dict.fromkeys(ids))
        now = self.time()
        found: set[str] = set()
        with self._db.read() as conn:
            for part in chunks(wanted):
                found.update(
                    row[0]
                    for row in conn.execute(
                        "SELECT id FROM conveyor_revoked WHERE ns = ? "
                        f"AND id IN ({marks(len(part))}) AND expires > ?",
                        (self.ns, *part, now),
                    )
                )
        return found

    # -- inspection and maintenance ------------------------------------------------------
    def stats(self, queues: Sequence[str] | None = None) -> dict[str, QueueStats]:
        out: dict[str, QueueStats] = {}
        where, params = "", [self.ns]
        if queues is not None:
            names = list(dict.fromkeys(queues))
            out = {queue: QueueStats() for queue in names}
            if not names:
                return out
            where, params = f"AND queue IN ({marks(len(names))})", [self.ns, *names]
        with self._db.snapshot() as conn:
            counted = conn.execute(
                "SELECT queue, state, state = 2 AND due <= ?, count(*) FROM conveyor_messages "
                f"WHERE ns = ? {where} GROUP BY 1, 2, 3",
                (self.time(), *params),
            ).fetchall()
            dead = conn.execute(
                f"SELECT queue, count(*) FROM conveyor_dead WHERE ns = ? {where} GROUP BY 1",
                params,
            ).fetchall()
        for queue, state, due_now, count in counted:
            stats = out.setdefault(_text(queue), QueueStats())
            if state == READY or due_now:
                stats.ready += count
            elif state == LEASED:
                stats.leased += count
            elif state == DELAYED:
                stats.delayed += count
        for queue, count in dead:
            out.setdefault(_text(queue), QueueStats()).dead += count
        return out

    def dead_letters(self, limit: int = 100, queue: str | None = None) -> list[DeadLetter]:
        where, params = ("", [self.ns]) if queue is None else ("AND queue = ?", [self.ns, queue])
        with self._db.read() as conn:
            rows = conn.execute(
                "SELECT id, queue, body, reason, detail, dead_at, deliveries FROM conveyor_dead "
                f"WHERE ns = ? {where} ORDER BY seq LIMIT ?",
                (*params, max(limit, 0)),
            ).fetchall()
        return [
            DeadLetter(
                _text(id_),
                _text(queue_),
                _blob(body),
                _text(reason),
                _text(detail),
                _float(dead_at),
                _int(count),
            )
            for id_, queue_, body, reason, detail, dead_at, count in rows
        ]

    def replay_dead(self, ids: Sequence[str] | None = None) -> int:
        moved = 0
        with self._db.write() as conn:
            for where, params in self._dead_filters(ids):
                conn.execute(
                    "INSERT INTO conveyor_messages (ns, id, queue, priority, body, state) "
                    f"SELECT ns, id, queue, priority, body, 0 FROM conveyor_dead {where} "
                    "ORDER BY seq",
                    params,
                )
                moved += conn.execute(f"DELETE FROM conveyor_dead {where}", params).rowcount
        if moved:
            self._notify()
        return moved

    def purge_dead(self, ids: Sequence[str] | None = None) -> int:
        removed = 0
        with self._db.write() as conn:
            for where, params in self._dead_filters(ids):
                removed += conn.execute(f"DELETE FROM conveyor_dead {where}", params).rowcount
        return removed

    def _dead_filters(self, ids: Sequence[str] | None) -> list[tuple[str, Sequence[Any]]]:
        if ids is None:
            return [("WHERE ns = ?", (self.ns,))]
        unique = list(dict.fromkeys(ids))
        return [
            (f"WHERE ns = ? AND id IN ({marks(len(part))})", (self.ns, *part))
            for part in chunks(unique)
        ]

    def purge(self, queues: Sequence[str]) -> int:
        names = list(dict.fromkeys(queues))
        removed = 0
        with self._db.write() as conn:
            for part in chunks(names):
                removed += conn.execute(
                    "DELETE FROM conveyor_messages WHERE ns = ? AND state != 1 "
                    f"AND queue IN ({marks(len(part))})",
                    (self.ns, *part),
                ).rowcount
        return removed

    def time(self) -> float:
        # SQLite has no server: every process on the host shares this clock.
        return time.time()

    # -- building blocks of SQLiteSettlement (conveyor.settlement.sqlite) -----------------
    def publish_with(self, first: Write | None, messages: Sequence[Message]) -> None:
        """Run ``first(conn)`` (e.g. writing result records into this file) and insert
        ``messages`` in one transaction."""
        with self._db.write() as conn:
            if first is not None:
                first(conn)
            self._insert(conn, messages)
        self._notify()

    def ack_with(self, first: Write | None, deliveries: Sequence[Delivery]) -> None:
        """Run ``first(conn)`` and ack ``deliveries`` in one transaction."""
        acked = _receipt_statements(_ACK, deliveries)
        if first is None and not acked:
            return
        with self._db.write() as conn:
            if first is not None:
                first(conn)
            for statement, args in acked:
                conn.execute(statement, args)

    def lease_with(
        self,
        first: Write | None,
        acks: Sequence[Delivery],
        queues: Sequence[str],
        limit: int,
        wait: float,
        committed: Callable[[], None] | None = None,
    ) -> list[Delivery]:
        """Run ``first(conn)``, ack ``acks`` and make the first lease attempt in one
        transaction; call ``committed()`` once it committed; then wait for messages as
        :meth:`lease` does. With ``limit <= 0`` or no queues it only runs ``first`` and acks."""
        names = list(dict.fromkeys(queues))
        if limit <= 0 or not names:
            self.ack_with(first, acks)
            if committed is not None:
                committed()
            return []
        found = self._lease(names, limit, acks, first)
        if committed is not None:
            committed()
        return self._wait_for(names, limit, wait, found)

    def close(self) -> None:
        self._db.close()


# -- rows to objects (never raising on odd data) --------------------------------------------
def _order(row: tuple[Any, ...]) -> tuple[int, int]:
    return -_int(row[3]), _int(row[0])


def _delivery(row: tuple[Any, ...], token: int) -> Delivery:
    seq, id_, queue, priority, body, count, revoked = row
    return Delivery(
        _text(id_),
        _text(queue),
        _blob(body),
        _int(priority),
        f"{seq}:{token}",
        _int(count),
        bool(revoked),
    )


def _text(value: Any) -> str:
    return value if type(value) is str else ("" if value is None else str(value))


def _blob(value: Any) -> bytes:
    if type(value) is bytes:
        return value
    if value is None:
        return b""
    return str(value).encode("utf-8", "surrogateescape")


def _int(value: Any) -> int:
    if type(value) is int:
        return value
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        return 0


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def _receipt(receipt: str) -> tuple[int, int] | None:
    """``"seq:token"`` to ints; None for a receipt this broker did not issue."""
    seq, _, token = receipt.partition(":")
    try:
        return int(seq), int(token)
    except ValueError:
        return None


def _receipts(deliveries: Sequence[Delivery]) -> dict[int, list[int]]:
    """Receipts grouped by lease token (one statement per lease batch)."""
    out: dict[int, list[int]] = {}
    for delivery in deliveries:
        held = _receipt(delivery.receipt)
        if held is not None:
            out.setdefault(held[1], []).append(held[0])
    return out


def _receipt_statements(
    sql: str, deliveries: Sequence[Delivery], params: Sequence[Any] = ()
) -> list[tuple[str, tuple[Any, ...]]]:
    """``sql`` (ending in ``token = ? AND seq IN ({seqs})``) with its arguments, once per lease
    batch (and chunk) of ``deliveries``."""
    statements = []
    for token, seqs in _receipts(deliveries).items():
        for part in chunks(seqs):
            statements.append((sql.format(seqs=marks(len(part))), (*params, token, *part)))
    return statements
