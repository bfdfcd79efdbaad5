"""Leasing on PostgreSQL: one statement acks, promotes due messages and leases (``SKIP
LOCKED``); an idle consumer waits on notifications, due times and the poll interval.
Acks, heartbeats and releases."""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence

from ..base import DeadLetterReason, Delivery
from . import statements as sql
from .core import Params, PostgresCore
from .rows import (
    as_blob,
    as_float,
    as_int,
    as_text,
    delivery_of,
    lease_order,
    receipts,
    row_problem,
)


class Leasing(PostgresCore):
    """Lease (and wait), ack, extend and release."""

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
