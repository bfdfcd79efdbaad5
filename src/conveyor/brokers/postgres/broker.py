"""The PostgreSQL broker: publishing, leasing (and waiting), acks, retries, dead letters,
revocations, sweeping and the dead-letter queue.

The layout and its reasons are in the package docstring (``conveyor.brokers.postgres``).
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from ..._postgres import (
    DEFAULT_SCHEMA,
    Database,
    Listener,
    channel_name,
    flag,
    schema_name,
    split_url,
)
from ...exceptions import BrokerError, ConfigurationError
from ...kv.postgres import PostgresKeyValue
from ...limits.postgres import PostgresLimits
from ...streams.postgres import PostgresStreams
from ..base import (
    DEPARTURE_CLAIM,
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
    redact_url,
)
from . import scheduled as delayed
from . import statements as sql
from .arrays import (
    bytea_array,
    float8_array,
    int2_array,
    sends_binary,
    text_array,
    use_arrays,
)
from .rows import (
    as_blob,
    as_float,
    as_int,
    as_text,
    delivery_of,
    lease_order,
    parse_receipt,
    receipts,
    row_problem,
)
from .schema import DELAYED, KV_TABLES, LEASED, MIGRATIONS, READY

if TYPE_CHECKING:
    from ..._postgres import AsyncConn, Conn

Params = dict[str, Any]


class PostgresBroker(Broker):
    schemes = ("postgresql", "postgres")
    lease_checks_revoked = True

    def __init__(self, url: str, options: BrokerOptions | None = None) -> None:
        super().__init__(url, options)
        transport = self.options.transport_options
        _, params = split_url(url)
        self.schema = schema_name(params.get("schema", transport.get("schema", DEFAULT_SCHEMA)))
        #: Rows of this broker carry its key prefix, so apps can share one schema.
        self.ns = self.options.key_prefix
        #: Longest wait (s) between two looks while idle: the most a lost notification costs.
        self.poll_interval = float(transport.get("poll_interval", 1.0))
        if not self.poll_interval > 0:
            raise ConfigurationError("poll_interval must be a positive number of seconds")
        #: Whether idle consumers LISTEN for new messages (off behind a transaction pooler
        #: that cannot hold a session: then they look every ``poll_interval``).
        self.listen = flag(params.get("listen", transport.get("listen", True)), "listen")
        self.db = Database(
            url,
            component="broker",
            migrations=MIGRATIONS,
            error=BrokerError,
            schema=self.schema,
            migrate=flag(params.get("migrate", transport.get("migrate", True)), "migrate"),
            pool_size=int(params.get("pool_size", transport.get("pool_size", 4))),
        )
        self.kv: PostgresKeyValue = PostgresKeyValue(self.db, self.ns, KV_TABLES)
        self.limits: PostgresLimits = PostgresLimits(
            self.db, self.ns, f"{self.schema}.{KV_TABLES.values}"
        )
        self.channel = channel_name(self.schema, "messages")
        self._sql: dict[str, str] = {}
        # Notifications and this object's own publishes wake its waiting consumers.
        self._arrived = threading.Condition()
        self._arrivals = 0
        self._listener = Listener(self.db, self.channel, self._wake)
        #: When (monotonic) a lease must next promote due delayed messages.
        self._promote_at = 0.0
        self._streams = PostgresStreams(
            self.db, self.ns, listen=self.listen, poll_interval=self.poll_interval
        )

    @property
    def streams(self) -> PostgresStreams:
        return self._streams

    def __repr__(self) -> str:
        return f"<PostgresBroker {redact_url(self.url)} schema={self.schema}>"

    def q(self, template: str, **parts: str) -> str:
        """``template`` with the schema (and ``parts``) filled in, kept for reuse."""
        key = template if not parts else template + repr(sorted(parts.items()))
        found = self._sql.get(key)
        if found is None:
            found = self._sql[key] = template.format(s=self.schema, **parts)
        return found

    def wake_local(self) -> None:
        """Wake this process's waiting consumers (after a publish it committed)."""
        self._wake()

    def _wake(self, _queue: str | None = None) -> None:
        with self._arrived:
            self._arrivals += 1
            self._arrived.notify_all()

    def migrate(self) -> int:
        """Create or upgrade the broker's tables now; return the schema version."""
        with self.db.connect(connect_timeout=10) as conn:
            return self.db.ensure_schema(conn, force=True)

    # -- producing -----------------------------------------------------------------------
    def publish(self, messages: Sequence[Message]) -> None:
        if not messages:
            return
        with self.db.connection() as conn:
            conn.execute(self.q(sql.PUBLISH), self.publish_params(messages, conn))
        self._wake()

    def publish_params(self, messages: Sequence[Message], conn: Conn | AsyncConn) -> Params:
        """The parameters of the publish statement on ``conn`` (the first message of an id
        wins), as binary arrays built in one pass each (see :mod:`.arrays`), or as lists on
        a connection that binds parameters on the client (a caller's, e.g. Django's)."""
        ids = [m.id for m in messages]
        if len(set(ids)) < len(ids):
            first: dict[str, Message] = {}
            for message in messages:
                first.setdefault(message.id, message)
            messages = list(first.values())
            ids = list(first)
        if not sends_binary(conn):
            return {
                "ns": self.ns,
                "window": PUBLISH_DEDUPE_WINDOW,
                "ids": ids,
                "queues": [m.queue for m in messages],
                "priorities": [clamp_priority(m.priority) for m in messages],
                "bodies": [m.body for m in messages],
                "countdowns": [float(m.countdown) for m in messages],
                "etas": [None if m.eta is None else float(m.eta) for m in messages],
            }
        use_arrays(conn)
        encoding = conn.info.encoding
        return {
            "ns": self.ns,
            "window": PUBLISH_DEDUPE_WINDOW,
            "ids": text_array(ids, encoding),
            "queues": text_array([m.queue for m in messages], encoding),
            "priorities": int2_array([clamp_priority(m.priority) for m in messages]),
            "bodies": bytea_array([m.body for m in messages]),
            "countdowns": float8_array([float(m.countdown) for m in messages]),
            "etas": float8_array([None if m.eta is None else float(m.eta) for m in messages]),
        }

    def publish_on(self, conn: Conn, messages: Sequence[Message]) -> None:
        """Insert ``messages`` with the caller's connection, inside whatever transaction it
        has open (transactional enqueue): they become visible, and wake consumers, when
        that transaction commits, and vanish if it rolls back. The tables must exist."""
        if messages:
            conn.execute(self.q(sql.PUBLISH), self.publish_params(messages, conn))

    async def apublish_on(self, conn: AsyncConn, messages: Sequence[Message]) -> None:
        """:meth:`publish_on` on an async connection (awaited on it, not in a thread)."""
        if messages:
            await conn.execute(self.q(sql.PUBLISH), self.publish_params(messages, conn))

    # -- consuming -----------------------------------------------------------------------
    def lease(self, queues: Sequence[str], limit: int, wait: float) -> list[Delivery]:
        names = list(dict.fromkeys(queues))
        if limit <= 0 or not names:
            return []
        if wait > 0 and self.listen:
            self._listener.ensure()
        # A caller that will not wait sees every due message; a waiting one (the worker)
        # has the next attempts promote if this one, throttled, finds nothing.
        found = self.lease_now(names, limit, promote=wait <= 0)
        return self.wait_for(names, limit, wait, found)

    def wait_for(
        self, names: list[str], limit: int, wait: float, found: list[Delivery]
    ) -> list[Delivery]:
        """``found`` (a first lease attempt) or, if empty, wait up to ``wait`` s for more:
        woken by notifications, by due times, and at least every ``poll_interval``."""
        if found or wait <= 0:
            return found
        if self.listen:
            self._listener.ensure()
        deadline = time.monotonic() + wait
        promote = True  # the first attempt may have skipped due messages (throttled)
        while True:
            with self._arrived:
                seen = self._arrivals
            found = self.lease_now(names, limit, promote=promote)
            if found:
                return found
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            pause = min(self.poll_interval, remaining, self._next_due(names))
            with self._arrived:
                if self._arrivals == seen:
                    self._arrived.wait(max(pause, 0.001))
                # Woken by a new message: lease it at once. Otherwise a due time (or the
                # poll interval) has come: promote.
                promote = self._arrivals == seen

    def _next_due(self, names: list[str]) -> float:
        with self.db.connection() as conn:
            row = conn.execute(self.q(sql.NEXT_DUE), {"ns": self.ns, "queues": names}).fetchone()
        due = None if row is None else row[0]
        return float("inf") if due is None else max(as_float(due), 0.0)

    def lease_now(
        self,
        names: list[str],
        limit: int,
        acks: Sequence[Delivery] = (),
        before: Sequence[tuple[str, Params]] = (),
        *,
        promote: bool = False,
    ) -> list[Delivery]:
        """One lease attempt: ``before`` (a settlement's records, each committed on its own,
        first), then one statement that acks ``acks``, makes due messages ready (if
        ``promote`` or none of this process's leases did for ``PROMOTE_EVERY`` s) and
        leases."""
        now = time.monotonic()
        if promote or now >= self._promote_at:
            template = sql.LEASE_PROMOTING
            self._promote_at = now + sql.PROMOTE_EVERY
        else:
            template = sql.LEASE
        token = secrets.randbits(63)
        seqs, tokens = receipts(acks)
        params: Params = {
            "ns": self.ns,
            "token": token,
            "lease": self.options.lease_timeout,
            "limit": limit,
            "seqs": seqs,
            "tokens": tokens,
        }
        if len(names) == 1:
            lease = self.q(template, where=sql.ONE_QUEUE)
            params["queue"] = names[0]
        else:
            lease = self.q(template, where=sql.SOME_QUEUES)
            params["queues"] = names
        with self.db.connection() as conn:
            for statement, args in before:  # autocommit: stored before anything is acked
                conn.execute(statement, args)
            rows: list[tuple[object, ...]] = conn.execute(lease, params).fetchall()
        # Only undeliverable rows: lease again at once (each round buries at least one),
        # rather than wait for a notification that no new message will send.
        while rows and all(row_problem(row) for row in rows):
            self._bury_bad(rows, token)
            params.update(seqs=[], tokens=[])
            with self.db.connection() as conn:
                rows = conn.execute(lease, params).fetchall()
        if any(row_problem(row) for row in rows):
            rows = self._bury_bad(rows, token)
        rows.sort(key=lease_order)
        return [delivery_of(row, token) for row in rows]

    def _bury_bad(self, rows: list[tuple[object, ...]], token: int) -> list[tuple[object, ...]]:
        """Dead-letter (``malformed``) the leased rows that cannot be delivered; return the
        others."""
        good = []
        for row in rows:
            problem = row_problem(row)
            if problem is None:
                good.append(row)
                continue
            seq, id_, queue, priority, body, count, _ = row
            self._bury(
                as_int(seq),
                token,
                as_text(id_),
                as_text(queue),
                min(max(as_int(priority), 0), 9),
                as_blob(body),
                str(DeadLetterReason.MALFORMED),
                f"broker row: {problem}",
                as_int(count),
            )
        return good

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        statement = self.ack_statement(deliveries)
        if statement is not None:
            with self.db.connection() as conn:
                conn.execute(*statement)

    def ack_statement(self, deliveries: Sequence[Delivery]) -> tuple[str, Params] | None:
        seqs, tokens = receipts(deliveries)
        if not seqs:
            return None
        return self.q(sql.ACK), {"seqs": seqs, "tokens": tokens}

    def extend(self, deliveries: Sequence[Delivery]) -> None:
        seqs, tokens = receipts(deliveries)
        if seqs:
            with self.db.connection() as conn:
                conn.execute(
                    self.q(sql.EXTEND),
                    {"seqs": seqs, "tokens": tokens, "lease": self.options.lease_timeout},
                )

    def release(self, deliveries: Sequence[Delivery]) -> None:
        seqs, tokens = receipts(deliveries)
        if not seqs:
            return
        with self.db.transaction() as conn:
            cursor = conn.execute(self.q(sql.RELEASE), {"seqs": seqs, "tokens": tokens})
            back = {str(row[0]) for row in cursor.fetchall()}
            self._notify_queues(conn, back)
        if back:
            self._wake()

    def _notify_queues(self, conn: Conn, queues: set[str]) -> None:
        if queues:
            conn.execute(sql.WAKE, {"channel": self.channel, "queues": sorted(queues)})

    def retry_later(self, delivery: Delivery, message: Message) -> None:
        held = parse_receipt(delivery.receipt)
        if held is None:
            return
        with self.db.connection() as conn:
            conn.execute(
                self.q(sql.RETRY),
                {
                    "seq": held[0],
                    "token": held[1],
                    "ns": self.ns,
                    "id": message.id,
                    "queue": message.queue,
                    "priority": clamp_priority(message.priority),
                    "body": message.body,
                    "countdown": float(message.countdown),
                    "eta": message.eta,
                },
            )
        self._wake()

    def retry_later_many(self, retries: Sequence[tuple[Delivery, Message]]) -> None:
        """All of ``retries`` in one statement (one round trip, one commit)."""
        pairs: dict[tuple[int, int], Message] = {}
        for delivery, message in retries:
            held = parse_receipt(delivery.receipt)
            if held is not None:
                pairs.setdefault(held, message)  # a receipt is retried once
        if not pairs:
            return
        messages = list(pairs.values())
        params: Params = {
            "ns": self.ns,
            "seqs": [seq for seq, _ in pairs],
            "tokens": [token for _, token in pairs],
            "ids": [m.id for m in messages],
            "queues": [m.queue for m in messages],
            "priorities": [clamp_priority(m.priority) for m in messages],
            "bodies": [m.body for m in messages],
            "countdowns": [float(m.countdown) for m in messages],
            "etas": [None if m.eta is None else float(m.eta) for m in messages],
        }
        with self.db.connection() as conn:
            conn.execute(self.q(sql.RETRY_MANY), params)
        self._wake()

    def dead_letter(self, delivery: Delivery, reason: str, detail: str = "") -> None:
        held = parse_receipt(delivery.receipt)
        if held is None:
            return
        self._bury(
            *held,
            delivery.id,
            delivery.queue,
            delivery.priority,
            delivery.body,
            str(reason),
            detail,
            delivery.delivery_count,
        )

    def _bury(
        self,
        seq: int,
        token: int,
        id_: str,
        queue: str,
        priority: int,
        body: bytes,
        reason: str,
        detail: str,
        deliveries: int,
    ) -> None:
        with self.db.connection() as conn:
            conn.execute(
                self.q(sql.BURY_HELD),
                {
                    "seq": seq,
                    "token": token,
                    "ns": self.ns,
                    "id": id_,
                    "queue": queue,
                    "priority": priority,
                    "body": body,
                    "reason": reason,
                    "detail": detail.replace("\x00", "\\x00"),
                    "deliveries": deliveries,
                },
            )

    def sweep(self) -> int:
        args = {"ns": self.ns, "max": self.options.max_deliveries}
        with self.db.transaction() as conn:
            buried = conn.execute(self.q(sql.BURY_LOST), args)
            returned = conn.execute(self.q(sql.RETURN_EXPIRED), args)
            promoted = conn.execute(self.q(sql.PROMOTE), args)
            for statement in sql.FORGET_EXPIRED:
                conn.execute(self.q(statement), args)
            self.kv.delete_expired(conn)
            back = {str(row[0]) for row in returned.fetchall()}
            self._notify_queues(conn, back)
        if back:
            self._wake()
        return sum(max(c.rowcount, 0) for c in (buried, returned, promoted))

    # -- revocation ----------------------------------------------------------------------
    def revoke(self, ids: Iterable[str], ttl: float) -> None:
        wanted = list(dict.fromkeys(ids))
        if wanted:
            with self.db.connection() as conn:
                conn.execute(self.q(sql.REVOKE), {"ns": self.ns, "ids": wanted, "ttl": float(ttl)})

    def revoked(self, ids: Iterable[str]) -> set[str]:
        wanted = list(dict.fromkeys(ids))
        if not wanted:
            return set()
        with self.db.connection() as conn:
            rows = conn.execute(self.q(sql.REVOKED), {"ns": self.ns, "ids": wanted}).fetchall()
        return {str(row[0]) for row in rows}

    # -- inspection and maintenance ------------------------------------------------------
    def stats(self, queues: Sequence[str] | None = None) -> dict[str, QueueStats]:
        if queues is not None and not queues:
            return {}
        params: Params = {"ns": self.ns}
        out: dict[str, QueueStats] = {}
        where = ""
        if queues is not None:
            names = list(dict.fromkeys(queues))
            out = {queue: QueueStats() for queue in names}
            where, params["queues"] = "AND queue = ANY(%(queues)s::text[])", names
        with self.db.connection() as conn:
            rows = conn.execute(self.q(sql.STATS, where=where), params).fetchall()
        for queue, state, due_now, count in rows:
            stats = out.setdefault(as_text(queue), QueueStats())
            number = as_int(count)
            if state == READY or due_now:
                stats.ready += number
            elif state == LEASED:
                stats.leased += number
            elif state == DELAYED:
                stats.delayed += number
            else:
                stats.dead += number
        return out

    def dead_letters(self, limit: int = 100, queue: str | None = None) -> list[DeadLetter]:
        params: Params = {"ns": self.ns, "limit": max(limit, 0), "queue": queue}
        where = "" if queue is None else "AND queue = %(queue)s"
        with self.db.connection() as conn:
            rows = conn.execute(self.q(sql.DEAD_LETTERS, where=where), params).fetchall()
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

    def _dead_where(self, ids: Sequence[str] | None) -> tuple[str, Params]:
        if ids is None:
            return "", {"ns": self.ns}
        return "AND id = ANY(%(ids)s::text[])", {"ns": self.ns, "ids": list(dict.fromkeys(ids))}

    def replay_dead(self, ids: Sequence[str] | None = None) -> int:
        where, params = self._dead_where(ids)
        with self.db.connection() as conn:
            moved = conn.execute(self.q(sql.REPLAY, where=where), params).rowcount
        if moved:
            self._wake()
        return max(moved, 0)

    def purge_dead(self, ids: Sequence[str] | None = None) -> int:
        where, params = self._dead_where(ids)
        with self.db.connection() as conn:
            return max(conn.execute(self.q(sql.PURGE_DEAD, where=where), params).rowcount, 0)

    def purge(self, queues: Sequence[str]) -> int:
        names = list(dict.fromkeys(queues))
        if not names:
            return 0
        with self.db.connection() as conn:
            cursor = conn.execute(self.q(sql.PURGE), {"ns": self.ns, "queues": names})
            return max(cursor.rowcount, 0)

    # -- departures ------------------------------------------------------------------------
    def take_departures(self, limit: int = 100) -> list[Departure]:
        params: Params = {"ns": self.ns, "limit": max(limit, 0), "claim": DEPARTURE_CLAIM}
        with self.db.connection() as conn:
            rows = conn.execute(self.q(sql.TAKE_DEPARTURES), params).fetchall()
        found = [
            Departure(as_text(id_), as_text(queue), as_blob(body), as_text(reason), str(seq))
            for seq, id_, queue, body, reason in rows
        ]
        return sorted(found, key=lambda d: int(d.receipt))

    def forget_departures(self, departures: Sequence[Departure]) -> None:
        seqs = [int(d.receipt) for d in departures if d.receipt.isdigit()]
        if seqs:
            with self.db.connection() as conn:
                conn.execute(self.q(sql.FORGET_DEPARTURES), {"ns": self.ns, "seqs": seqs})

    # -- delayed messages (the dashboard) ---------------------------------------------------
    def scheduled(self, limit: int = 100, queue: str | None = None) -> list[Scheduled]:
        params: Params = {"ns": self.ns, "limit": max(limit, 0), "queue": queue}
        where = "" if queue is None else "AND queue = %(queue)s"
        with self.db.connection() as conn:
            rows = conn.execute(self.q(delayed.LISTING, where=where), params).fetchall()
        return [
            Scheduled(as_text(i), as_text(q), as_blob(body), as_int(priority), as_float(due))
            for i, q, body, priority, due in rows
        ]

    def run_scheduled(self, ids: Sequence[str]) -> int:
        if not ids:
            return 0
        with self.db.transaction() as conn:
            cursor = conn.execute(self.q(delayed.RUN), {"ns": self.ns, "ids": list(ids)})
            queues = [as_text(row[0]) for row in cursor.fetchall()]
            self._notify_queues(conn, set(queues))
        if queues:
            self._wake()
        return len(queues)

    def cancel_scheduled(self, ids: Sequence[str]) -> int:
        if not ids:
            return 0
        with self.db.connection() as conn:
            cursor = conn.execute(self.q(delayed.CANCEL), {"ns": self.ns, "ids": list(ids)})
            return max(cursor.rowcount, 0)

    def priority_counts(self, queues: Sequence[str] | None = None) -> dict[str, PriorityCounts]:
        params: Params = {"ns": self.ns}
        where, out = "", {}
        if queues is not None:
            params["queues"] = names = list(dict.fromkeys(queues))
            where, out = "AND queue = ANY(%(queues)s::text[])", {q: PriorityCounts() for q in names}
        with self.db.connection() as conn:
            rows = conn.execute(self.q(delayed.PRIORITY_COUNTS, where=where), params).fetchall()
        for queue, state, priority, count in rows:
            out.setdefault(as_text(queue), PriorityCounts()).add(
                as_text(state), as_int(priority), as_int(count)
            )
        return out

    def time(self) -> float:
        with self.db.connection() as conn:
            row = conn.execute("SELECT extract(epoch FROM clock_timestamp())::float8").fetchone()
        return as_float(None if row is None else row[0])

    def close(self) -> None:
        self._listener.close()
        self._streams.close()
        self.db.close()
