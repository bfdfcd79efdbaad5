"""Key/value storage in an SQLite file (``sqlite://`` brokers and result stores).

Values and claims are rows of a values table, join sets rows of a members table with one
expiry row per set; every row carries the owner's key prefix (``ns``). The owner creates the
tables in its own schema and names them in :class:`Tables` (the broker and the result store
keep theirs apart, so either can live in a file of its own). Expired rows are invisible to
reads; :meth:`SQLiteKeyValue.delete_expired` removes them inside the owner's sweep or cleanup.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

from .._sqlite import Database

if TYPE_CHECKING:
    import sqlite3

_LIVE = "(expires IS NULL OR expires > ?)"
#: Keys per statement when reading many values.
CHUNK = 500


class Tables(NamedTuple):
    """Table names of one owner: ``values (ns, key, value, expires)``, ``sets (ns, key,
    member)`` and ``set_expiry (ns, key, expires)``."""

    values: str
    sets: str
    set_expiry: str


class SQLiteKeyValue:
    """:class:`~conveyor.kv.KeyValue` in the tables ``tables`` of ``db``, rows of ``ns``."""

    def __init__(self, db: Database, ns: str, tables: Tables) -> None:
        self._db = db
        self._ns = ns
        self._tables = tables

    def claim(self, key: str, ttl: float | None = None) -> bool:
        with self._db.write() as conn:
            now = time.time()
            created = conn.execute(
                f"INSERT INTO {self._tables.values} (ns, key, value, expires) "
                "VALUES (?, ?, x'31', ?) ON CONFLICT (ns, key) DO UPDATE SET "
                "value = excluded.value, expires = excluded.expires "
                "WHERE expires IS NOT NULL AND expires <= ?",
                (self._ns, key, None if ttl is None else now + ttl, now),
            ).rowcount
        return created == 1

    def get_value(self, key: str) -> bytes | None:
        with self._db.read() as conn:
            row = conn.execute(
                f"SELECT value FROM {self._tables.values} WHERE ns = ? AND key = ? AND {_LIVE}",
                (self._ns, key, time.time()),
            ).fetchone()
        return None if row is None else _blob(row[0])

    def get_values(self, keys: Sequence[str]) -> dict[str, bytes]:
        unique = list(dict.fromkeys(keys))
        out: dict[str, bytes] = {}
        now = time.time()
        with self._db.read() as conn:
            for i in range(0, len(unique), CHUNK):  # SQLite caps the bound parameters
                chunk = unique[i : i + CHUNK]
                marks = ", ".join("?" * len(chunk))
                rows = conn.execute(
                    f"SELECT key, value FROM {self._tables.values} "
                    f"WHERE ns = ? AND key IN ({marks}) AND {_LIVE}",
                    (self._ns, *chunk, now),
                ).fetchall()
                out.update((_text(key), _blob(value)) for key, value in rows)
        return out

    def set_value(self, key: str, value: bytes, ttl: float | None = None) -> None:
        expires = None if ttl is None else time.time() + ttl
        with self._db.write() as conn:
            conn.execute(
                f"INSERT INTO {self._tables.values} (ns, key, value, expires) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (ns, key) DO UPDATE SET "
                "value = excluded.value, expires = excluded.expires",
                (self._ns, key, value, expires),
            )

    def delete_value(self, key: str) -> None:
        with self._db.write() as conn:
            for table in self._tables:
                conn.execute(f"DELETE FROM {table} WHERE ns = ? AND key = ?", (self._ns, key))

    def join(self, key: str, member: str, ttl: float | None = None) -> int:
        sets, expiry = self._tables.sets, self._tables.set_expiry
        now = time.time()
        expires = None if ttl is None else now + ttl
        with self._db.write() as conn:
            # A set whose time ran out starts again empty, as if it had been cleaned up.
            conn.execute(
                f"DELETE FROM {sets} WHERE ns = ?1 AND key = ?2 AND EXISTS ("
                f"SELECT 1 FROM {expiry} WHERE ns = ?1 AND key = ?2 AND expires <= ?3)",
                (self._ns, key, now),
            )
            conn.execute(
                f"INSERT OR IGNORE INTO {sets} (ns, key, member) VALUES (?, ?, ?)",
                (self._ns, key, member),
            )
            conn.execute(
                f"INSERT INTO {expiry} (ns, key, expires) VALUES (?, ?, ?) "
                "ON CONFLICT (ns, key) DO UPDATE SET expires = excluded.expires",
                (self._ns, key, expires),
            )
            (size,) = conn.execute(
                f"SELECT count(*) FROM {sets} WHERE ns = ? AND key = ?", (self._ns, key)
            ).fetchone()
        return int(size)

    def values(self, prefix: str) -> dict[str, bytes]:
        params: list[object] = [self._ns, time.time()]
        where = ""
        if prefix:  # a range of the primary key, not a LIKE (which would need escaping)
            where, params = "AND key >= ?", [*params, prefix]
        upper = _after_prefix(prefix)
        if upper is not None:
            where, params = f"{where} AND key < ?", [*params, upper]
        with self._db.read() as conn:
            rows = conn.execute(
                f"SELECT key, value FROM {self._tables.values} WHERE ns = ? AND {_LIVE} {where}",
                params,
            ).fetchall()
        found = {_text(key): _blob(value) for key, value in rows}
        return {key: value for key, value in found.items() if key.startswith(prefix)}

    # -- owned locks (conveyor.kv.locks): each one write transaction ------------------------
    def put_new(self, key: str, value: bytes, ttl: float | None = None) -> bytes | None:
        values = self._tables.values
        with self._db.write() as conn:
            now = time.time()
            row = conn.execute(
                f"SELECT value FROM {values} WHERE ns = ? AND key = ? AND {_LIVE}",
                (self._ns, key, now),
            ).fetchone()
            if row is not None:
                return _blob(row[0])
            conn.execute(
                f"INSERT INTO {values} (ns, key, value, expires) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (ns, key) DO UPDATE SET "
                "value = excluded.value, expires = excluded.expires",
                (self._ns, key, value, None if ttl is None else now + ttl),
            )
        return None

    def swap(self, key: str, expected: bytes, value: bytes, ttl: float | None = None) -> bool:
        with self._db.write() as conn:
            now = time.time()
            changed = conn.execute(
                f"UPDATE {self._tables.values} SET value = ?, expires = ? "
                f"WHERE ns = ? AND key = ? AND value = ? AND {_LIVE}",
                (value, None if ttl is None else now + ttl, self._ns, key, expected, now),
            ).rowcount
        return changed == 1

    def delete_if(self, key: str, expected: bytes) -> bool:
        with self._db.write() as conn:
            deleted = conn.execute(
                f"DELETE FROM {self._tables.values} "
                f"WHERE ns = ? AND key = ? AND value = ? AND {_LIVE}",
                (self._ns, key, expected, time.time()),
            ).rowcount
        return deleted == 1

    def delete_expired(self, conn: sqlite3.Connection, now: float) -> int:
        """Delete expired values and sets of this prefix inside the caller's write
        transaction; return how many values and sets."""
        values, sets, expiry = self._tables
        removed = conn.execute(
            f"DELETE FROM {values} WHERE ns = ? AND expires <= ?", (self._ns, now)
        ).rowcount
        conn.execute(
            f"DELETE FROM {sets} WHERE ns = ?1 AND key IN "
            f"(SELECT key FROM {expiry} WHERE ns = ?1 AND expires <= ?2)",
            (self._ns, now),
        )
        removed += conn.execute(
            f"DELETE FROM {expiry} WHERE ns = ? AND expires <= ?", (self._ns, now)
        ).rowcount
        return int(removed)


def _blob(value: object) -> bytes:
    if type(value) is bytes:
        return value
    return b"" if value is None else str(value).encode("utf-8", "surrogateescape")


def _text(value: object) -> str:
    return value if type(value) is str else ("" if value is None else str(value))


def _after_prefix(prefix: str) -> str | None:
    """The smallest string above every string starting with ``prefix`` (None: no bound)."""
    while prefix:
        last = ord(prefix[-1])
        if last < 0x10FFFF and not 0xD7FF <= last < 0xDFFF:
            return prefix[:-1] + chr(last + 1)
        prefix = prefix[:-1]
    return None
