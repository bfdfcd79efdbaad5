"""Limits in the SQLite broker's file: rows of its key/value table.

A bucket is the row ``limit-rate:<key>`` holding its next token's due time (expiring when the
bucket is full again); a slot is the row ``limit-slot:<key>\\x1f<holder>`` expiring at its
deadline. Every change runs in one ``BEGIN IMMEDIATE`` transaction, which serialises all the
processes on the file, so a read-count-write is atomic. Expired rows are invisible here and
deleted by the broker's sweep with its other expired values.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from .._sqlite import Database
from .store import Grant, book, bucket_name, slot_member, slot_prefix

_LIVE = "(expires IS NULL OR expires > ?)"


class SQLiteLimits:
    """:class:`~conveyor.limits.store.LimitStore` in ``table`` (``ns, key, value, expires``)."""

    def __init__(self, db: Database, ns: str, table: str) -> None:
        self._db = db
        self._ns = ns
        self._table = table

    def take(
        self, key: str, interval: float, tolerance: float, after: float = 0.0, horizon: float = 0.0
    ) -> Grant:
        name, t = bucket_name(key), self._table
        with self._db.write() as conn:
            now = time.time()
            row = conn.execute(
                f"SELECT value FROM {t} WHERE ns = ? AND key = ? AND {_LIVE}", (self._ns, name, now)
            ).fetchone()
            tat = float(row[0]) if row is not None else None
            new_tat, grant = book(tat, now, interval, tolerance, after, horizon)
            if new_tat is not None:
                conn.execute(
                    f"INSERT INTO {t} (ns, key, value, expires) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (ns, key) DO UPDATE SET value = excluded.value, "
                    "expires = excluded.expires",
                    (self._ns, name, repr(new_tat).encode(), new_tat),
                )
            return grant

    def acquire(self, key: str, limit: int, holder: str, ttl: float) -> bool:
        low, high = _range(key)
        member, t = slot_member(key, holder), self._table
        with self._db.write() as conn:
            now = time.time()
            others = conn.execute(
                f"SELECT count(*) FROM {t} WHERE ns = ? AND key >= ? AND key < ? AND key != ? "
                f"AND {_LIVE}",
                (self._ns, low, high, member, now),
            ).fetchone()[0]
            if others >= limit:
                return False
            conn.execute(
                f"INSERT INTO {t} (ns, key, value, expires) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (ns, key) DO UPDATE SET expires = excluded.expires",
                (self._ns, member, b"", now + ttl),
            )
            return True

    def release(self, key: str, holder: str) -> None:
        with self._db.write() as conn:
            conn.execute(
                f"DELETE FROM {self._table} WHERE ns = ? AND key = ?",
                (self._ns, slot_member(key, holder)),
            )

    def renew(self, held: Sequence[tuple[str, str]], ttl: float) -> None:
        if not held:
            return
        with self._db.write() as conn:
            now = time.time()
            conn.executemany(
                f"UPDATE {self._table} SET expires = ? WHERE ns = ? AND key = ? AND {_LIVE}",
                [(now + ttl, self._ns, slot_member(k, h), now) for k, h in held],
            )

    def holders(self, key: str) -> list[str]:
        low, high = _range(key)
        with self._db.read() as conn:
            rows = conn.execute(
                f"SELECT key FROM {self._table} WHERE ns = ? AND key >= ? AND key < ? AND {_LIVE}",
                (self._ns, low, high, time.time()),
            ).fetchall()
        return sorted(str(r[0])[len(low) :] for r in rows)


def _range(key: str) -> tuple[str, str]:
    """The key range of ``key``'s slot rows (the separator is a control character, which
    limit keys never hold)."""
    low = slot_prefix(key)
    return low, low[:-1] + chr(ord(low[-1]) + 1)
