"""Settling on an SQLite broker: acks, dead letters and the next lease attempt share one
transaction, and the records of an SQLite result store in the same file are written in it too."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from ..brokers.base import Delivery, Message
from ..brokers.sqlite.broker import SQLiteBroker, Write
from ..results.base import ResultRecord, ResultStore
from ..results.sqlite import SQLiteResultStore
from .base import Settlement


class SQLiteSettlement(Settlement):
    """:class:`Settlement` in fewer transactions for an :class:`SQLiteBroker`."""

    broker: SQLiteBroker
    dead_letters_ride = True

    def __init__(self, broker: SQLiteBroker, results: ResultStore) -> None:
        super().__init__(broker, results)
        #: ``results`` when it is in the broker's file (one transaction can write both).
        self.together: SQLiteResultStore | None = None
        if isinstance(results, SQLiteResultStore) and results.path == broker.path:
            self.together = results

    def _records(self, store: SQLiteResultStore, records: Sequence[ResultRecord]) -> Write:
        """Writing ``records`` inside a broker transaction (encoded now, so it stays short)."""
        store.prepare()
        rows = store.record_rows(records)
        return lambda conn: store.write_rows(conn, rows)

    def publish(self, messages: Sequence[Message], records: Sequence[ResultRecord]) -> None:
        store = self.together
        if store is None or not records:
            super().publish(messages, records)
            return
        self.broker.publish_with(self._records(store, records), messages)
        store.notify()

    def ack(self, deliveries: Sequence[Delivery], records: Sequence[ResultRecord]) -> None:
        store = self.together
        if store is None or not (deliveries and records):
            super().ack(deliveries, records)
            return
        self.broker.ack_with(self._records(store, records), deliveries)
        store.notify()

    def ack_and_lease(
        self,
        deliveries: Sequence[Delivery],
        records: Sequence[ResultRecord],
        queues: Sequence[str],
        limit: int,
        wait: float,
        dead: Sequence[tuple[Delivery, str, str]] = (),
    ) -> list[Delivery]:
        store = self.together
        writes: list[Write] = []
        committed = None
        if records:
            if store is None:
                self.results.store(records)
            else:
                writes.append(self._records(store, records))
                committed = store.notify
        if dead and (bury := self.broker.dead_letter_write(dead)) is not None:
            writes.append(bury)
        return self.broker.lease_with(
            _chained(writes), deliveries, queues, limit, wait, committed=committed
        )


def _chained(writes: list[Write]) -> Write | None:
    """One :data:`Write` doing ``writes`` in order (None for none)."""
    if len(writes) <= 1:
        return writes[0] if writes else None

    def write(conn: sqlite3.Connection) -> None:
        for each in writes:
            each(conn)

    return write
