"""Limits on a key/value store's server: for brokers that hold messages only (RabbitMQ keeps
its key/value data in the result store's backend, ``kv_url``).

The store's own connections and table or key prefix carry the limits, with the same atomic
operations as the brokers of those backends (:mod:`.redis`, :mod:`.sqlite`,
:mod:`.postgres`). A key/value store of another kind (the Django ORM's) keeps none.
"""

from __future__ import annotations

from ..kv import KeyValue
from ..kv.postgres import PostgresKeyValue
from ..kv.sqlite import SQLiteKeyValue
from .postgres import PostgresLimits
from .sqlite import SQLiteLimits
from .store import LimitStore


def limits_on(kv: KeyValue) -> LimitStore | None:
    """A limit store beside ``kv`` (same server, connections and key prefix), or None."""
    if isinstance(kv, SQLiteKeyValue):
        return SQLiteLimits(kv._db, kv._ns, kv._tables.values)
    if isinstance(kv, PostgresKeyValue):
        return PostgresLimits(kv._db, kv._ns, kv._values)
    if type(kv).__module__ == "conveyor.kv.redis":
        # Deferred: redis is an optional dependency (loaded already if kv is Redis's).
        from ..kv.redis import RedisKeyValue
        from .redis import RedisLimits

        if isinstance(kv, RedisKeyValue):
            values = kv._values
            return RedisLimits(kv._client, kv._errors, lambda kind, name: f"{values}{kind}:{name}")
    return None
