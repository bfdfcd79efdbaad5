"""Storing result records and settling messages, in that order.

A worker finishing a task stores its result record and acks its message; a producer stores a
QUEUED record and publishes. Both orders are fixed (records first: a crash in between leads to
a redelivery or a duplicate QUEUED record, never to a message acked without its result).

:class:`Settlement` does this for any broker and result store with the broker's queue
operations. A broker that can do better has a settlement of its own, which
:func:`open_settlement` picks: the Redis, SQLite and PostgreSQL ones ack with the next lease
(one script call, one transaction) and, when the result store lives on the same server, file
or database, write the records in that same round trip.
"""

from __future__ import annotations

from .._redis_urls import REDIS_SCHEMES
from ..brokers import scheme_of
from ..brokers.base import Broker
from ..results.base import ResultStore
from .base import Settlement

_POSTGRES_SCHEMES = ("postgresql", "postgres")


def open_settlement(broker: Broker, results: ResultStore) -> Settlement:
    """The settlement for ``broker`` and ``results``: the broker's own if it has one (it
    looks at ``results`` to see whether the records can join its round trips), else the
    generic :class:`Settlement`."""
    if scheme_of(broker.url) == "sqlite":
        # Imported here, not above: a worker on another broker never loads SQLite's modules.
        from ..brokers.sqlite.broker import SQLiteBroker
        from .sqlite import SQLiteSettlement

        if isinstance(broker, SQLiteBroker):
            return SQLiteSettlement(broker, results)
    if scheme_of(broker.url) in REDIS_SCHEMES:
        # Imported here, not above: redis is an optional dependency.
        from ..brokers.redis import RedisBroker
        from .redis import RedisSettlement

        if isinstance(broker, RedisBroker):
            return RedisSettlement(broker, results)
    if scheme_of(broker.url) in _POSTGRES_SCHEMES:
        # Imported here, not above: psycopg is an optional dependency.
        from ..brokers.postgres import PostgresBroker
        from .postgres import PostgresSettlement

        if isinstance(broker, PostgresBroker):
            return PostgresSettlement(broker, results)
    return Settlement(broker, results)


__all__ = ["Settlement", "open_settlement"]
