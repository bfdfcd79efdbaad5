"""Task history: every task the events stream told of, in an indexed SQLite file, so the
dashboard can list, filter and chart millions of tasks and keeps them across restarts.

The broker's ``events`` stream is bounded (``events_max_length``, ``events_max_age``): it is the
source, not the archive. :class:`~.indexer.HistoryIndexer` folds it into this file: one row per
task (its latest state, name, queue, worker, times, redacted argument preview, error, parent,
root and group), its events (the timeline), and per-minute counts per queue (the charts). The
file is a derived index: deleting it loses what the stream no longer holds, nothing else.
Workers do nothing for it beyond emitting events (``-E``).

Where the file lives (:func:`history_path`): beside a ``sqlite://`` broker's file; for other
brokers in ``$XDG_STATE_HOME/conveyor`` (one file per broker URL), or wherever
``--history`` / ``$CONVEYOR_DASHBOARD_HISTORY`` says. Several dashboard processes may share
one file: indexing is one write transaction that reads and moves the saved stream position,
so no event is folded twice.
"""

from __future__ import annotations

import atexit
import fnmatch
import functools
import hashlib
import json
import os
import re
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlencode

from .._sqlite import Database, chunks, marks, path_from_url
from ..brokers.base import redact_url
from ..exceptions import ConveyorError

if TYPE_CHECKING:
    from ..app import Conveyor

#: Task states a row can be in (from the events; ``PENDING`` is never stored).
STATES = (
    "QUEUED",
    "RECEIVED",
    "STARTED",
    "RETRY",
    "SUCCESS",
    "FAILURE",
    "REVOKED",
    "DEAD",
    "EXPIRED",
)
#: States a task can still leave (revoking makes sense for these).
UNFINISHED = ("QUEUED", "RECEIVED", "STARTED", "RETRY")
#: A search considers the newest this many tasks whose arguments match (the index hands them
#: out newest first, so a word that every task's arguments hold costs no more than a rare one).
MAX_SEARCH = 10_000
#: Most distinct task names a name glob is matched against.
MAX_NAMES = 5000
#: Rows (and their events) are deleted this long after their last event (30 days).
DEFAULT_KEEP = 30 * 86400.0
TABLE = "conveyor_task_history"
EVENTS = "conveyor_task_events"
MINUTES = "conveyor_task_minutes"
SEARCH = "conveyor_task_search"
POSITION = "conveyor_history_position"

MIGRATIONS = (
    (
        f"CREATE TABLE {TABLE} (id TEXT NOT NULL UNIQUE, name TEXT NOT NULL, "
        "queue TEXT NOT NULL, worker TEXT NOT NULL, state TEXT NOT NULL, "
        "first_at REAL NOT NULL, at REAL NOT NULL, started_at REAL, done_at REAL, "
        "runtime REAL, retries INTEGER NOT NULL, args TEXT NOT NULL, error TEXT NOT NULL, "
        "parent_id TEXT, root_id TEXT, group_id TEXT, retry_of TEXT)",
        f"CREATE INDEX {TABLE}_first ON {TABLE} (first_at)",
        f"CREATE INDEX {TABLE}_state ON {TABLE} (state, first_at)",
        f"CREATE INDEX {TABLE}_name ON {TABLE} (name, first_at)",
        f"CREATE INDEX {TABLE}_queue ON {TABLE} (queue, first_at)",
        f"CREATE INDEX {TABLE}_worker ON {TABLE} (worker, first_at)",
        f"CREATE INDEX {TABLE}_at ON {TABLE} (at)",
        f"CREATE INDEX {TABLE}_parent ON {TABLE} (parent_id) WHERE parent_id IS NOT NULL",
        f"CREATE INDEX {TABLE}_root ON {TABLE} (root_id) WHERE root_id IS NOT NULL",
        f"CREATE INDEX {TABLE}_retry ON {TABLE} (retry_of) WHERE retry_of IS NOT NULL",
        # Substring search over argument previews (rowid = the history row's rowid).
        f"CREATE VIRTUAL TABLE {SEARCH} USING fts5(args, content='', tokenize='trigram')",
        f"CREATE TABLE {EVENTS} (task_id TEXT NOT NULL, at REAL NOT NULL, type TEXT NOT NULL, "
        "hostname TEXT NOT NULL, detail TEXT NOT NULL)",
        f"CREATE INDEX {EVENTS}_task ON {EVENTS} (task_id, at)",
        f"CREATE INDEX {EVENTS}_at ON {EVENTS} (at)",
        f"CREATE TABLE {MINUTES} (minute INTEGER NOT NULL, queue TEXT NOT NULL, "
        "sent INTEGER NOT NULL, succeeded INTEGER NOT NULL, failed INTEGER NOT NULL, "
        "retried INTEGER NOT NULL, runtime_sum REAL NOT NULL, runtime_max REAL NOT NULL, "
        "PRIMARY KEY (minute, queue)) WITHOUT ROWID",
        f"CREATE TABLE {POSITION} (stream TEXT PRIMARY KEY, position TEXT NOT NULL, "
        "swept_at REAL NOT NULL, lost_at REAL NOT NULL DEFAULT 0)",
    ),
    # v2: a group's members (a chord's header tasks have roots of their own).
    (f"CREATE INDEX {TABLE}_group ON {TABLE} (group_id) WHERE group_id IS NOT NULL",),
)

