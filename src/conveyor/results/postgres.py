"""PostgreSQL result store (``postgresql://``), usually in the broker's database and schema.

Records are JSON documents (``bytea``: any JSON text, including ``\\u0000``) keyed by task id,
each with an expiry time on the database clock. Storing a ready record sends ``NOTIFY
<schema>_results`` with its id, delivered at commit; ``wait()`` blocks on an event that the
store's LISTEN connection (one per process) sets for that id, and looks again at least every
``poll_interval`` (default 1 s) in case a notification was lost — no busy polling. Expired
rows are invisible to reads and deleted by ``cleanup()``.

Options come from the URL's query (``?schema=...&listen=false&migrate=false&pool_size=4``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from .._postgres import (
    DEFAULT_SCHEMA,
    Database,
    Listener,
    channel_name,
    flag,
    schema_name,
    split_url,
)
from ..brokers.base import redact_url
from ..exceptions import ResultStoreError
from ..kv.postgres import PostgresKeyValue, Tables
from ..states import READY_STATES
from .base import ResultRecord, ResultStore, decode_record, encode_record

if TYPE_CHECKING:
    from .._postgres import AsyncConn, Conn

MIGRATIONS = [
    (
        "CREATE TABLE {s}.conveyor_results (ns text NOT NULL, id text NOT NULL, "
        "record bytea NOT NULL, expires timestamptz, PRIMARY KEY (ns, id)) "
        "WITH (autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_cost_delay = 0)",
        "CREATE INDEX conveyor_results_expires ON {s}.conveyor_results (expires) "
        "WHERE expires IS NOT NULL",
        "CREATE TABLE {s}.conveyor_result_values (ns text NOT NULL, key text NOT NULL, "
        "value bytea NOT NULL, expires timestamptz, PRIMARY KEY (ns, key))",
        "CREATE TABLE {s}.conveyor_result_sets (ns text NOT NULL, key text NOT NULL, "
        "member text NOT NULL, PRIMARY KEY (ns, key, member))",
        "CREATE TABLE {s}.conveyor_result_set_expiry (ns text NOT NULL, key text NOT NULL, "
        "expires timestamptz, PRIMARY KEY (ns, key))",
    ),
]
KV_TABLES = Tables("conveyor_result_values", "conveyor_result_sets", "conveyor_result_set_expiry")

_LIVE = "(expires IS NULL OR expires > now())"
# One statement: upsert the records, then wake the waiters of the ready ones (at commit).
UPSERT = """
WITH stored AS (
    INSERT INTO {s}.conveyor_results (ns, id, record, expires)
    SELECT %(ns)s, id, record, now() + make_interval(secs => %(expires)s::float8)
    FROM unnest(%(ids)b::text[], %(records)b::bytea[]) AS r (id, record)
    ON CONFLICT (ns, id) DO UPDATE SET record = excluded.record, expires = excluded.expires
)
SELECT pg_notify(%(channel)s, id) FROM unnest(%(ready)s::text[]) AS id
"""

#: A statement with its parameters.
Statement = tuple[str, dict[str, Any]]


class PostgresResultStore(ResultStore):
    schemes = ("postgresql", "postgres")

    #: Longest pause (s) between two looks while ``wait()`` waits (lost notifications).
    poll_interval = 1.0

    def __init__(
        self,
        url: str,
        *,
        expires: float | None = 86400.0,
        key_prefix: str = "conveyor",
    ) -> None:
        super().__init__(url, expires=expires, key_prefix=key_prefix)
        _, params = split_url(url)
        self.schema = schema_name(params.get("schema", DEFAULT_SCHEMA))
        self.ns = key_prefix
        self.listen = flag(params.get("listen", True), "listen")
        self.db = Database(
            url,
            component="results",
            migrations=MIGRATIONS,
            error=ResultStoreError,
            schema=self.schema,
            migrate=flag(params.get("migrate", True), "migrate"),
            pool_size=int(params.get("pool_size", 4)),
        )
        self.kv: PostgresKeyValue = PostgresKeyValue(self.db, self.ns, KV_TABLES)
        self.channel = channel_name(self.schema, "results")
        self._upsert = UPSERT.format(s=self.schema)
        self._waiters: dict[str, set[threading.Event]] = {}
        self._lock = threading.Lock()
        self._listener = Listener(self.db, self.channel, self._wake)

    def __repr__(self) -> str:
        return f"<PostgresResultStore {redact_url(self.url)} schema={self.schema}>"

    def migrate(self) -> int:
        """Create or upgrade the store's tables now; return the schema version."""
        with self.db.connect(connect_timeout=10) as conn:
            return self.db.ensure_schema(conn, force=True)

    def _wake(self, task_id: str | None) -> None:
        with self._lock:
            if task_id is None:
                events = [e for group in self._waiters.values() for e in group]
            else:
                events = list(self._waiters.get(task_id, ()))
        for event in events:
            event.set()

    # -- records ---------------------------------------------------------------------------
    def statements(self, records: Sequence[ResultRecord]) -> list[Statement]:
        """The statements of :meth:`store` (a settlement runs them in its own transaction)."""
        if not records:
            return []
        latest = {record.id: encode_record(record) for record in records}
        ready = list(dict.fromkeys(r.id for r in records if r.state in READY_STATES))
        params = {
            "ns": self.ns,
            "expires": self.expires,
            "ids": list(latest),
            "records": list(latest.values()),
            "channel": self.channel,
            "ready": ready,
        }
        return [(self._upsert, params)]

    def store(self, records: Sequence[ResultRecord]) -> None:
        self.store_on(None, records)

    def store_on(self, conn: Conn | None, records: Sequence[ResultRecord]) -> None:
        """Store ``records`` with the caller's connection (inside its transaction), or in a
        transaction of this store's own when ``conn`` is None."""
        statements = self.statements(records)
        if not statements:
            return
        if conn is not None:
            for statement, params in statements:
                conn.execute(statement, params)
            return
        with self.db.connection() as own:
            for statement, params in statements:
                own.execute(statement, params)

    async def astore_on(self, conn: AsyncConn, records: Sequence[ResultRecord]) -> None:
        """:meth:`store_on` with an application's async connection (in its transaction)."""
        for statement, params in self.statements(records):
            await conn.execute(statement, params)

    def get(self, task_id: str) -> ResultRecord | None:
        return self.get_many([task_id])[0]

    def get_many(self, task_ids: Sequence[str]) -> list[ResultRecord | None]:
        unique = list(dict.fromkeys(task_ids))
        if not unique:
            return []
        with self.db.connection() as conn:
            rows = conn.execute(
                f"SELECT id, record FROM {self.schema}.conveyor_results WHERE ns = %s "
                f"AND id = ANY(%s::text[]) AND {_LIVE}",
                (self.ns, unique),
            ).fetchall()
        found = {str(id_): data for id_, data in rows}
        return [
            None if (data := found.get(task_id)) is None else self._decode(task_id, data)
            for task_id in task_ids
        ]

    def _decode(self, task_id: str, data: object) -> ResultRecord:
        try:
            return decode_record(bytes(data))  # type: ignore[call-overload]  # psycopg row value: a bytea column
        except (msgspec.DecodeError, TypeError, ValueError) as exc:
            raise ResultStoreError(
                f"the result record of task {task_id} in schema {self.schema} is corrupt: {exc}"
            ) from exc

    def wait(self, task_id: str, timeout: float | None) -> ResultRecord | None:
        if self.listen:
            self._listener.ensure()
        deadline = None if timeout is None else time.monotonic() + timeout
        event = threading.Event()
        with self._lock:
            self._waiters.setdefault(task_id, set()).add(event)
        try:
            while True:
                event.clear()
                record = self.get(task_id)
                if record is not None and record.ready:
                    return record
                remaining = self.poll_interval if deadline is None else deadline - time.monotonic()
                if remaining <= 0:
                    return record
                event.wait(min(self.poll_interval, remaining))
        finally:
            with self._lock:
                group = self._waiters.get(task_id)
                if group is not None:
                    group.discard(event)
                    if not group:
                        del self._waiters[task_id]

    def forget(self, task_ids: Sequence[str]) -> None:
        unique = list(dict.fromkeys(task_ids))
        if unique:
            with self.db.connection() as conn:
                conn.execute(
                    f"DELETE FROM {self.schema}.conveyor_results WHERE ns = %s "
                    "AND id = ANY(%s::text[])",
                    (self.ns, unique),
                )

    def cleanup(self) -> int:
        with self.db.transaction() as conn:
            cursor = conn.execute(
                f"DELETE FROM {self.schema}.conveyor_results WHERE ns = %s AND expires <= now()",
                (self.ns,),
            )
            self.kv.delete_expired(conn)
        return max(cursor.rowcount, 0)

    def close(self) -> None:
        self._listener.close()
        self.db.close()
