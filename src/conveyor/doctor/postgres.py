"""Checks of a PostgreSQL server behind the broker or the result store: its tables at the
version this Conveyor needs, durability settings (``fsync``, ``synchronous_commit``),
autovacuum on Conveyor's tables (which churn: every message is inserted, updated and deleted),
and transactions held open long enough to stop vacuum from removing dead rows.

The clock of the server is compared with this host's and the workers' by the ``clock`` check
(:mod:`.fleet`): the broker's ``time()`` is the server's ``clock_timestamp()``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..brokers import redact_url
from .findings import Finding, error, info, ok, warning

if TYPE_CHECKING:
    from .._postgres import Conn, Database

#: A transaction open longer than this holds back vacuum of the queue table (seconds).
LONG_TRANSACTION = 300.0
#: Dead rows of a table above this many (and a fifth of its live rows): vacuum is behind.
DEAD_ROWS = 10_000


def postgres_findings(
    role: str, db: Database, long_transaction: float = LONG_TRANSACTION
) -> list[Finding]:
    """Findings about the server and the tables of ``db`` (a broker's or result store's)."""
    check = f"{role}: postgresql"
    where = f"{role} PostgreSQL {redact_url(db.url)} (schema {db.schema})"
    with db.connect(connect_timeout=5) as conn:
        findings = _schema(conn, db, check, where)
        findings += _durability(conn, check, where)
        findings += _vacuum(conn, db, check, where)
        findings += _transactions(conn, check, where, long_transaction)
    return findings


def _setting(conn: Conn, name: str) -> str:
    row = conn.execute("SELECT current_setting(%s)", (name,)).fetchone()
    return "" if row is None else str(row[0])


def _schema(conn: Conn, db: Database, check: str, where: str) -> list[Finding]:
    current, wanted = db.version(conn), len(db.migrations)
    if current == wanted:
        return [ok(check, f"{where}: {db.component} tables at version {current}")]
    if current == 0:
        return [
            info(
                check,
                f"{where}: no {db.component} tables yet (the first worker or producer creates "
                "them, unless migrate=false)",
                "conveyor -A <app> migrate",
            )
        ]
    if current > wanted:
        return [
            error(
                check,
                f"{where}: {db.component} tables at version {current}, written by a newer "
                f"Conveyor (this one knows {wanted}): this process cannot use them",
                "upgrade Conveyor here to the version the workers run",
            )
        ]
    return [
        error(
            check,
            f"{where}: {db.component} tables at version {current}, this Conveyor needs "
            f"{wanted}: processes with migrate=false refuse to start",
            "conveyor -A <app> migrate (or start one process with automatic migration)",
        )
    ]


def _durability(conn: Conn, check: str, where: str) -> list[Finding]:
    findings = []
    if _setting(conn, "fsync") == "off":
        findings.append(
            error(
                check,
                f"{where}: fsync is off: a crash of the machine can corrupt the database and "
                "lose queued messages and results",
                "fsync = on in postgresql.conf (then reload)",
            )
        )
    commit = _setting(conn, "synchronous_commit")
    if commit == "off":
        findings.append(
            warning(
                check,
                f"{where}: synchronous_commit is off for this database or user: a crash of "
                "the server loses messages published in the last moments (their send "
                "returned, their rows were not yet on disk)",
                "ALTER DATABASE <db> SET synchronous_commit = on (or ALTER ROLE ...; Conveyor "
                "itself turns it off only for acks, which a crash may at worst redeliver)",
            )
        )
    if not findings:
        findings.append(ok(check, f"{where}: fsync on, synchronous_commit {commit}"))
    return findings


def _vacuum(conn: Conn, db: Database, check: str, where: str) -> list[Finding]:
    findings = []
    if _setting(conn, "autovacuum") == "off":
        findings.append(
            error(
                check,
                f"{where}: autovacuum is off: the queue table keeps every dead row of every "
                "message ever leased, and leases slow down as it grows",
                "autovacuum = on in postgresql.conf (then reload)",
            )
        )
    rows = conn.execute(
        "SELECT c.relname, coalesce(array_to_string(c.reloptions, ','), ''), "
        "coalesce(s.n_live_tup, 0), coalesce(s.n_dead_tup, 0), "
        "extract(epoch FROM now() - greatest(s.last_autovacuum, s.last_vacuum))::float8 "
        "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid "
        "WHERE n.nspname = %s AND c.relkind = 'r' AND c.relname LIKE 'conveyor%%' ORDER BY 1",
        (db.schema,),
    ).fetchall()
    for name, options, live, dead, since in rows:
        if "autovacuum_enabled=false" in str(options):
            findings.append(
                error(
                    check,
                    f"{where}: autovacuum is disabled on table {name}: its dead rows are never "
                    "removed",
                    f"ALTER TABLE {db.schema}.{name} RESET (autovacuum_enabled)",
                )
            )
        elif int(str(dead)) > max(DEAD_ROWS, int(str(live)) // 5):
            last = "never" if since is None else f"{float(str(since)) / 60:.0f} min ago"
            findings.append(
                warning(
                    check,
                    f"{where}: table {name} has {dead} dead rows for {live} live ones (last "
                    f"vacuumed {last}): vacuum is not keeping up, often held back by a long "
                    "transaction",
                    f"VACUUM {db.schema}.{name}; end long transactions (see below); give "
                    "autovacuum more workers (autovacuum_max_workers)",
                )
            )
    if not findings:
        findings.append(ok(check, f"{where}: autovacuum on, {len(rows)} table(s) vacuumed"))
    return findings


def _transactions(conn: Conn, check: str, where: str, longest: float) -> list[Finding]:
    findings = []
    rows = conn.execute(
        "SELECT pid, coalesce(application_name, ''), state, "
        "extract(epoch FROM now() - xact_start)::float8 FROM pg_stat_activity "
        "WHERE pid <> pg_backend_pid() AND xact_start < now() - make_interval(secs => %s) "
        "AND (backend_xid IS NOT NULL OR backend_xmin IS NOT NULL) ORDER BY xact_start",
        (longest,),
    ).fetchall()
    if rows:
        shown = ", ".join(
            f"pid {pid} ({app or 'no name'}, {state}, {float(str(age)) / 60:.1f} min)"
            for pid, app, state, age in rows[:5]
        )
        findings.append(
            warning(
                check,
                f"{where}: {len(rows)} transaction(s) open longer than {longest / 60:g} min: "
                f"{shown}. Vacuum cannot remove rows deleted after they started, so the queue "
                "table bloats and leases slow down",
                "end them (SELECT pg_terminate_backend(<pid>)) and find the code that leaves "
                "transactions open; set idle_in_transaction_session_timeout",
            )
        )
    if _setting(conn, "idle_in_transaction_session_timeout") in ("0", ""):
        findings.append(
            info(
                check,
                f"{where}: idle_in_transaction_session_timeout is 0: a client that leaves a "
                "transaction open and idle holds back vacuum of the queue table until it "
                "disconnects",
                "ALTER DATABASE <db> SET idle_in_transaction_session_timeout = '10min'",
            )
        )
    if not findings:
        findings.append(ok(check, f"{where}: no long transaction holds back vacuum"))
    return findings
