"""The SQLite broker: publishing, leasing (and waiting), acks, retries, dead letters, revocations.

The layout and its reasons are in the package docstring (``conveyor.brokers.sqlite``).
"""

from __future__ import annotations

import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ..._sqlite import Database, chunks, marks, path_from_url
from ...exceptions import BrokerError, ConfigurationError
from ...kv.sqlite import SQLiteKeyValue
from ...limits.sqlite import SQLiteLimits
from ...streams.sqlite import SQLiteStreams
from ..base import (
    PUBLISH_DEDUPE_WINDOW,
    Broker,
    BrokerOptions,
    DeadLetter,
    DeadLetterReason,
    Delivery,
    Departure,
    Message,
    PriorityCounts,
    QueueStats,
    Scheduled,
    clamp_priority,
)
from . import counts, maintenance, scheduled
from .rows import (
    as_int,
    as_text,
    delivery_of,
    lease_order,
    parse_receipt,
    receipt_statements,
    row_problem,
)
from .schema import (
    ACK,
    BURY,
    DELAYED,
    INSERT,
    KV_TABLES,
    LEASE,
    MAX_UNION,
    MIGRATIONS,
    PICK_ONE,
    PICK_PART,
    READY,
    REMEMBER,
    UNLEASE,
)
from .wake import Doorbell

