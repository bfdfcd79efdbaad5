"""Key/value storage in PostgreSQL (``postgresql://`` brokers and result stores).

The same layout as the SQLite one: values and claims are rows of a values table, join sets
rows of a members table with one expiry row per set; every row carries the owner's key prefix
(``ns``), and the owner creates the tables in its schema and names them in :class:`Tables`.
Times are the database's (``now()``). Expired rows are invisible to reads;
:meth:`PostgresKeyValue.delete_expired` removes them inside the owner's sweep or cleanup.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from .._postgres import Conn, Database

_LIVE = "(expires IS NULL OR expires > now())"


class Tables(NamedTuple):
    """Table names of one owner (in its schema): ``values (ns, key, value, expires)``,
    ``sets (ns, key, member)`` and ``set_expiry (ns, key, expires)``."""

    values: str
    sets: str
    set_expiry: str


class PostgresKeyValue:
    """:class:`~conveyor.kv.KeyValue` in the tables ``tables`` of ``db``, rows of ``ns``."""

    def __init__(self, db: Database, ns: str, tables: Tables) -> None:
        self._db = db
        self._ns = ns
        s = db.schema
        self._values = f"{s}.{tables.values}"
        self._sets = f"{s}.{tables.sets}"
        self._expiry = f"{s}.{tables.set_expiry}"

    def claim(self, key: str, ttl: float | None = None) -> bool:
        with self._db.connection() as conn:
            created = conn.execute(
                f"INSERT INTO {self._values} AS v (ns, key, value, expires) "
                "VALUES (%s, %s, '\\x31', now() + make_interval(secs => %s)) "
                "ON CONFLICT (ns, key) DO UPDATE SET value = excluded.value, "
                "expires = excluded.expires WHERE v.expires IS NOT NULL AND v.expires <= now()",
                (self._ns, key, ttl),
            ).rowcount
        return created == 1

    def get_value(self, key: str) -> bytes | None:
        with self._db.connection() as conn:
            row = conn.execute(
                f"SELECT value FROM {self._values} WHERE ns = %s AND key = %s AND {_LIVE}",
                (self._ns, key),
            ).fetchone()
        return None if row is None else _blob(row[0])

    def get_values(self, keys: Sequence[str]) -> dict[str, bytes]:
        with self._db.connection() as conn:
            rows = conn.execute(
                f"SELECT key, value FROM {self._values} WHERE ns = %s AND key = ANY(%s) "
                f"AND {_LIVE}",
                (self._ns, list(dict.fromkeys(keys))),
            ).fetchall()
        return {str(key): _blob(value) for key, value in rows}

    def set_value(self, key: str, value: bytes, ttl: float | None = None) -> None:
        with self._db.connection() as conn:
            conn.execute(
                f"INSERT INTO {self._values} (ns, key, value, expires) "
                "VALUES (%s, %s, %s, now() + make_interval(secs => %s)) "
                "ON CONFLICT (ns, key) DO UPDATE SET value = excluded.value, "
                "expires = excluded.expires",
                (self._ns, key, value, ttl),
            )

    def delete_value(self, key: str) -> None:
        with self._db.transaction() as conn:
            for table in (self._values, self._sets, self._expiry):
                conn.execute(f"DELETE FROM {table} WHERE ns = %s AND key = %s", (self._ns, key))

    def join(self, key: str, member: str, ttl: float | None = None) -> int:
        args = {"ns": self._ns, "key": key, "member": member, "ttl": ttl}
        with self._db.transaction() as conn:
            # Joins of one set run one after the other, so each counts the others' members.
            conn.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended(%(ns)s || ':' || %(key)s, 7))", args
            )
            # A set whose time ran out starts again empty, as if it had been cleaned up.
            conn.execute(
                f"DELETE FROM {self._sets} WHERE ns = %(ns)s AND key = %(key)s AND EXISTS ("
                f"SELECT 1 FROM {self._expiry} WHERE ns = %(ns)s AND key = %(key)s "
                "AND expires <= now())",
                args,
            )
            conn.execute(
                f"INSERT INTO {self._sets} (ns, key, member) VALUES (%(ns)s, %(key)s, %(member)s) "
                "ON CONFLICT DO NOTHING",
                args,
            )
            conn.execute(
                f"INSERT INTO {self._expiry} (ns, key, expires) "
                "VALUES (%(ns)s, %(key)s, now() + make_interval(secs => %(ttl)s)) "
                "ON CONFLICT (ns, key) DO UPDATE SET expires = excluded.expires",
                args,
            )
            cursor = conn.execute(
                f"SELECT count(*) FROM {self._sets} WHERE ns = %(ns)s AND key = %(key)s", args
            )
        row = cursor.fetchone()
        return int(row[0]) if row else 0  # type: ignore[call-overload]  # psycopg row: tuple[object, ...]; an integer column

    def values(self, prefix: str) -> dict[str, bytes]:
        with self._db.connection() as conn:
            rows = conn.execute(
                f"SELECT key, value FROM {self._values} WHERE ns = %s AND {_LIVE} "
                "AND left(key, length(%s)) = %s",
                (self._ns, prefix, prefix),
            ).fetchall()
        return {str(key): _blob(value) for key, value in rows}

    # -- owned locks (conveyor.kv.locks): each one statement -----------------------------
    def put_new(self, key: str, value: bytes, ttl: float | None = None) -> bytes | None:
        while True:
            with self._db.connection() as conn:
                created = conn.execute(
                    f"INSERT INTO {self._values} AS v (ns, key, value, expires) "
                    "VALUES (%s, %s, %s, now() + make_interval(secs => %s)) "
                    "ON CONFLICT (ns, key) DO UPDATE SET value = excluded.value, "
                    "expires = excluded.expires "
                    "WHERE v.expires IS NOT NULL AND v.expires <= now()",
                    (self._ns, key, value, ttl),
                ).rowcount
                if created == 1:
                    return None
                row = conn.execute(
                    f"SELECT value FROM {self._values} WHERE ns = %s AND key = %s AND {_LIVE}",
                    (self._ns, key),
                ).fetchone()
            if row is not None:
                return _blob(row[0])
            # deleted or expired between the two statements: try again

    def swap(self, key: str, expected: bytes, value: bytes, ttl: float | None = None) -> bool:
        with self._db.connection() as conn:
            changed = conn.execute(
                f"UPDATE {self._values} SET value = %s, "
                "expires = now() + make_interval(secs => %s) "
                f"WHERE ns = %s AND key = %s AND value = %s AND {_LIVE}",
                (value, ttl, self._ns, key, expected),
            ).rowcount
        return changed == 1

    def delete_if(self, key: str, expected: bytes) -> bool:
        with self._db.connection() as conn:
            deleted = conn.execute(
                f"DELETE FROM {self._values} WHERE ns = %s AND key = %s AND value = %s AND {_LIVE}",
                (self._ns, key, expected),
            ).rowcount
        return deleted == 1

    def delete_expired(self, conn: Conn) -> None:
        """Delete expired values and sets of this prefix inside the caller's transaction."""
        conn.execute(f"DELETE FROM {self._values} WHERE ns = %s AND expires <= now()", (self._ns,))
        conn.execute(
            f"DELETE FROM {self._sets} WHERE ns = %(ns)s AND key IN "
            f"(SELECT key FROM {self._expiry} WHERE ns = %(ns)s AND expires <= now())",
            {"ns": self._ns},
        )
        conn.execute(f"DELETE FROM {self._expiry} WHERE ns = %s AND expires <= now()", (self._ns,))


def _blob(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, memoryview | bytearray):
        return bytes(value)
    return b"" if value is None else str(value).encode("utf-8", "surrogateescape")
