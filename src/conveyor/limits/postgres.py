"""Limits in the PostgreSQL broker's schema: rows of its key/value table.

The same rows as the SQLite store (``limit-rate:<key>``, ``limit-slot:<key>\\x1f<holder>``),
changed in one short transaction that first takes a transaction-scoped advisory lock on the
limit's key, so concurrent takes and acquires of one limit queue up on the server while other
limits go on. Times are the server's (``clock_timestamp()``, not the transaction's ``now()``:
a take that waited for the lock sees the time it got it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

from .store import Grant, book, bucket_name, slot_member, slot_prefix

if TYPE_CHECKING:
    from .._postgres import Conn, Database

_NOW = "extract(epoch FROM clock_timestamp())::float8"
#: First half of the two-part advisory lock keys of limits (a fixed tag), so they never meet
#: the one-part keys of migrations or any other user of advisory locks.
_LOCK_CLASS = 0x11A175


class PostgresLimits:
    """:class:`~conveyor.limits.store.LimitStore` in ``table`` (``schema.conveyor_values``)."""

    def __init__(self, db: Database, ns: str, table: str) -> None:
        self._db = db
        self._ns = ns
        self._table = table

    def _lock(self, conn: Conn, key: str) -> float:
        row = conn.execute(
            f"SELECT pg_advisory_xact_lock(%s, hashtext(%s)), {_NOW}",
            (_LOCK_CLASS, f"{self._ns}\x1f{key}"),
        ).fetchone()
        assert row is not None
        return float(cast("float", row[1]))

    def take(
        self, key: str, interval: float, tolerance: float, after: float = 0.0, horizon: float = 0.0
    ) -> Grant:
        name, t = bucket_name(key), self._table
        with self._db.transaction() as conn:
            now = self._lock(conn, key)
            row = conn.execute(
                f"SELECT value FROM {t} WHERE ns = %s AND key = %s "
                "AND (expires IS NULL OR expires > to_timestamp(%s))",
                (self._ns, name, now),
            ).fetchone()
            tat = float(bytes(cast("bytes", row[0]))) if row is not None else None
            new_tat, grant = book(tat, now, interval, tolerance, after, horizon)
            if new_tat is not None:
                conn.execute(
                    f"INSERT INTO {t} (ns, key, value, expires) VALUES (%s, %s, %s, "
                    "to_timestamp(%s)) ON CONFLICT (ns, key) DO UPDATE SET value = excluded.value, "
                    "expires = excluded.expires",
                    (self._ns, name, repr(new_tat).encode(), new_tat),
                )
            return grant

    def acquire(self, key: str, limit: int, holder: str, ttl: float) -> bool:
        member, t = slot_member(key, holder), self._table
        with self._db.transaction() as conn:
            now = self._lock(conn, key)
            row = conn.execute(
                f"SELECT count(*) FROM {t} WHERE ns = %s AND starts_with(key, %s) "
                "AND key != %s AND expires > to_timestamp(%s)",
                (self._ns, slot_prefix(key), member, now),
            ).fetchone()
            if row is not None and cast("int", row[0]) >= limit:
                return False
            conn.execute(
                f"INSERT INTO {t} (ns, key, value, expires) VALUES (%s, %s, '', "
                "to_timestamp(%s)) ON CONFLICT (ns, key) DO UPDATE SET expires = excluded.expires",
                (self._ns, member, now + ttl),
            )
            return True

    def release(self, key: str, holder: str) -> None:
        with self._db.connection() as conn:
            conn.execute(
                f"DELETE FROM {self._table} WHERE ns = %s AND key = %s",
                (self._ns, slot_member(key, holder)),
            )

    def renew(self, held: Sequence[tuple[str, str]], ttl: float) -> None:
        if not held:
            return
        with self._db.connection() as conn:
            conn.execute(
                f"UPDATE {self._table} SET expires = clock_timestamp() + make_interval(secs => %s) "
                "WHERE ns = %s AND key = ANY(%s) AND expires > clock_timestamp()",
                (ttl, self._ns, [slot_member(k, h) for k, h in held]),
            )

    def holders(self, key: str) -> list[str]:
        prefix = slot_prefix(key)
        with self._db.connection() as conn:
            rows = conn.execute(
                f"SELECT key FROM {self._table} WHERE ns = %s AND starts_with(key, %s) "
                "AND expires > clock_timestamp()",
                (self._ns, prefix),
            ).fetchall()
        return sorted(str(r[0])[len(prefix) :] for r in rows)