_COLUMNS = (
    "id, name, queue, worker, state, first_at, at, started_at, done_at, runtime, retries, "
    "args, error, parent_id, root_id, group_id, retry_of"
)


class HistoryError(ConveyorError):
    """The history file could not be read or written."""


@dataclass(slots=True)
class TaskRow:
    """What the history knows of one task (mutable: the indexer folds events into it)."""

    id: str
    name: str = ""
    queue: str = ""
    worker: str = ""
    state: str = "QUEUED"
    first_at: float = 0.0
    at: float = 0.0
    started_at: float | None = None
    done_at: float | None = None
    runtime: float | None = None
    retries: int = 0
    args: str = ""
    error: str = ""
    parent_id: str | None = None
    root_id: str | None = None
    group_id: str | None = None
    retry_of: str | None = None

    def values(self) -> tuple[object, ...]:
        return tuple(getattr(self, f.name) for f in fields(self))


@dataclass(frozen=True, slots=True)
class TaskEvent:
    """One line of a task's timeline."""

    at: float
    type: str
    hostname: str
    detail: str


@dataclass(frozen=True, slots=True)
class Bucket:
    """Counts of a stretch of time (the charts' points)."""

    start: float
    sent: int = 0
    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    runtime_sum: float = 0.0
    runtime_max: float = 0.0

    @property
    def runtime_avg(self) -> float:
        done = self.succeeded + self.failed
        return self.runtime_sum / done if done else 0.0


@dataclass(frozen=True, slots=True)
class TaskFilter:
    """Narrows the task list; kept in the page's URL. ``name`` may be a glob (``shop.*``);
    ``search`` matches a task id (whole or its start) or text in the arguments."""

    state: str = ""
    name: str = ""
    queue: str = ""
    worker: str = ""
    since: float | None = None
    until: float | None = None
    search: str = ""
    #: The rows whose arguments hold ``search`` (a JSON array, set by TaskHistory.resolve).
    matched: str | None = None

    def fields(self) -> dict[str, str]:
        """The filter as request fields (what :func:`parse_filter` reads back)."""
        found = {
            "state": self.state,
            "name": self.name,
            "queue": self.queue,
            "worker": self.worker,
            "since": _stamp(self.since),
            "until": _stamp(self.until),
            "search": self.search,
        }
        return {k: v for k, v in found.items() if v}

    def query(self) -> str:
        return urlencode(self.fields())

    def describe(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.fields().items()) or "all"

    def where(self) -> tuple[str, list[object]]:
        """The SQL condition (``h`` is the history table) and its parameters."""
        terms: list[str] = []
        params: list[object] = []
        for column in ("state", "queue", "worker"):
            value = getattr(self, column)
            if value:
                terms.append(f"h.{column} = ?")
                params.append(value)
        if self.name:  # a glob is expanded to exact names first (TaskHistory._exact)
            terms.append("h.name = ?")
            params.append(self.name)
        if self.since is not None:
            terms.append("h.first_at >= ?")
            params.append(self.since)
        if self.until is not None:
            terms.append("h.first_at < ?")
            params.append(self.until)
        if self.search:
            text = self.search
            match = ["h.id = ?", "(h.id >= ? AND h.id < ?)"]
            params += [text, text, text + "\U0010ffff"]
            if self.matched is not None:  # the argument matches, found once (TaskHistory.resolve)
                match.append("h.rowid IN (SELECT value FROM json_each(?))")
                params.append(self.matched)
            elif len(text) >= 3:  # the trigram index needs three characters
                match.append(
                    f"h.rowid IN (SELECT rowid FROM {SEARCH} WHERE {SEARCH} MATCH ? "
                    "ORDER BY rowid DESC LIMIT ?)"
                )
                params += [_phrase(text), MAX_SEARCH]
            terms.append("(" + " OR ".join(match) + ")")
        return (" AND ".join(terms) or "1"), params


