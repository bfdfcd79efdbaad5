"""The PostgreSQL broker's tables (by schema version). ``{s}`` stands for the schema name.

Queue tables churn (every message is inserted, updated when leased and deleted when acked), so
they carry autovacuum settings that vacuum after a small fraction of dead rows, without the
cost-based pauses that let a busy queue table bloat between runs.
"""

from __future__ import annotations

from ...kv.postgres import Tables
from ...streams.postgres import MIGRATION as STREAMS_MIGRATION

#: ``conveyor_messages.state``.
READY, LEASED, DELAYED = 0, 1, 2

#: Autovacuum settings of the tables that churn.
CHURN = (
    "autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 1000, "
    "autovacuum_vacuum_insert_scale_factor = 0.05, autovacuum_analyze_scale_factor = 0.02, "
    "autovacuum_vacuum_cost_delay = 0"
)

MIGRATIONS = [
    (
        f"""CREATE TABLE {{s}}.conveyor_messages (
            seq bigserial PRIMARY KEY,
            ns text NOT NULL,
            id text NOT NULL,
            queue text NOT NULL,
            priority smallint NOT NULL,
            body bytea NOT NULL,
            state smallint NOT NULL,
            due timestamptz,
            token bigint,
            deliveries integer NOT NULL DEFAULT 0
        ) WITH ({CHURN})""",
        "CREATE INDEX conveyor_messages_ready ON {s}.conveyor_messages "
        "(ns, queue, priority DESC, seq) WHERE state = 0",
        "CREATE INDEX conveyor_messages_leased ON {s}.conveyor_messages (ns, due) WHERE state = 1",
        "CREATE INDEX conveyor_messages_delayed ON {s}.conveyor_messages (ns, due) WHERE state = 2",
        """CREATE TABLE {s}.conveyor_dead (
            seq bigserial PRIMARY KEY,
            ns text NOT NULL,
            id text NOT NULL,
            queue text NOT NULL,
            priority smallint NOT NULL,
            body bytea NOT NULL,
            reason text NOT NULL,
            detail text NOT NULL,
            dead_at timestamptz NOT NULL,
            deliveries integer NOT NULL
        )""",
        "CREATE INDEX conveyor_dead_id ON {s}.conveyor_dead (ns, id)",
        "CREATE INDEX conveyor_dead_queue ON {s}.conveyor_dead (ns, queue, seq)",
        f"CREATE TABLE {{s}}.conveyor_revoked (ns text NOT NULL, id text NOT NULL, "
        f"expires timestamptz NOT NULL, PRIMARY KEY (ns, id)) WITH ({CHURN})",
        f"CREATE TABLE {{s}}.conveyor_published (ns text NOT NULL, id text NOT NULL, "
        f"expires timestamptz NOT NULL, PRIMARY KEY (ns, id)) WITH ({CHURN})",
        "CREATE INDEX conveyor_published_expires ON {s}.conveyor_published (expires)",
        f"CREATE TABLE {{s}}.conveyor_values (ns text NOT NULL, key text NOT NULL, "
        f"value bytea NOT NULL, expires timestamptz, PRIMARY KEY (ns, key)) WITH ({CHURN})",
        "CREATE TABLE {s}.conveyor_sets (ns text NOT NULL, key text NOT NULL, "
        "member text NOT NULL, PRIMARY KEY (ns, key, member))",
        "CREATE TABLE {s}.conveyor_set_expiry (ns text NOT NULL, key text NOT NULL, "
        "expires timestamptz, PRIMARY KEY (ns, key))",
        # Every insert wakes the listening consumers of its queues once the transaction
        # commits (so a message enqueued in an application's transaction, by any client,
        # wakes workers exactly when it becomes visible).
        """CREATE FUNCTION {s}.conveyor_notify_inserted() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify(TG_TABLE_SCHEMA || '_messages', q)
            FROM (SELECT DISTINCT queue AS q FROM inserted) AS queues;
            RETURN NULL;
        END $$""",
        "CREATE TRIGGER conveyor_messages_notify AFTER INSERT ON {s}.conveyor_messages "
        "REFERENCING NEW TABLE AS inserted FOR EACH STATEMENT "
        "EXECUTE FUNCTION {s}.conveyor_notify_inserted()",
    ),
    # v2: bounded streams (events, remote control): ``conveyor.streams.postgres``.
    STREAMS_MIGRATION,
    # v3: messages the sweep dead-lettered or purge deleted, until a worker did their
    # bookkeeping (``Broker.take_departures``).
    (
        "CREATE TABLE {s}.conveyor_departures (seq bigserial PRIMARY KEY, ns text NOT NULL, "
        "id text NOT NULL, queue text NOT NULL, body bytea NOT NULL, reason text NOT NULL, "
        "claimed timestamptz NOT NULL DEFAULT '-infinity')",
        "CREATE INDEX conveyor_departures_ns ON {s}.conveyor_departures (ns, seq)",
    ),
]

#: The tables of the broker's ``kv``.
KV_TABLES = Tables("conveyor_values", "conveyor_sets", "conveyor_set_expiry")
