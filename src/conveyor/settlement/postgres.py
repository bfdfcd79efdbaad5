"""Settling on a PostgreSQL broker: a worker's acks ride on its next lease (one statement),
and when the result store is in the same database (any schema) its records go over the same
pooled connection just before (each statement commits on its own: records first, as the
generic settlement does, without an explicit transaction's extra round trips)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

import psycopg

from ..brokers.base import Delivery, Message, redact_url
from ..brokers.postgres.broker import PostgresBroker
from ..brokers.postgres.statements import PUBLISH
from ..exceptions import ConfigurationError
from ..results.base import ResultRecord, ResultStore
from ..results.postgres import PostgresResultStore
from .base import Settlement
from .stream import PublishStream

if TYPE_CHECKING:
    from .._postgres import Conn


class PostgresSettlement(Settlement):
    """:class:`Settlement` in fewer round trips for a :class:`PostgresBroker`."""

    broker: PostgresBroker

    def __init__(self, broker: PostgresBroker, results: ResultStore) -> None:
        super().__init__(broker, results)
        #: ``results`` when it lives in the broker's database (one transaction writes both).
        self.together: PostgresResultStore | None = None
        if isinstance(results, PostgresResultStore) and results.db.conninfo == broker.db.conninfo:
            self.together = results

    def publish(self, messages: Sequence[Message], records: Sequence[ResultRecord]) -> None:
        store = self.together
        if store is None or not records or not messages:
            super().publish(messages, records)
            return
        store.db.prepared()
        with self.broker.db.connection() as conn:
            params = self.broker.publish_params(messages, conn)
            store.store_on(conn, records)  # committed first: a fast worker never finds
            conn.execute(self.broker.q(PUBLISH), params)  # QUEUED written after its result

    def open_stream(self) -> PublishStream:
        """Chunks inserted in one transaction while the next is encoded; the records go in
        the same transaction when the result store is in this database, else all of them
        just before the commit (so a rolled-back batch leaves none)."""
        broker = self.broker
        store = self.together
        kept: list[ResultRecord] = []

        def send(conn: Conn, messages: Sequence[Message], records: Sequence[ResultRecord]) -> None:
            if records:
                if store is None:
                    kept.extend(records)
                else:
                    store.store_on(conn, records)
            conn.execute(broker.q(PUBLISH), broker.publish_params(messages, conn))

        def before_commit() -> None:
            if kept:
                self.results.store(kept)

        def connection() -> AbstractContextManager[Conn]:
            self._open_pools()  # in the sender: a failure is the stream's, retried as one
            return broker.db.connection()

        return PublishStream(connection, send, before_commit, broker.wake_local)

    def can_publish_on(self, connection: object) -> bool:
        """True for an open psycopg connection to the broker's database."""
        return isinstance(connection, psycopg.Connection) and self.broker.db.same_database(
            connection
        )

    def publish_on(
        self, connection: object, messages: Sequence[Message], records: Sequence[ResultRecord]
    ) -> None:
        """Insert the messages (and the QUEUED records, when the result store is in this
        database) with ``connection``, in its open transaction or, in autocommit mode, at
        once. Nothing is visible to workers before that transaction commits; a rollback
        removes it all. With the result store elsewhere, its records are stored first and
        stay (a rolled-back task shows QUEUED until its record expires)."""
        if isinstance(connection, psycopg.AsyncConnection):
            raise ConfigurationError(
                "connection= is a psycopg AsyncConnection: enqueue on it from async code with "
                "`await task.aapply_async(args, connection=conn)` (apply_async and delay are "
                "synchronous and cannot use it)"
            )
        if not isinstance(connection, psycopg.Connection):
            raise _not_a_connection(connection, "psycopg.Connection")
        self._check(connection)
        self.broker.db.prepared()  # the tables exist (made on a connection of our own)
        store = self.together
        if records:
            if store is None:
                self.results.store(records)
            else:
                store.db.prepared()
        try:
            if records and store is not None:
                store.store_on(connection, records)
            self.broker.publish_on(connection, messages)
        except psycopg.Error as exc:
            error = self.broker.db.fail(exc)
            raise error from error.__cause__

    async def apublish_on(
        self, connection: object, messages: Sequence[Message], records: Sequence[ResultRecord]
    ) -> None:
        """:meth:`publish_on` with a psycopg ``AsyncConnection``: the inserts are awaited on
        that connection, in its open transaction (they commit or roll back with it). Only a
        process's first use, which opens the pools and checks the tables, runs in a
        thread."""
        if isinstance(connection, psycopg.Connection):
            raise ConfigurationError(
                "aapply_async(connection=...) takes a psycopg AsyncConnection; for a "
                "synchronous psycopg.Connection use apply_async(connection=conn)"
            )
        if not isinstance(connection, psycopg.AsyncConnection):
            raise _not_a_connection(connection, "psycopg.AsyncConnection")
        self._check(connection)
        store = self.together
        if not self.broker.db.is_open or (store is not None and not store.db.is_open):
            await asyncio.to_thread(self._open_pools)
        if records and store is None:
            await asyncio.to_thread(self.results.store, records)
        try:
            if records and store is not None:
                await store.astore_on(connection, records)
            await self.broker.apublish_on(connection, messages)
        except psycopg.Error as exc:
            error = self.broker.db.fail(exc)
            raise error from error.__cause__

    def _open_pools(self) -> None:
        self.broker.db.prepared()
        if self.together is not None:
            self.together.db.prepared()

    def _check(self, connection: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> None:
        """A clear error unless ``connection`` is connected to the broker's database."""
        if not self.broker.db.same_database(connection):
            raise ConfigurationError(
                "connection= must be connected to the broker's database "
                f"({redact_url(self.broker.url)}); it is connected to "
                f"{connection.info.host}:{connection.info.port}/{connection.info.dbname}"
            )

    def ack(self, deliveries: Sequence[Delivery], records: Sequence[ResultRecord]) -> None:
        store = self.together
        acks = self.broker.ack_statement(deliveries)
        if store is None or acks is None or not records:
            super().ack(deliveries, records)
            return
        store.db.prepared()
        with self.broker.db.connection() as conn:
            store.store_on(conn, records)  # committed before the ack
            conn.execute(*acks)

    def ack_and_lease(
        self,
        deliveries: Sequence[Delivery],
        records: Sequence[ResultRecord],
        queues: Sequence[str],
        limit: int,
        wait: float,
        dead: Sequence[tuple[Delivery, str, str]] = (),
    ) -> list[Delivery]:
        if dead:  # records first, then the acks and dead letters, in their own round trips
            self.ack(deliveries, records)
            self.broker.dead_letter_many(dead)
            deliveries, records = (), ()
        names = list(dict.fromkeys(queues))
        store = self.together
        if limit <= 0 or not names:
            self.ack(deliveries, records)
            return []
        before = []
        if records:
            if store is None:
                self.results.store(records)
            else:
                store.db.prepared()
                before += store.statements(records)
        found = self.broker.lease_now(names, limit, deliveries, before)
        return self.broker.wait_for(names, limit, wait, found)


def _not_a_connection(connection: object, kind: str) -> ConfigurationError:
    return ConfigurationError(
        f"connection= takes a psycopg 3 connection ({kind}), got {type(connection).__name__}"
    )