def _phrase(text: str) -> str:
    """``text`` as an FTS5 phrase: matched as a substring by the trigram index."""
    return '"' + text.replace('"', '""') + '"'


def _is_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


_STAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2})?$")


def _stamp(value: float | None) -> str:
    if value is None:
        return ""
    # Whole seconds: a form or a next page's link keeps the window ("1h" then is a fixed time).
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(value))


def parse_time(text: str) -> float:
    """``2024-05-01T12:00`` (UTC, as a datetime-local input sends it), a POSIX time, or an age
    before now (``90s``, ``15m``, ``1h``, ``7d``); ValueError otherwise."""
    text = text.strip()
    age = re.fullmatch(r"(\d{1,6})([smhd])", text)
    if age:
        size = {"s": 1, "m": 60, "h": 3600, "d": 86400}[age.group(2)]
        return time.time() - int(age.group(1)) * size
    if re.fullmatch(r"\d{9,11}(\.\d+)?", text):
        return float(text)
    if _STAMP.match(text):
        import calendar

        shape = "%Y-%m-%dT%H:%M:%S" if text.count(":") == 2 else "%Y-%m-%dT%H:%M"
        return float(calendar.timegm(time.strptime(text, shape)))
    raise ValueError(f"not a time: {text!r} (give 2024-05-01T12:00 in UTC, or an age: 1h, 7d)")


def history_path(app: Conveyor) -> Path:
    """Where ``app``'s history file lives unless told (see the module's documentation)."""
    given = os.environ.get("CONVEYOR_DASHBOARD_HISTORY")
    if given:
        return Path(given).expanduser().resolve()
    url = app.broker.url
    if url.startswith("sqlite:"):
        broker_file = path_from_url(url)
        return broker_file.with_name(broker_file.stem + "-history.sqlite3")
    digest = hashlib.sha256(f"{redact_url(url)}\0{app.main}".encode()).hexdigest()[:16]
    if url.startswith("memory:"):  # a memory broker lives as long as this process
        return _scratch() / f"history-{digest}.sqlite3"
    state = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(state) / "conveyor" / f"history-{digest}.sqlite3"


