"""The state of a :class:`~conveyor.brokers.postgres.PostgresBroker` (its database, listener and
wake-ups) and what its parts share: statements with the schema filled in, notifications,
burials."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from ..._postgres import (
    DEFAULT_SCHEMA,
    Database,
    Listener,
    channel_name,
    flag,
    schema_name,
    split_url,
)
from ...exceptions import BrokerError, ConfigurationError
from ...kv.postgres import PostgresKeyValue
from ...limits.postgres import PostgresLimits
from ...streams.postgres import PostgresStreams
from ..base import Broker, BrokerOptions, redact_url
from . import statements as sql
from .rows import as_float
from .schema import KV_TABLES, MIGRATIONS

if TYPE_CHECKING:
    from ..._postgres import Conn


Params = dict[str, Any]


class PostgresCore(Broker):
    """The state of a :class:`~conveyor.brokers.postgres.PostgresBroker` and its shared helpers."""

    def __init__(self, url: str, options: BrokerOptions | None = None) -> None:
        super().__init__(url, options)
        transport = self.options.transport_options
        _, params = split_url(url)
        self.schema = schema_name(params.get("schema", transport.get("schema", DEFAULT_SCHEMA)))
        #: Rows of this broker carry its key prefix, so apps can share one schema.
        self.ns = self.options.key_prefix
        #: Longest wait (s) between two looks while idle: the most a lost notification costs.
        self.poll_interval = float(transport.get("poll_interval", 1.0))
        if not self.poll_interval > 0:
            raise ConfigurationError("poll_interval must be a positive number of seconds")
        #: Whether idle consumers LISTEN for new messages (off behind a transaction pooler
        #: that cannot hold a session: then they look every ``poll_interval``).
        self.listen = flag(params.get("listen", transport.get("listen", True)), "listen")
        self.db = Database(
            url,
            component="broker",
            migrations=MIGRATIONS,
            error=BrokerError,
            schema=self.schema,
            migrate=flag(params.get("migrate", transport.get("migrate", True)), "migrate"),
            pool_size=int(params.get("pool_size", transport.get("pool_size", 4))),
        )
        self.kv: PostgresKeyValue = PostgresKeyValue(self.db, self.ns, KV_TABLES)
        self.limits: PostgresLimits = PostgresLimits(
            self.db, self.ns, f"{self.schema}.{KV_TABLES.values}"
        )
        self.channel = channel_name(self.schema, "messages")
        self._sql: dict[str, str] = {}
        # Notifications and this object's own publishes wake its waiting consumers.
        self._arrived = threading.Condition()
        self._arrivals = 0
        self._listener = Listener(self.db, self.channel, self._wake)
        #: When (monotonic) a lease must next promote due delayed messages.
        self._promote_at = 0.0
        self._streams = PostgresStreams(
            self.db, self.ns, listen=self.listen, poll_interval=self.poll_interval
        )

    @property
    def streams(self) -> PostgresStreams:
        return self._streams

    def __repr__(self) -> str:
        return f"<PostgresBroker {redact_url(self.url)} schema={self.schema}>"

    def q(self, template: str, **parts: str) -> str:
        """``template`` with the schema (and ``parts``) filled in, kept for reuse."""
        key = template if not parts else template + repr(sorted(parts.items()))
        found = self._sql.get(key)
        if found is None:
            found = self._sql[key] = template.format(s=self.schema, **parts)
        return found

    def wake_local(self) -> None:
        """Wake this process's waiting consumers (after a publish it committed)."""
        self._wake()

    def _wake(self, _queue: str | None = None) -> None:
        with self._arrived:
            self._arrivals += 1
            self._arrived.notify_all()

    def migrate(self) -> int:
        """Create or upgrade the broker's tables now; return the schema version."""
        with self.db.connect(connect_timeout=10) as conn:
            return self.db.ensure_schema(conn, force=True)

    def _notify_queues(self, conn: Conn, queues: set[str]) -> None:
        if queues:
            conn.execute(sql.WAKE, {"channel": self.channel, "queues": sorted(queues)})

    def _bury(
        self,
        seq: int,
        token: int,
        id_: str,
        queue: str,
        priority: int,
        body: bytes,
        reason: str,
        detail: str,
        deliveries: int,
    ) -> None:
        with self.db.connection() as conn:
            conn.execute(
                self.q(sql.BURY_HELD),
                {
                    "seq": seq,
                    "token": token,
                    "ns": self.ns,
                    "id": id_,
                    "queue": queue,
                    "priority": priority,
                    "body": body,
                    "reason": reason,
                    "detail": detail.replace("\x00", "\\x00"),
                    "deliveries": deliveries,
                },
            )

    def time(self) -> float:
        with self.db.connection() as conn:
            row = conn.execute("SELECT extract(epoch FROM clock_timestamp())::float8").fetchone()
        return as_float(None if row is None else row[0])

    def close(self) -> None:
        self._listener.close()
        self._streams.close()
        self.db.close()
