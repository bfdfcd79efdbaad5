"""SQLite plumbing shared by the broker, the result store and their key/value storage (so it
lives beside them, not inside one): URLs, connections, transactions, schema versions.

One :class:`Database` object serves one component (``broker`` or ``results``) of one file. It
keeps a pool of connections per process that threads borrow for one operation each (a child
process after ``os.fork()`` opens its own and never touches the parent's), puts the file in
WAL mode, and creates or upgrades the component's tables on first use. Broker and result
store may share a file: each keeps its own tables and its own row in ``conveyor_meta``; the
file is marked as Conveyor's through ``PRAGMA application_id``.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from functools import partial
from pathlib import Path
from urllib.parse import unquote

from .exceptions import ConveyorError

#: ``PRAGMA application_id`` of Conveyor files ("CNVY").
APPLICATION_ID = 0x434E5659
DEFAULT_FILENAME = "conveyor.sqlite3"
WAL_SIZE_LIMIT = 64 * 1024 * 1024
#: Most ``?`` parameters put in one statement (SQLite builds before 3.32 allow 999).
MAX_PARAMS = 900

Migration = Sequence[str]


def path_from_url(url: str) -> Path:
    """``sqlite:///rel.db`` (relative to the cwd), ``sqlite:////abs.db``, or ``sqlite://``
    (``./conveyor.sqlite3``) to an absolute path."""
    _, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(f"not a sqlite:// URL: {url!r}")
    rest = rest.split("?", 1)[0].split("#", 1)[0]
    if rest.startswith("/"):
        rest = rest[1:]
    if not rest:
        rest = DEFAULT_FILENAME
    return Path(os.path.abspath(unquote(rest)))


def chunks[T](items: Sequence[T], size: int = MAX_PARAMS) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def marks(count: int) -> str:
    """``?,?,?`` for ``count`` parameters."""
    return ",".join("?" * count)


class _Pool:
    """Idle connections of one process; replaced wholesale after a fork or ``close()``."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self.idle: list[sqlite3.Connection] = []
        self.closed = False


