"""PostgreSQL plumbing shared by the broker, the result store and their key/value storage: URLs,
the schema name, a connection pool per process, errors that name the fix, schema versions, and
the LISTEN connection that wakes waiters.

Why psycopg 3 (not asyncpg): it speaks both sync and async with one API (the worker's lease
loop and Django are synchronous), it is the driver Django itself uses (so a task enqueued
inside ``transaction.atomic()`` can use Django's own connection), it has a maintained pool
(``psycopg_pool``), server-side prepared statements and LISTEN/NOTIFY support, and its binary
build needs no compiler. asyncpg is async-only and would need a second driver in every
Django process.

Every connection is in autocommit mode and the hot path is single statements; the few
operations of several statements run in one short ``conn.transaction()`` with no client work
in between, so no connection ever sits idle in a transaction (which would hold back vacuum
and bloat the queue table).
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from .brokers.base import redact_url
from .exceptions import ConfigurationError, ConveyorError

try:
    import psycopg
    import psycopg.errors
    from psycopg.conninfo import conninfo_to_dict
    from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout
except ImportError as missing:  # an optional dependency: say how to get it
    raise ConfigurationError(
        "postgresql:// needs psycopg 3 and psycopg_pool: pip install 'conveyor[postgres]'"
    ) from missing

if TYPE_CHECKING:
    from psycopg import Connection

logger = logging.getLogger("conveyor.postgres")

DEFAULT_SCHEMA = "conveyor"
#: Host names that all mean this machine (a Unix socket directory counts too).
_LOCAL = ("", "localhost", "127.0.0.1", "::1", "/var/run/postgresql", "/run/postgresql", "/tmp")
_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,39}")
#: Query parameters of a Conveyor URL that are Conveyor's, not libpq's.
CONVEYOR_PARAMS = ("schema", "listen", "migrate", "pool_size", "prepare", "generic_plans")
#: First half of the advisory lock key taken while migrating ("CNVY").
MIGRATION_LOCK = 0x434E5659

Migration = Sequence[str]
#: (conninfo, schema, component, pid) whose tables this process has checked.
_CHECKED: set[tuple[str, str, str, int]] = set()
Conn = psycopg.Connection[tuple[object, ...]]
#: An application's async connection (transactional enqueue from async code; any row type).
AsyncConn = psycopg.AsyncConnection[Any]


def split_url(url: str) -> tuple[str, dict[str, str]]:
    """A ``postgresql://`` URL to (libpq conninfo URL, Conveyor's own query parameters)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("postgresql", "postgres"):
        raise ConfigurationError(f"not a postgresql:// URL: {redact_url(url)!r}")
    ours: dict[str, str] = {}
    theirs: list[tuple[str, str]] = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        (ours.__setitem__(key, value) if key in CONVEYOR_PARAMS else theirs.append((key, value)))
    conninfo = urlunsplit(("postgresql", parts.netloc, parts.path, urlencode(theirs), ""))
    return conninfo, ours


def schema_name(value: object) -> str:
    """Check a schema name (a plain lower-case identifier, so it needs no quoting)."""
    if not isinstance(value, str) or not _IDENTIFIER.fullmatch(value):
        raise ConfigurationError(
            f"PostgreSQL schema name {value!r} must be a lower-case identifier "
            "(letters, digits, underscores; at most 40 characters)"
        )
    return value


