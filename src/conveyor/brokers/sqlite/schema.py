"""The SQLite broker's tables (by schema version) and the statements of its hot path."""

from __future__ import annotations

from ...kv.sqlite import Tables
from ...streams.sqlite import MIGRATION as STREAMS_MIGRATION

#: ``conveyor_messages.state``.
READY, LEASED, DELAYED = 0, 1, 2

MIGRATIONS = [
    (
        """CREATE TABLE conveyor_messages (
            seq INTEGER PRIMARY KEY,
            ns TEXT NOT NULL,
            id TEXT NOT NULL,
            queue TEXT NOT NULL,
            priority INTEGER NOT NULL,
            body BLOB NOT NULL,
            state INTEGER NOT NULL,
            due REAL,
            token INTEGER,
            deliveries INTEGER NOT NULL DEFAULT 0
        )""",
        "CREATE INDEX conveyor_messages_ready "
        "ON conveyor_messages (ns, queue, priority DESC, seq) WHERE state = 0",
        "CREATE INDEX conveyor_messages_leased ON conveyor_messages (ns, due) WHERE state = 1",
        "CREATE INDEX conveyor_messages_delayed ON conveyor_messages (ns, due) WHERE state = 2",
        """CREATE TABLE conveyor_dead (
            seq INTEGER PRIMARY KEY,
            ns TEXT NOT NULL,
            id TEXT NOT NULL,
            queue TEXT NOT NULL,
            priority INTEGER NOT NULL,
            body BLOB NOT NULL,
            reason TEXT NOT NULL,
            detail TEXT NOT NULL,
            dead_at REAL NOT NULL,
            deliveries INTEGER NOT NULL
        )""",
        "CREATE INDEX conveyor_dead_id ON conveyor_dead (ns, id)",
        "CREATE TABLE conveyor_revoked (ns TEXT NOT NULL, id TEXT NOT NULL, "
        "expires REAL NOT NULL, PRIMARY KEY (ns, id)) WITHOUT ROWID",
        "CREATE TABLE conveyor_values (ns TEXT NOT NULL, key TEXT NOT NULL, "
        "value BLOB NOT NULL, expires REAL, PRIMARY KEY (ns, key)) WITHOUT ROWID",
    ),
    # v2: join sets of the broker's key/value storage (``KeyValue.join``).
    (
        "CREATE TABLE conveyor_sets (ns TEXT NOT NULL, key TEXT NOT NULL, "
        "member TEXT NOT NULL, PRIMARY KEY (ns, key, member)) WITHOUT ROWID",
        "CREATE TABLE conveyor_set_expiry (ns TEXT NOT NULL, key TEXT NOT NULL, "
        "expires REAL, PRIMARY KEY (ns, key)) WITHOUT ROWID",
    ),
    # v3: ids published lately (``publish()`` is idempotent by message id for a while).
    (
        "CREATE TABLE conveyor_published (ns TEXT NOT NULL, id TEXT NOT NULL, "
        "expires REAL NOT NULL, PRIMARY KEY (ns, id)) WITHOUT ROWID",
        "CREATE INDEX conveyor_published_expires ON conveyor_published (expires)",
    ),
    # v4: bounded streams (events, remote control): ``conveyor.streams.sqlite``.
    STREAMS_MIGRATION,
    # v5: messages the sweep dead-lettered or purge deleted, until a worker did their
    # bookkeeping (``Broker.take_departures``).
    (
        "CREATE TABLE conveyor_departures (seq INTEGER PRIMARY KEY, ns TEXT NOT NULL, "
        "id TEXT NOT NULL, queue TEXT NOT NULL, body BLOB NOT NULL, reason TEXT NOT NULL, "
        "claimed REAL NOT NULL DEFAULT 0)",
        "CREATE INDEX conveyor_departures_ns ON conveyor_departures (ns, seq)",
    ),
    # v6: counts per queue, state and priority read indexes only (``counts.py``): the ready
    # and delayed indexes hold every column the counts read (SQLite 3.40 counts a partial
    # index as covering only when it holds the column of its WHERE too); dead letters get one.
    (
        "DROP INDEX conveyor_messages_ready",
        "CREATE INDEX conveyor_messages_ready "
        "ON conveyor_messages (ns, queue, priority DESC, seq, state) WHERE state = 0",
        "DROP INDEX conveyor_messages_delayed",
        "CREATE INDEX conveyor_messages_delayed "
        "ON conveyor_messages (ns, due, queue, priority, state) WHERE state = 2",
        "CREATE INDEX conveyor_dead_queue ON conveyor_dead (ns, queue, priority)",
    ),
]
#: The tables of the broker's ``kv``.
KV_TABLES = Tables("conveyor_values", "conveyor_sets", "conveyor_set_expiry")

INSERT = (
    "INSERT INTO conveyor_messages (ns, id, queue, priority, body, state, due) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)
# Remember a published id; changes nothing (rowcount 0) if it is remembered and not expired.
REMEMBER = (
    "INSERT INTO conveyor_published (ns, id, expires) VALUES (?, ?, ?) "
    "ON CONFLICT (ns, id) DO UPDATE SET expires = excluded.expires "
    "WHERE conveyor_published.expires <= ?"
)
# Each leased row says whether its id is revoked (the worker needs no second look).
LEASE = (
    # A count that is not an integer stays as it is, for row_problem to refuse.
    "UPDATE conveyor_messages SET state = 1, token = ?, due = ?, deliveries = "
    "CASE WHEN typeof(deliveries) = 'integer' THEN deliveries + 1 ELSE deliveries END "
    "WHERE seq IN ({pick}) RETURNING seq, id, queue, priority, body, deliveries, "
    "EXISTS (SELECT 1 FROM conveyor_revoked AS r WHERE r.ns = conveyor_messages.ns "
    "AND r.id = conveyor_messages.id AND r.expires > ?)"
)
ACK = "DELETE FROM conveyor_messages WHERE state = 1 AND token = ? AND seq IN ({seqs})"
PICK_ONE = (
    "SELECT seq FROM conveyor_messages WHERE ns = ? AND state = 0 AND queue = ? "
    "ORDER BY priority DESC, seq LIMIT ?"
)
PICK_PART = (
    "SELECT * FROM (SELECT seq, priority FROM conveyor_messages "
    "WHERE ns = ? AND state = 0 AND queue = ? ORDER BY priority DESC, seq LIMIT ?)"
)
#: SQLite allows this many members in one compound SELECT (we stay well below).
MAX_UNION = 100
# Due messages move to the end of their queue in due order (new seqs): FIFO by ready time.
PROMOTE = (
    "INSERT INTO conveyor_messages (ns, id, queue, priority, body, state, deliveries) "
    "SELECT ns, id, queue, priority, body, 0, deliveries FROM conveyor_messages "
    "WHERE ns = ? AND state = 2 AND due <= ? ORDER BY due, seq"
)
PROMOTED = "DELETE FROM conveyor_messages WHERE ns = ? AND state = 2 AND due <= ?"
UNLEASE = "DELETE FROM conveyor_messages WHERE seq = ? AND state = 1 AND token = ?"
BURY = (
    "INSERT INTO conveyor_dead "
    "(ns, id, queue, priority, body, reason, detail, dead_at, deliveries) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