#: Writes a caller adds at the start of a broker transaction (see ``publish_with``).
Write = Callable[[sqlite3.Connection], None]


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
        self.limits: SQLiteLimits = SQLiteLimits(self._db, self.ns, KV_TABLES.values)
        self._streams = SQLiteStreams(self._db, self.ns)
        self._lease_statements: dict[tuple[Any, ...], tuple[str, list[Any]]] = {}
        # Publishes through this object wake its waiting consumers without a poll; other
        # processes' through the doorbell (where the platform has one).
        self._arrived = threading.Condition()
        self._arrivals = 0
        self._doorbell = Doorbell(self.path)

    def __repr__(self) -> str:
        return f"<SQLiteBroker {self.path}>"

    @property
    def streams(self) -> SQLiteStreams:
        return self._streams

    def _notify(self) -> None:
        with self._arrived:
            self._arrivals += 1
            self._arrived.notify_all()
        self._doorbell.ring()

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
        conn.executemany(INSERT, rows)

    # -- consuming -----------------------------------------------------------------------
    def lease(self, queues: Sequence[str], limit: int, wait: float) -> list[Delivery]:
        names = list(dict.fromkeys(queues))
        if limit <= 0 or not names:
            return []
        return self._wait_for(names, limit, wait, self._lease(names, limit))

    def _wait_for(
        self, names: list[str], limit: int, wait: float, found: list[Delivery]
    ) -> list[Delivery]:
        """``found`` (a first lease attempt) or, if empty, wait for up to ``wait`` s: woken by
        the doorbell, looking at least every ``poll_interval``."""
        if found or wait <= 0:
            return found
        deadline = time.monotonic() + wait
        with self._doorbell.listening() as bell:
            if bell is None:
                return self._poll_for(names, limit, deadline)
            while True:
                bell.clear()
                if found := self._lease_if_any(names, limit):
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                bell.wait(min(self.poll_interval, remaining))

    def _poll_for(self, names: list[str], limit: int, deadline: float) -> list[Delivery]:
        """Without a doorbell: look with a backoff up to ``poll_interval``, woken at once by
        publishes of this process."""
        pause = 0.001
        while True:
            with self._arrived:
                seen = self._arrivals
            if found := self._lease_if_any(names, limit):
                return found
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            with self._arrived:
                if self._arrivals == seen:
                    self._arrived.wait(min(pause, remaining))
            pause = min(pause * 2, self.poll_interval)

    def _lease_if_any(self, names: list[str], limit: int) -> list[Delivery]:
        """A lease, only if a cheap read says there is something to take."""
        return self._lease(names, limit) if self._has_work(names) else []

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
        acked = receipt_statements(ACK, acks) if acks else ()
        with self._db.write() as conn:
            if first is not None:
                first(conn)
            for statement, args in acked:
                conn.execute(statement, args)
            now = self.time()
            maintenance.promote(conn, self.ns, now)
            cursor = conn.execute(sql, (token, now + self.options.lease_timeout, *params, now))
            rows = cursor.fetchall()
            if any(row_problem(row) for row in rows):
                rows = self._bury_bad(conn, rows, token, now)
        rows.sort(key=lease_order)
        return [delivery_of(row, token) for row in rows]

    def _bury_bad(
        self, conn: sqlite3.Connection, rows: list[Any], token: int, now: float
    ) -> list[Any]:
        """Dead-letter (``malformed``) the leased rows that cannot be delivered, in the lease's
        transaction; return the others."""
        good = []
        for row in rows:
            problem = row_problem(row)
            if problem is None:
                good.append(row)
                continue
            seq, id_, queue, priority, body, count, _ = row
            conn.execute(UNLEASE, (seq, token))
            priority = min(max(as_int(priority), 0), 9)
            dead = (self.ns, as_text(id_), as_text(queue), priority, body)
            reason = str(DeadLetterReason.MALFORMED)
            conn.execute(BURY, (*dead, reason, f"broker row: {problem}", now, as_int(count)))
        return good

    def _lease_sql(self, queues: list[str], limit: int) -> tuple[str, list[Any]]:
        """The lease statement and its pick parameters (kept: a worker asks for the same few)."""
        key = (*queues, limit)
        found = self._lease_statements.get(key)
        if found is None:
            if len(self._lease_statements) >= 64:
                self._lease_statements.clear()
            pick, params = self._pick(queues, limit)
            found = self._lease_statements[key] = (LEASE.format(pick=pick), params)
        return found

    def _pick(self, queues: list[str], limit: int) -> tuple[str, list[Any]]:
        if len(queues) == 1:
            return PICK_ONE, [self.ns, queues[0], limit]
        if len(queues) <= MAX_UNION:
            union = " UNION ALL ".join([PICK_PART] * len(queues))
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
        statements = receipt_statements(sql, deliveries, params)
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
        held = parse_receipt(delivery.receipt)
        if held is None:
            return
        with self._db.write() as conn:
            # A stale receipt (the lease was reclaimed) must not publish a duplicate.
            if conn.execute(UNLEASE, held).rowcount:
                self._insert(conn, [message])
        self._notify()

    def retry_later_many(self, retries: Sequence[tuple[Delivery, Message]]) -> None:
        pairs = [(held, m) for d, m in retries if (held := parse_receipt(d.receipt)) is not None]
        if not pairs:
            return
        with self._db.write() as conn:  # one transaction for all
            again = [message for held, message in pairs if conn.execute(UNLEASE, held).rowcount]
            self._insert(conn, again)
        self._notify()

    def dead_letter(self, delivery: Delivery, reason: str, detail: str = "") -> None:
        self.dead_letter_many([(delivery, reason, detail)])

    def dead_letter_many(self, letters: Sequence[tuple[Delivery, str, str]]) -> None:
        write = self.dead_letter_write(letters)
        if write is not None:
            with self._db.write() as conn:  # one transaction for them all
                write(conn)

    def sweep(self) -> int:
        with self._db.write() as conn:
            now = self.time()
            moved = maintenance.sweep(conn, self.ns, now, self.options.max_deliveries)
            conn.execute("DELETE FROM conveyor_revoked WHERE expires <= ?", (now,))
            conn.execute("DELETE FROM conveyor_published WHERE expires <= ?", (now,))
            self.kv.delete_expired(conn, now)
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
    def oldest_ready(self, queues: Sequence[str]) -> dict[str, list[bytes]]:
        with self._db.snapshot() as conn:
            return maintenance.oldest_ready(conn, self.ns, queues, self.time())

    def stats(self, queues: Sequence[str] | None = None) -> dict[str, QueueStats]:
        if queues is not None and not queues:
            return {}
        with self._db.snapshot() as conn:
            return counts.queue_stats(conn, self.ns, queues, self.time())

    def dead_letters(self, limit: int = 100, queue: str | None = None) -> list[DeadLetter]:
        with self._db.read() as conn:
            return maintenance.dead_letters(conn, self.ns, limit, queue)

    def replay_dead(self, ids: Sequence[str] | None = None) -> int:
        with self._db.write() as conn:
            moved = maintenance.replay_dead(conn, self.ns, ids)
        if moved:
            self._notify()
        return moved

    def purge_dead(self, ids: Sequence[str] | None = None) -> int:
        with self._db.write() as conn:
            return maintenance.purge_dead(conn, self.ns, ids)

    def purge(self, queues: Sequence[str]) -> int:
        with self._db.write() as conn:
            return maintenance.purge(conn, self.ns, queues)

    def take_departures(self, limit: int = 100) -> list[Departure]:
        now = self.time()
        with self._db.read() as conn:  # the usual answer, without the write lock
            if not maintenance.has_departures(conn, self.ns, now):
                return []
        with self._db.write() as conn:
            return maintenance.take_departures(conn, self.ns, limit, now)

    def forget_departures(self, departures: Sequence[Departure]) -> None:
        if departures:
            with self._db.write() as conn:
                maintenance.forget_departures(conn, self.ns, departures)

    def scheduled(self, limit: int = 100, queue: str | None = None) -> list[Scheduled]:
        with self._db.read() as conn:
            return scheduled.listing(conn, self.ns, limit, queue)

    def run_scheduled(self, ids: Sequence[str]) -> int:
        with self._db.write() as conn:
            moved = scheduled.move(conn, self.ns, ids, ready=True)
        if moved:
            self._notify()
        return moved

    def cancel_scheduled(self, ids: Sequence[str]) -> int:
        with self._db.write() as conn:
            return scheduled.move(conn, self.ns, ids, ready=False)

    def priority_counts(self, queues: Sequence[str] | None = None) -> dict[str, PriorityCounts]:
        with self._db.snapshot() as conn:
            return counts.priority_counts(conn, self.ns, queues, self.time())

    def time(self) -> float:
        # SQLite has no server: every process on the host shares this clock.
        return time.time()

    # -- building blocks of SQLiteSettlement (conveyor.settlement.sqlite) -----------------
    def publish_with(self, first: Write | None, messages: Sequence[Message]) -> None:
        """Run ``first(conn)`` (e.g. writing result records into this file) and insert
        ``messages`` in one transaction, but not those whose id was published in the last
        ``PUBLISH_DEDUPE_WINDOW`` seconds."""
        with self._db.write() as conn:
            if first is not None:
                first(conn)
            now = self.time()
            expires = now + PUBLISH_DEDUPE_WINDOW
            fresh = [
                m
                for m in messages
                if conn.execute(REMEMBER, (self.ns, m.id, expires, now)).rowcount
            ]
            self._insert(conn, fresh)
        self._notify()

    def dead_letter_write(self, letters: Sequence[tuple[Delivery, str, str]]) -> Write | None:
        """Dead-lettering each ``(delivery, reason, detail)`` whose lease is still held, as
        a :data:`Write` for a broker transaction (None: no receipt of this broker)."""
        held = [
            (receipt, d, str(reason), detail)
            for d, reason, detail in letters
            if (receipt := parse_receipt(d.receipt)) is not None
        ]
        if not held:
            return None

        def write(conn: sqlite3.Connection) -> None:
            now = self.time()
            for receipt, d, reason, detail in held:
                if conn.execute(UNLEASE, receipt).rowcount:
                    row = (self.ns, d.id, d.queue, d.priority, d.body, reason, detail)
                    conn.execute(BURY, (*row, now, d.delivery_count))

        return write

    def ack_with(self, first: Write | None, deliveries: Sequence[Delivery]) -> None:
        """Run ``first(conn)`` and ack ``deliveries`` in one transaction."""
        acked = receipt_statements(ACK, deliveries)
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
        self._doorbell.close()
        self._db.close()