@functools.cache
def _scratch() -> Path:
    """A directory of this process, removed when it exits (histories of memory brokers)."""
    path = Path(tempfile.mkdtemp(prefix="conveyor-history-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


class TaskHistory:
    """Reads (and, for :mod:`.indexer`, writes) the history file at ``path``."""

    def __init__(self, path: Path, *, keep: float = DEFAULT_KEEP) -> None:
        self.path = path
        self.keep = keep
        self.db = Database(
            path, component="task-history", migrations=MIGRATIONS, error=HistoryError
        )

    def close(self) -> None:
        self.db.close()

    # -- the list ------------------------------------------------------------------------
    def resolve(self, where: TaskFilter) -> TaskFilter:
        """``where`` with its argument search looked up once (a page lists and counts with
        it): the newest MAX_SEARCH rows whose arguments hold the text."""
        if len(where.search) < 3 or where.matched is not None:
            return where
        with self.db.read() as conn:
            found = conn.execute(
                f"SELECT rowid FROM {SEARCH} WHERE {SEARCH} MATCH ? ORDER BY rowid DESC LIMIT ?",
                (_phrase(where.search), MAX_SEARCH),
            ).fetchall()
        return replace(where, matched=json.dumps([row[0] for row in found]))

    def tasks(
        self, where: TaskFilter, *, limit: int = 50, before: tuple[float, int] | None = None
    ) -> list[tuple[TaskRow, int]]:
        """The newest ``limit`` tasks matching ``where`` (by first sight, newest first), each
        with its row number (the cursor of the next page): those older than ``before``."""
        found: list[tuple[TaskRow, int]] = []
        with self.db.read() as conn:
            for part in self._exact(conn, where):
                condition, params = part.where()
                if before is not None:  # the first term bounds the index range
                    condition += " AND h.first_at <= ? AND (h.first_at < ? OR h.rowid < ?)"
                    params += [before[0], before[0], before[1]]
                sql = (
                    f"SELECT {_prefixed()}, h.rowid FROM {TABLE} h WHERE {condition} "
                    "ORDER BY h.first_at DESC, h.rowid DESC LIMIT ?"
                )
                rows = conn.execute(sql, [*params, limit]).fetchall()
                found += [(TaskRow(*row[:-1]), int(row[-1])) for row in rows]
        found.sort(key=lambda item: (item[0].first_at, item[1]), reverse=True)
        return found[:limit]

    def count(self, where: TaskFilter, *, cap: int = 1_000_000_000) -> int:
        """How many tasks match ``where`` (counting stops at ``cap``)."""
        total = 0
        with self.db.read() as conn:
            for part in self._exact(conn, where):
                condition, params = part.where()
                sql = f"SELECT COUNT(*) FROM (SELECT 1 FROM {TABLE} h WHERE {condition} LIMIT ?)"
                total += int(conn.execute(sql, [*params, cap - total]).fetchone()[0])
                if total >= cap:
                    break
        return total

    def ids(self, where: TaskFilter, *, states: Sequence[str] = (), limit: int) -> list[str]:
        """Ids of up to ``limit`` tasks matching ``where`` and in one of ``states``."""
        found: list[str] = []
        with self.db.read() as conn:
            for part in self._exact(conn, where):
                condition, params = part.where()
                if states:
                    condition += f" AND h.state IN ({marks(len(states))})"
                    params += list(states)
                sql = (
                    f"SELECT h.id FROM {TABLE} h WHERE {condition} ORDER BY h.first_at DESC LIMIT ?"
                )
                found += [row[0] for row in conn.execute(sql, [*params, limit - len(found)])]
                if len(found) >= limit:
                    break
        return found

    def _exact(self, conn: sqlite3.Connection, where: TaskFilter) -> list[TaskFilter]:
        """``where`` as filters on exact task names: a name glob becomes one filter per
        matching name (there are few names), so each query walks the (name, first_at) index
        instead of sorting every match."""
        if not _is_glob(where.name):
            return [where]
        names = [row[0] for row in conn.execute(_skip_scan("name"), (MAX_NAMES,))]
        return [replace(where, name=n) for n in names if fnmatch.fnmatchcase(n, where.name)]

    def distinct(self, column: str, limit: int = 200) -> list[str]:
        """Values of ``column`` (queue, worker) among tasks, for the filter's choices."""
        if column not in ("queue", "worker"):
            raise ValueError(column)
        with self.db.read() as conn:
            return [row[0] for row in conn.execute(_skip_scan(column), (limit,))]

    # -- one task ------------------------------------------------------------------------
    def get(self, task_id: str) -> TaskRow | None:
        with self.db.read() as conn:
            row = conn.execute(f"SELECT {_COLUMNS} FROM {TABLE} WHERE id = ?", (task_id,))
            found = row.fetchone()
        return TaskRow(*found) if found else None

    def get_many(self, task_ids: Sequence[str]) -> dict[str, TaskRow]:
        found: dict[str, TaskRow] = {}
        with self.db.read() as conn:
            for part in chunks(list(task_ids)):
                sql = f"SELECT {_COLUMNS} FROM {TABLE} WHERE id IN ({marks(len(part))})"
                for row in conn.execute(sql, list(part)):
                    found[row[0]] = TaskRow(*row)
        return found

    def timeline(self, task_id: str, limit: int = 500) -> list[TaskEvent]:
        with self.db.read() as conn:
            rows = conn.execute(
                f"SELECT at, type, hostname, detail FROM {EVENTS} WHERE task_id = ? "
                "ORDER BY at, rowid LIMIT ?",
                (task_id, limit),
            ).fetchall()
        return [TaskEvent(*row) for row in rows]

    def related(self, column: str, value: str, limit: int = 200) -> list[TaskRow]:
        """Tasks whose ``column`` (parent_id, root_id, group_id, retry_of) is ``value``,
        oldest first."""
        if column not in ("parent_id", "root_id", "group_id", "retry_of"):
            raise ValueError(column)
        with self.db.read() as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM {TABLE} WHERE {column} = ? ORDER BY first_at LIMIT ?",
                (value, limit),
            ).fetchall()
        return [TaskRow(*row) for row in rows]

    def lost_at(self) -> float | None:
        """When the indexer last found events trimmed from the stream before it read them
        (None: never)."""
        with self.db.read() as conn:
            row = conn.execute(f"SELECT MAX(lost_at) FROM {POSITION}").fetchone()
        return float(row[0]) if row and row[0] else None

    # -- charts --------------------------------------------------------------------------
    def buckets(self, since: float, width: float, count: int) -> list[Bucket]:
        """``count`` buckets of ``width`` seconds from ``since`` (all queues together)."""
        first = int(since // 60)
        with self.db.read() as conn:
            rows = conn.execute(
                f"SELECT minute, SUM(sent), SUM(succeeded), SUM(failed), SUM(retried), "
                f"SUM(runtime_sum), MAX(runtime_max) FROM {MINUTES} WHERE minute >= ? "
                "GROUP BY minute",
                (first,),
            ).fetchall()
        out = [Bucket(since + i * width) for i in range(count)]
        for minute, sent, ok, failed, retried, runtime_sum, runtime_max in rows:
            index = int((minute * 60 - since) // width)
            if 0 <= index < count:
                b = out[index]
                out[index] = replace(
                    b,
                    sent=b.sent + sent,
                    succeeded=b.succeeded + ok,
                    failed=b.failed + failed,
                    retried=b.retried + retried,
                    runtime_sum=b.runtime_sum + runtime_sum,
                    runtime_max=max(b.runtime_max, runtime_max),
                )
        return out

    # -- writes (the dashboard's own) --------------------------------------------------
    def record_retry(self, original: TaskRow, new_id: str, at: float | None = None) -> None:
        """Note that ``new_id`` was sent as a retry of ``original`` (its page links back)."""
        now = time.time() if at is None else at
        row = TaskRow(
            new_id,
            name=original.name,
            queue=original.queue,
            state="QUEUED",
            first_at=now,
            at=now,
            args=original.args,
            parent_id=original.parent_id,
            root_id=original.root_id,
            retry_of=original.id,
        )
        with self.db.write() as conn:
            old = load_rows(conn, [new_id])
            merged = row if new_id not in old else replace(old[new_id][0], retry_of=original.id)
            store_rows(conn, [merged], old)


def _skip_scan(column: str) -> str:
    """The distinct non-empty values of ``column`` along its index: one seek per value."""
    return (
        f"WITH RECURSIVE v(x) AS (SELECT MIN({column}) FROM {TABLE} UNION ALL "
        f"SELECT (SELECT MIN({column}) FROM {TABLE} WHERE {column} > v.x) FROM v "
        f"WHERE v.x IS NOT NULL) SELECT x FROM v WHERE x IS NOT NULL AND x != '' LIMIT ?"
    )


def _prefixed() -> str:
    return ", ".join(f"h.{c.strip()}" for c in _COLUMNS.split(","))


def load_rows(conn: sqlite3.Connection, ids: Sequence[str]) -> dict[str, tuple[TaskRow, int]]:
    """The stored rows of ``ids`` with their rowids."""
    found: dict[str, tuple[TaskRow, int]] = {}
    for part in chunks(list(ids)):
        sql = f"SELECT {_COLUMNS}, rowid FROM {TABLE} WHERE id IN ({marks(len(part))})"
        for row in conn.execute(sql, list(part)):
            found[row[0]] = (TaskRow(*row[:-1]), int(row[-1]))
    return found


def store_rows(
    conn: sqlite3.Connection, rows: Iterable[TaskRow], old: dict[str, tuple[TaskRow, int]]
) -> None:
    """Write ``rows`` (merged already with ``old``, the stored rows from :func:`load_rows`),
    keeping the argument search index in step. Unchanged rows are skipped; new and changed
    ones are written with one statement each (executemany)."""
    columns = [c.strip() for c in _COLUMNS.split(",")]
    assignments = ", ".join(f"{c} = ?" for c in columns[1:])
    rows = list(rows)
    new = [row for row in rows if row.id not in old]
    changed = [(row, old[row.id]) for row in rows if row.id in old and row != old[row.id][0]]
    conn.executemany(
        f"INSERT INTO {TABLE} ({_COLUMNS}) VALUES ({marks(len(columns))})",
        [row.values() for row in new],
    )
    conn.executemany(
        f"UPDATE {TABLE} SET {assignments} WHERE rowid = ?",
        [(*row.values()[1:], rowid) for row, (_, rowid) in changed],
    )
    searched = [row for row in new if row.args]
    if searched:
        rowids = {
            task_id: rowid
            for task_id, (_, rowid) in load_rows(conn, [r.id for r in searched]).items()
        }
        conn.executemany(
            f"INSERT INTO {SEARCH} (rowid, args) VALUES (?, ?)",
            [(rowids[row.id], row.args) for row in searched],
        )
    for row, (before, rowid) in changed:
        if row.args == before.args:
            continue
        if before.args:
            conn.execute(
                f"INSERT INTO {SEARCH} ({SEARCH}, rowid, args) VALUES ('delete', ?, ?)",
                (rowid, before.args),
            )
        if row.args:
            conn.execute(f"INSERT INTO {SEARCH} (rowid, args) VALUES (?, ?)", (rowid, row.args))