def flag(value: object, name: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigurationError(f"{name} must be true or false, got {value!r}")


def as_connection_error(exc: BaseException) -> bool:
    """Whether ``exc`` means the server is unreachable or went away (may pass on its own)."""
    if isinstance(exc, PoolTimeout | OSError):
        return True
    if isinstance(exc, psycopg.OperationalError):
        state = exc.sqlstate or ""
        return not state or state.startswith(("08", "57P"))
    return False


def explain(exc: BaseException, url: str, schema: str) -> str:
    """One sentence: what went wrong with the database at ``url`` and what to do about it."""
    where = redact_url(url)
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    state = getattr(exc, "sqlstate", None) or ""
    if state == "3D000" or ("database" in text and "does not exist" in text):
        return f"PostgreSQL at {where}: {text}; create it (createdb) or fix the URL's database"
    if state == "28P01" or "password authentication failed" in text:
        return f"PostgreSQL at {where}: {text}; fix the user or password in the URL"
    if (
        state == "28000"
        or "no pg_hba.conf entry" in text
        or ("role" in text and "does not" in text)
    ):
        return f"PostgreSQL at {where}: {text}; create the role or fix the URL's user"
    if isinstance(exc, psycopg.errors.InsufficientPrivilege):
        return (
            f"PostgreSQL at {where}: {text}; grant the URL's user the rights on schema "
            f"{schema!r} (GRANT USAGE, CREATE ON SCHEMA {schema} ...; GRANT SELECT, INSERT, "
            f"UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} ...), or create the tables once "
            "as an owner with `conveyor migrate`"
        )
    if isinstance(
        exc, psycopg.errors.DuplicatePreparedStatement | psycopg.errors.InvalidSqlStatementName
    ):
        # A prepared statement that another session made or never saw: a pooler hands this
        # client's statements to several server sessions (PgBouncer in transaction mode).
        return (
            f"PostgreSQL at {where}: {text}; behind a transaction-mode pooler such as "
            "PgBouncer (before 1.21, or without max_prepared_statements) add ?prepare=false "
            "to the URL"
        )
    if isinstance(exc, PoolClosed):
        return f"PostgreSQL at {where}: used after close() (its connection pool is closed)"
    if isinstance(exc, PoolTimeout):
        return f"PostgreSQL at {where} cannot be reached (no connection in time): {text}"
    if as_connection_error(exc):
        return f"PostgreSQL at {where} cannot be reached: {text}; is the server running?"
    return f"PostgreSQL at {where}: {text}"


class Database:
    """A pool of connections to one database for one component (``broker`` or ``results``),
    with the component's tables in ``schema`` kept at the current version.

    ``migrations[i]`` upgrades the component from version ``i`` to ``i + 1`` (statements with
    ``{s}`` standing for the schema). A child process after ``os.fork()`` opens its own pool
    and never touches its parent's connections.
    """

    def __init__(
        self,
        url: str,
        *,
        component: str,
        migrations: Sequence[Migration],
        error: type[ConveyorError],
        schema: str,
        migrate: bool = True,
        pool_size: int = 4,
    ) -> None:
        self.url = url
        self.conninfo, params = split_url(url)
        #: Server-side prepared statements (psycopg prepares a statement used 5 times);
        #: ``prepare=false`` for a pooler that cannot keep them (PgBouncer before 1.21).
        self.prepare = flag(params.get("prepare", True), "prepare")
        #: Prepared statements run their generic plan (see :meth:`_configure`).
        self.generic_plans = self.prepare and flag(
            params.get("generic_plans", True), "generic_plans"
        )
        self.component = component
        self.migrations = migrations
        self.error = error
        self.schema = schema
        self.migrate = migrate
        self.pool_size = max(int(pool_size), 1)
        self._pool: ConnectionPool[Conn] | None = None
        self._pid = 0
        self._lock = threading.Lock()

    # -- connections ---------------------------------------------------------------------
    def fail(self, exc: BaseException) -> ConveyorError:
        """This component's error for ``exc``; a lost connection stays recognisable as one
        (``conveyor.publishing`` retries publishes that failed on an ``OSError``)."""
        error = self.error(explain(exc, self.url, self.schema))
        if as_connection_error(exc) and not isinstance(exc, OSError):
            lost = ConnectionError(str(exc))
            lost.__cause__ = exc
            error.__cause__ = lost
        else:
            error.__cause__ = exc
        return error

    def _prepare_kwargs(self) -> dict[str, object]:
        return {} if self.prepare else {"prepare_threshold": None}

    def connect(self, **kwargs: object) -> Conn:
        """A new connection of its own (autocommit), outside the pool."""
        try:
            conn: Conn = psycopg.connect(self.conninfo, autocommit=True, **kwargs)  # type: ignore[arg-type]  # kwargs hold psycopg connect options (typed **object)
        except psycopg.Error as exc:
            error = self.fail(exc)
            raise error from error.__cause__
        return conn

    def _open_pool(self) -> ConnectionPool[Conn]:
        with self._lock:
            if self._pool is not None and self._pid == os.getpid():
                return self._pool
            # Checks the URL and brings the schema up to date, with a clear error if not
            # (once per process and database: later pools of it skip the extra connection).
            key = (self.conninfo, self.schema, self.component, os.getpid())
            if key not in _CHECKED:
                with self.connect(connect_timeout=10) as conn:
                    self.ensure_schema(conn)
                _CHECKED.add(key)
            pool: ConnectionPool[Conn] = ConnectionPool(
                self.conninfo,
                min_size=1,
                max_size=self.pool_size,
                kwargs={"autocommit": True, **self._prepare_kwargs()},
                configure=self._configure if self.generic_plans else None,
                timeout=10.0,
                name=f"conveyor-{self.component}",
                open=True,
            )
            # A pool inherited over fork() is left alone: its sockets are the parent's (and
            # psycopg never closes a connection in a process that did not open it).
            self._pool, self._pid = pool, os.getpid()
            # Closed before the interpreter stops its threads, or its __del__ waits for them.
            atexit.register(_close_at_exit, weakref.ref(pool), self._pid)
            return pool

    def _configure(self, conn: Conn) -> None:
        """Prepared statements of this pool always run their generic plan. The hot
        statements (a lease that acks, promotes and leases; publishes and records over
        arrays) make PostgreSQL's default ``plan_cache_mode = auto`` prefer custom plans,
        i.e. plan them again at every execution: measured, planning cost more than running
        them. Their generic plans use the same partial indexes (the states are constants).
        A session setting: ``?generic_plans=false`` behind a transaction-mode pooler whose
        server sessions other applications share."""
        try:
            conn.execute("SET plan_cache_mode = force_generic_plan")
        except psycopg.Error:  # a pooler or server that refuses it: only slower
            logger.debug("SET plan_cache_mode refused", exc_info=True)

    def same_database(self, conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
        """Whether ``conn`` is connected to this database (host, port and name)."""
        mine = conninfo_to_dict(self.conninfo)
        info = conn.info
        port = str(mine.get("port") or 5432)
        host = str(mine.get("host") or "")
        same_host = host == info.host or (host in _LOCAL and info.host in _LOCAL)
        # libpq's default database is the user's name.
        dbname = mine.get("dbname") or mine.get("user") or info.user
        return same_host and port == str(info.port) and dbname == info.dbname

    def prepared(self) -> None:
        """Open the pool (checking the URL and the tables) if this process has not yet."""
        if not self.is_open:
            self._open_pool()

    @property
    def is_open(self) -> bool:
        """Whether this process has opened the pool (and so checked the tables)."""
        return self._pool is not None and self._pid == os.getpid()

    @contextmanager
    def connection(self) -> Iterator[Conn]:
        """Borrow a pooled connection for one operation; errors become this component's."""
        pool = self._pool
        if pool is None or self._pid != os.getpid():
            pool = self._open_pool()
        try:
            with pool.connection() as conn:
                yield conn
        except (psycopg.Error, PoolTimeout) as exc:
            if as_connection_error(exc):
                # The server may have restarted: drop the other idle connections too.
                threading.Thread(target=_check, args=(pool,), daemon=True).start()
            error = self.fail(exc)
            raise error from error.__cause__

    @contextmanager
    def transaction(self) -> Iterator[Conn]:
        """A pooled connection inside one short transaction (no pipeline: on loopback its
        bookkeeping costs more than the round trips it saves)."""
        with self.connection() as conn, conn.transaction():
            yield conn

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None and self._pid == os.getpid():
            pool.close()

    # -- schema --------------------------------------------------------------------------
    def version(self, conn: Conn) -> int:
        """The component's schema version (0: no tables yet)."""
        try:
            row = conn.execute(
                f"SELECT version FROM {self.schema}.conveyor_meta WHERE component = %s",
                (self.component,),
            ).fetchone()
        except psycopg.errors.UndefinedTable:
            return 0
        return int(row[0]) if row else 0  # type: ignore[call-overload]  # psycopg rows are tuple[object, ...]; this column is an integer

    def ensure_schema(self, conn: Conn, *, force: bool = False) -> int:
        """Create or upgrade the component's tables; safe when many processes start at once
        (one migrates under an advisory lock, the others wait and find it done). Returns the
        version. With ``migrate=false`` in the URL only ``force`` (``conveyor migrate``) may
        change tables."""
        target = len(self.migrations)
        try:
            version = self.version(conn)
            if version == target:
                return version
            if version > target:
                raise self.error(
                    f"PostgreSQL schema {self.schema!r} at {redact_url(self.url)} was written by "
                    f"a newer Conveyor ({self.component} v{version}; this version knows "
                    f"v{target}): upgrade Conveyor"
                )
            if not (self.migrate or force):
                raise self.error(
                    f"PostgreSQL schema {self.schema!r} at {redact_url(self.url)} has "
                    f"{self.component} tables v{version}, this Conveyor needs v{target}: run "
                    "`conveyor migrate` (automatic migration is off: migrate=false)"
                )
            with conn.transaction():
                conn.execute(
                    "SELECT pg_advisory_xact_lock(%s, hashtext(%s))",
                    (MIGRATION_LOCK, self.schema),
                )
                conn.execute(f"CREATE SCHEMA IF NOT EXISTS {self.schema}")
                conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {self.schema}.conveyor_meta "
                    "(component text PRIMARY KEY, version integer NOT NULL)"
                )
                row = conn.execute(
                    f"SELECT version FROM {self.schema}.conveyor_meta WHERE component = %s",
                    (self.component,),
                ).fetchone()
                version = int(row[0]) if row else 0  # type: ignore[call-overload]  # psycopg rows are tuple[object, ...]; this column is an integer
                for migration in self.migrations[version:]:
                    for statement in migration:
                        conn.execute(statement.format(s=self.schema))
                conn.execute(
                    f"INSERT INTO {self.schema}.conveyor_meta (component, version) "
                    "VALUES (%s, %s) ON CONFLICT (component) DO UPDATE SET version = "
                    "excluded.version",
                    (self.component, target),
                )
            if version < target:
                logger.info(
                    "PostgreSQL schema %s: %s tables v%d -> v%d",
                    self.schema,
                    self.component,
                    version,
                    target,
                )
            return target
        except psycopg.Error as exc:
            error = self.fail(exc)
            raise error from error.__cause__


def _close_at_exit(ref: weakref.ref[ConnectionPool[Conn]], pid: int) -> None:
    pool = ref()
    if pool is not None and pid == os.getpid() and not pool.closed:
        pool.close(timeout=1.0)


def _check(pool: ConnectionPool[Conn]) -> None:
    try:
        pool.check()
    except Exception:  # the pool is closing or the server is still down: next use retries
        logger.debug("checking pooled connections failed", exc_info=True)


class Listener:
    """One LISTEN connection per process for a channel; calls ``wake(payload)`` for every
    notification, and ``wake(None)`` after (re)connecting (something may have been missed).

    Runs in a daemon thread started on first use; reconnects with a backoff while the server
    is away. Waiters never depend on it alone: they look again at least every
    ``poll_interval`` (a lost notification costs at most that much latency).
    """

    def __init__(self, db: Database, channel: str, wake: Callable[[str | None], None]) -> None:
        self.db = db
        self.channel = channel
        self.wake = wake
        self._pid = 0
        self._stop = threading.Event()
        self._conn: Conn | None = None
        self._lock = threading.Lock()

    def ensure(self) -> None:
        """Start listening in this process (no-op if already)."""
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()
            self._stop = threading.Event()
            self._conn = None
            thread = threading.Thread(
                target=self._run, args=(self._stop,), name=f"conveyor-listen-{self.channel}"
            )
            thread.daemon = True
            thread.start()

    def _run(self, stop: threading.Event) -> None:
        pause = 0.1
        while not stop.is_set():
            try:
                with self.db.connect(connect_timeout=5) as conn:
                    self._conn = conn
                    conn.execute(f"LISTEN {self.channel}")
                    pause = 0.1
                    self.wake(None)
                    while not stop.is_set():
                        for note in conn.notifies(timeout=1.0):
                            self.wake(note.payload)
            except Exception:  # the server went away or the connection broke: reconnect
                if stop.is_set():
                    return
                logger.debug("LISTEN %s: connection lost", self.channel, exc_info=True)
                self.wake(None)
            finally:
                self._conn = None
            stop.wait(pause)
            pause = min(pause * 2, 2.0)

    def close(self) -> None:
        if self._pid != os.getpid():
            return
        self._stop.set()
        self._pid = 0


def channel_name(schema: str, what: str) -> str:
    return f"{schema}_{what}"[:63]


__all__ = [
    "DEFAULT_SCHEMA",
    "AsyncConn",
    "Conn",
    "Connection",
    "Database",
    "Listener",
    "channel_name",
    "flag",
    "schema_name",
    "split_url",
]
