"""The PostgreSQL broker's upkeep: retries, dead letters, the sweep of expired leases and due
messages, revocations, purges and departures."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ..base import DEPARTURE_CLAIM, Delivery, Departure, Message, clamp_priority
from . import statements as sql
from .core import Params, PostgresCore
from .rows import as_blob, as_text, parse_receipt


class Maintenance(PostgresCore):
    """Retry later, dead-letter, sweep, revoke, purge, departures."""

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

    def purge(self, queues: Sequence[str]) -> int:
        names = list(dict.fromkeys(queues))
        if not names:
            return 0
        with self.db.connection() as conn:
            cursor = conn.execute(self.q(sql.PURGE), {"ns": self.ns, "queues": names})
            return max(cursor.rowcount, 0)

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