class Database:
    """Connections to one SQLite file for one component, with its schema kept current.

    ``migrations[i]`` upgrades the component's tables from version ``i`` to ``i + 1``; the
    current version is ``len(migrations)``. ``error`` is the exception type raised for every
    failure, always naming the file.
    """

    def __init__(
        self,
        path: Path,
        *,
        component: str,
        migrations: Sequence[Migration],
        error: type[ConveyorError],
        busy_timeout: float = 5.0,
        lock_timeout: float = 60.0,
    ) -> None:
        self.path = path
        self.component = component
        self.migrations = migrations
        self.error = error
        self.busy_timeout = busy_timeout
        self.lock_timeout = lock_timeout
        self._pool = _Pool()
        self._schema_pid = 0
        # Connections inherited over fork() must never be used or closed in the child.
        self._inherited: list[_Pool] = []

    # -- connections -----------------------------------------------------------------------
    @property
    def prepared(self) -> bool:
        """Whether this process has opened the file and brought the schema up to date."""
        return self._schema_pid == os.getpid()

    @contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        """Borrow an idle connection of this process (or open one) for one operation."""
        pool = self._pool
        if pool.pid != os.getpid():
            self._inherited.append(pool)
            pool = self._pool = _Pool()
        try:
            conn = pool.idle.pop()
        except IndexError:
            conn = self._open()
        try:
            yield conn
        finally:
            _rollback(conn)
            _give_back(pool, conn)

    def close(self) -> None:
        """Close this process's connections; later calls open new ones."""
        pool = self._pool
        if pool.pid != os.getpid():
            return
        self._pool = _Pool()
        with pool.lock:
            pool.closed = True
            idle, pool.idle = pool.idle, []
        for conn in idle:
            conn.close()

    def _open(self) -> sqlite3.Connection:
        self._check_path()
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout,
                autocommit=True,
                check_same_thread=False,
            )
        except sqlite3.Error as exc:
            raise self.error(f"cannot open SQLite database {self.path}: {exc}") from exc
        # Bytes that are not UTF-8 in a text column must not make reads raise.
        conn.text_factory = partial(str, encoding="utf-8", errors="replace")
        try:
            with self.guard():
                self._configure(conn)
                if self._schema_pid != os.getpid():
                    self._ensure_schema(conn)
                    self._schema_pid = os.getpid()
        except BaseException:
            conn.close()
            raise
        return conn

    def _check_path(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise self.error(
                f"cannot create the directory of SQLite database {self.path}: {exc}"
            ) from exc
        try:
            mode = self.path.stat().st_mode
        except FileNotFoundError:
            return
        except OSError as exc:
            raise self.error(f"cannot use SQLite database {self.path}: {exc}") from exc
        if not stat.S_ISREG(mode):
            raise self.error(f"SQLite database {self.path} is not a regular file")
        # Without write bits the file is meant to be read-only, even for root.
        if not mode & 0o222 or not os.access(self.path, os.R_OK | os.W_OK):
            raise self.error(f"SQLite database {self.path} is read-only; Conveyor must write to it")

    def _configure(self, conn: sqlite3.Connection) -> None:
        deadline = time.monotonic() + self.lock_timeout
        while True:
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError as exc:
                # Switching a new file to WAL needs a moment of exclusive access.
                if not _is_busy(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.005)
        conn.execute("PRAGMA synchronous=NORMAL")
        # After a burst, shrink the WAL back to this size instead of keeping its peak.
        conn.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
        # Debian-like builds zero deleted content by default; acks delete a lot.
        conn.execute("PRAGMA secure_delete=OFF")

    # -- schema ----------------------------------------------------------------------------
    def _ensure_schema(self, conn: sqlite3.Connection) -> None:
        target = len(self.migrations)
        if self._marked(conn) and self._version(conn) == target:
            return
        with self._transaction(conn):
            if not self._marked(conn):
                self._claim_file(conn)
            version = self._version(conn)
            if version > target:
                raise self.error(
                    f"SQLite database {self.path} was written by a newer Conveyor "
                    f"({self.component} schema v{version}; this version knows v{target})"
                )
            for migration in self.migrations[version:]:
                for statement in migration:
                    conn.execute(statement)
            conn.execute(
                "INSERT INTO conveyor_meta (component, version) VALUES (?, ?) "
                "ON CONFLICT (component) DO UPDATE SET version = excluded.version",
                (self.component, target),
            )

    def _marked(self, conn: sqlite3.Connection) -> bool:
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        if app_id not in (0, APPLICATION_ID):
            raise self._foreign(f"application_id {app_id:#x}")
        return bool(app_id == APPLICATION_ID)

    def _claim_file(self, conn: sqlite3.Connection) -> None:
        """Mark an empty file as Conveyor's; refuse one that holds anything else."""
        (user_version,) = conn.execute("PRAGMA user_version").fetchone()
        names = [row[0] for row in conn.execute("SELECT name FROM sqlite_schema")]
        if names or user_version:
            shown = ", ".join(names[:5]) or "none"
            raise self._foreign(f"user_version {user_version}, tables: {shown}")
        conn.execute(f"PRAGMA application_id={APPLICATION_ID}")
        conn.execute(
            "CREATE TABLE conveyor_meta (component TEXT PRIMARY KEY, version INTEGER NOT NULL)"
        )

    def _version(self, conn: sqlite3.Connection) -> int:
        try:
            row = conn.execute(
                "SELECT version FROM conveyor_meta WHERE component = ?", (self.component,)
            ).fetchone()
        except sqlite3.OperationalError as exc:
            raise self._foreign(str(exc)) from exc
        return int(row[0]) if row else 0

    def _foreign(self, detail: str) -> ConveyorError:
        return self.error(
            f"{self.path} is not a Conveyor database ({detail}); "
            "point Conveyor at a new file or one it created"
        )

    # -- transactions ----------------------------------------------------------------------
    @contextmanager
    def guard(self) -> Iterator[None]:
        """Turn SQLite errors into this component's error type, naming the file."""
        try:
            yield
        except sqlite3.Error as exc:
            raise self._translate(exc) from exc

    def _translate(self, exc: sqlite3.Error) -> ConveyorError:
        if getattr(exc, "sqlite_errorcode", 0) == sqlite3.SQLITE_NOTADB:
            return self._foreign("not an SQLite file")
        if isinstance(exc, sqlite3.OperationalError) and _is_busy(exc):
            return self.error(
                f"SQLite database {self.path} stayed locked by another connection: {exc}"
            )
        return self.error(f"SQLite database {self.path}: {exc}")

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A short write transaction (``BEGIN IMMEDIATE``), retried while the file is locked.

        What ``guard()``, ``connection()`` and ``_transaction()`` do, in one generator: this
        runs for every lease and ack."""
        pool = self._pool
        if pool.pid != os.getpid():
            self._inherited.append(pool)
            pool = self._pool = _Pool()
        try:
            try:
                conn = pool.idle.pop()
            except IndexError:
                conn = self._open()
            try:
                self._begin(conn)
                yield conn
                conn.execute("COMMIT")
            finally:
                _rollback(conn)  # nothing to roll back after a COMMIT
                _give_back(pool, conn)
        except sqlite3.Error as exc:
            raise self._translate(exc) from exc

    @contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A borrowed connection (autocommit reads), with SQLite errors translated."""
        with self.guard(), self.connection() as conn:
            yield conn

    @contextmanager
    def snapshot(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: several queries see one state of the file."""
        with self.guard(), self.connection() as conn:
            conn.execute("BEGIN")
            yield conn

    @contextmanager
    def _transaction(self, conn: sqlite3.Connection) -> Iterator[None]:
        self._begin(conn)
        try:
            yield
            conn.execute("COMMIT")
        except BaseException:
            _rollback(conn)
            raise

    def _begin(self, conn: sqlite3.Connection) -> None:
        deadline = time.monotonic() + self.lock_timeout
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                # busy_timeout already waited; keep trying until our own deadline.
                if not _is_busy(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.001)


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    return code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def _give_back(pool: _Pool, conn: sqlite3.Connection) -> None:
    with pool.lock:
        kept = not pool.closed
        if kept:
            pool.idle.append(conn)
    if not kept:
        conn.close()


def _rollback(conn: sqlite3.Connection) -> None:
    # The transaction may be gone already (e.g. the connection broke or was closed).
    with suppress(sqlite3.Error):
        if conn.in_transaction:
            conn.execute("ROLLBACK")
