"""Embedded result store (``sqlite:///path.db``), usually in the broker's file.

Records are JSON documents keyed by task id, each with an expiry time. ``wait()`` polls with
a backoff (1 ms doubling up to ``poll_interval``) and is woken at once by stores made through
the same object. Expired rows are invisible to reads and deleted by ``cleanup()``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from .._sqlite import Database, chunks, marks, path_from_url
from ..exceptions import ConfigurationError, ResultStoreError
from ..kv.sqlite import SQLiteKeyValue, Tables
from .base import PollingResultStore, ResultRecord, decode_record, encode_record

if TYPE_CHECKING:
    import sqlite3

MIGRATIONS = [
    (
        "CREATE TABLE conveyor_results (ns TEXT NOT NULL, id TEXT NOT NULL, "
        "record BLOB NOT NULL, expires REAL, PRIMARY KEY (ns, id))",
        "CREATE INDEX conveyor_results_expires ON conveyor_results (ns, expires) "
        "WHERE expires IS NOT NULL",
        "CREATE TABLE conveyor_result_values (ns TEXT NOT NULL, key TEXT NOT NULL, "
        "value BLOB NOT NULL, expires REAL, PRIMARY KEY (ns, key)) WITHOUT ROWID",
        "CREATE TABLE conveyor_result_sets (ns TEXT NOT NULL, key TEXT NOT NULL, "
        "member TEXT NOT NULL, PRIMARY KEY (ns, key, member)) WITHOUT ROWID",
        "CREATE TABLE conveyor_result_set_expiry (ns TEXT NOT NULL, key TEXT NOT NULL, "
        "expires REAL, PRIMARY KEY (ns, key)) WITHOUT ROWID",
    ),
]
KV_TABLES = Tables("conveyor_result_values", "conveyor_result_sets", "conveyor_result_set_expiry")

_LIVE = "(expires IS NULL OR expires > ?)"
_UPSERT = (
    "INSERT INTO conveyor_results (ns, id, record, expires) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (ns, id) DO UPDATE SET record = excluded.record, expires = excluded.expires"
)


class SQLiteResultStore(PollingResultStore):
    schemes = ("sqlite",)

    #: Longest pause (s) between two looks while ``wait()`` waits for another process.
    poll_interval = 0.02

    def __init__(
        self,
        url: str = "sqlite://",
        *,
        expires: float | None = 86400.0,
        key_prefix: str = "conveyor",
    ) -> None:
        super().__init__(url, expires=expires, key_prefix=key_prefix)
        if ":memory:" in url:
            raise ConfigurationError(
                "an in-memory SQLite database cannot be shared between processes; "
                "use memory:// or a file (sqlite:///conveyor.sqlite3)"
            )
        self.path = path_from_url(url)
        #: Rows of this store carry its key prefix, so apps can share one file.
        self.ns = key_prefix
        self._db = Database(
            self.path, component="results", migrations=MIGRATIONS, error=ResultStoreError
        )
        self.kv: SQLiteKeyValue = SQLiteKeyValue(self._db, self.ns, KV_TABLES)

    def __repr__(self) -> str:
        return f"<SQLiteResultStore {self.path}>"

    # -- used by SQLiteSettlement to write records in the broker's transactions ------------
    def prepare(self) -> None:
        """Make sure the tables exist (open a connection once per process)."""
        if not self._db.prepared:
            with self._db.read():
                pass

    def record_rows(self, records: Sequence[ResultRecord]) -> list[tuple[Any, ...]]:
        """The rows of ``records`` (encoded before a transaction, so it stays short)."""
        expires = None if self.expires is None else time.time() + self.expires
        return [(self.ns, record.id, encode_record(record), expires) for record in records]

    def write_rows(self, conn: sqlite3.Connection, rows: Sequence[tuple[Any, ...]]) -> None:
        """Upsert rows from :meth:`record_rows` inside the caller's transaction."""
        conn.executemany(_UPSERT, rows)

    def notify(self) -> None:
        """Wake this object's waiters."""
        self._notify_local()

    # -- records ---------------------------------------------------------------------------
    def store(self, records: Sequence[ResultRecord]) -> None:
        if not records:
            return
        rows = self.record_rows(records)
        with self._db.write() as conn:
            self.write_rows(conn, rows)
        self.notify()

    def get(self, task_id: str) -> ResultRecord | None:
        with self._db.read() as conn:
            row = conn.execute(
                f"SELECT record FROM conveyor_results WHERE ns = ? AND id = ? AND {_LIVE}",
                (self.ns, task_id, time.time()),
            ).fetchone()
        return None if row is None else self._decode(task_id, row[0])

    def get_many(self, task_ids: Sequence[str]) -> list[ResultRecord | None]:
        found: dict[str, Any] = {}
        unique = list(dict.fromkeys(task_ids))
        with self._db.read() as conn:
            for part in chunks(unique):
                found.update(
                    conn.execute(
                        "SELECT id, record FROM conveyor_results WHERE ns = ? "
                        f"AND id IN ({marks(len(part))}) AND {_LIVE}",
                        (self.ns, *part, time.time()),
                    ).fetchall()
                )
        return [
            None if (data := found.get(task_id)) is None else self._decode(task_id, data)
            for task_id in task_ids
        ]

    def _decode(self, task_id: str, data: Any) -> ResultRecord:
        try:
            return decode_record(data)
        except (msgspec.DecodeError, TypeError) as exc:
            raise ResultStoreError(
                f"the result record of task {task_id} in {self.path} is corrupt: {exc}"
            ) from exc

    def forget(self, task_ids: Sequence[str]) -> None:
        unique = list(dict.fromkeys(task_ids))
        if not unique:
            return
        with self._db.write() as conn:
            for part in chunks(unique):
                conn.execute(
                    f"DELETE FROM conveyor_results WHERE ns = ? AND id IN ({marks(len(part))})",
                    (self.ns, *part),
                )

    def cleanup(self) -> int:
        now = time.time()
        with self._db.write() as conn:
            removed = conn.execute(
                "DELETE FROM conveyor_results WHERE ns = ? AND expires <= ?", (self.ns, now)
            ).rowcount
            removed += self.kv.delete_expired(conn, now)
        return int(removed)

    def close(self) -> None:
        self._db.close()
