"""Folding the ``events`` stream into the task history (:mod:`.history`).

:meth:`HistoryIndexer.catch_up` is one write transaction on the history file: read the saved
stream position, read the events after it from the broker, fold them into the task rows, the
timeline and the per-minute counts, save the new position. Several processes may run it on
one file: the transaction serialises them, so an event is folded once. The dashboard runs it
in a background thread (:meth:`HistoryIndexer.start`) and, briefly, before a history page.

Events of one task may arrive out of order (the producer's ``task-sent`` is flushed by its own
process, perhaps after the worker's ``task-succeeded``, and stamped after its publish returned,
perhaps later than that event): a row takes the state of its worker event with the latest
timestamp (``task-sent``'s only until a worker's arrives), and every other field from
whichever event carries it.
"""

from __future__ import annotations

import copy
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence

from ..events.model import STATES, STREAM, Event, MalformedEvent, decode
from ..exceptions import ConveyorError
from ..streams import START, Streams
from .history import (
    EVENTS,
    MINUTES,
    POSITION,
    SEARCH,
    TABLE,
    TaskHistory,
    TaskRow,
    load_rows,
    store_rows,
)

logger = logging.getLogger("conveyor.dashboard")

#: Most events folded in one transaction.
BATCH = 2000
#: Seconds the background thread waits when it has caught up (and after an error: 5x).
INTERVAL = 1.0
#: Seconds between deletions of rows older than the history's ``keep``.
SWEEP_INTERVAL = 600.0
#: Rows deleted per sweep step (a long backlog is deleted over several transactions).
SWEEP_BATCH = 5000
#: Longest text kept of an event field (errors, arguments).
MAX_TEXT = 500
#: Event types whose hostname is the worker that ran the task.
_COUNTED = {"task-sent": 0, "task-succeeded": 1, "task-failed": 2, "task-retried": 3}
_WORKER_EVENTS = frozenset({"task-received", "task-started", "task-succeeded", "task-failed"})


class HistoryIndexer:
    """Keeps ``history`` up to date with the events in ``streams()`` (``app.broker.streams``)."""

    def __init__(self, streams: Callable[[], Streams], history: TaskHistory) -> None:
        self._streams = streams
        self.history = history
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def catch_up(self, limit: int = BATCH, wait: float = 5.0) -> int:
        """Fold up to ``limit`` new events; return how many were read (0 if another thread
        of this process kept folding for ``wait`` seconds)."""
        if not self._lock.acquire(timeout=wait):
            return 0
        try:
            with self.history.db.write() as conn:
                saved = conn.execute(
                    f"SELECT position, swept_at FROM {POSITION} WHERE stream = ?", (STREAM,)
                ).fetchone()
                position, swept_at = (saved[0], saved[1]) if saved else (None, 0.0)
                streams = self._streams()
                entries = streams.read(STREAM, position, limit=limit)
                if (
                    entries
                    and position not in (None, START)
                    and trimmed(streams, position or START)
                ):
                    logger.warning("history: events were trimmed before they were folded")
                    conn.execute(
                        f"UPDATE {POSITION} SET lost_at = ? WHERE stream = ?", (time.time(), STREAM)
                    )
                events = []
                for entry in entries:
                    try:
                        events.append(decode(entry.body, entry.position))
                    except MalformedEvent as exc:
                        logger.warning("history: skipping the event at %s: %s", entry.position, exc)
                fold(conn, events)
                now = time.time()
                if now - swept_at >= SWEEP_INTERVAL and sweep(conn, now - self.history.keep):
                    swept_at = now
                if entries or saved is None:
                    conn.execute(
                        f"INSERT INTO {POSITION} (stream, position, swept_at) VALUES (?, ?, ?) "
                        "ON CONFLICT (stream) DO UPDATE SET position = excluded.position, "
                        "swept_at = excluded.swept_at",
                        (STREAM, entries[-1].position if entries else "0", swept_at),
                    )
                elif swept_at != saved[1]:
                    conn.execute(
                        f"UPDATE {POSITION} SET swept_at = ? WHERE stream = ?", (swept_at, STREAM)
                    )
            return len(entries)
        finally:
            self._lock.release()

    # -- the background thread ---------------------------------------------------------
    def start(self) -> None:
        """Fold new events in a daemon thread until :meth:`stop` (idempotent)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, name="conveyor-dashboard-history", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                read = self.catch_up()
            except NotImplementedError as exc:  # the broker keeps no streams: it never will
                logger.warning("history: no task history: %s", exc)
                return
            except (ConveyorError, ValueError) as exc:
                logger.warning("history: cannot fold events: %s", exc)
                self._stop.wait(INTERVAL * 5)
                continue
            if read < BATCH:
                self._stop.wait(INTERVAL)


def trimmed(streams: Streams, position: str) -> bool:
    """Whether the stream dropped entries after ``position`` before they were read: its
    oldest kept entry comes after the one following ``position`` (numbered positions), or
    after ``position`` itself (Redis ids, whose next one is unknown)."""
    oldest = streams.read(STREAM, None, limit=1)
    if not oldest:
        return False
    try:
        first = tuple(int(part) for part in oldest[0].position.split("-"))
        saved = tuple(int(part) for part in position.split("-"))
    except ValueError:
        return False
    if len(first) == len(saved) == 1:
        return first[0] > saved[0] + 1
    return first > saved


def fold(conn: sqlite3.Connection, events: Sequence[Event]) -> None:
    """Fold task ``events`` into the rows, timeline and minute counts (one transaction)."""
    mine = [e for e in events if e.type in STATES and e.task_id]
    if not mine:
        return
    old = load_rows(conn, list({e.task_id or "" for e in mine}))
    rows: dict[str, TaskRow] = {task_id: copy.copy(found[0]) for task_id, found in old.items()}
    minutes: dict[tuple[int, str], list[float]] = {}
    timeline = []
    for event in mine:
        task_id = event.task_id or ""
        row = rows.get(task_id)
        if row is None:
            row = rows[task_id] = TaskRow(task_id, first_at=event.timestamp)
        fold_event(row, event)
        timeline.append((task_id, event.timestamp, event.type, event.hostname, _detail(event)))
        slot = _COUNTED.get(event.type)
        if slot is None:
            continue
        counts = minutes.setdefault((int(event.timestamp // 60), row.queue), [0, 0, 0, 0, 0, 0])
        counts[slot] += 1
        runtime = _number(event.fields.get("runtime"))
        if slot in (1, 2) and runtime is not None:
            counts[4] += runtime
            counts[5] = max(counts[5], runtime)
    store_rows(conn, rows.values(), old)
    conn.executemany(
        f"INSERT INTO {EVENTS} (task_id, at, type, hostname, detail) VALUES (?, ?, ?, ?, ?)",
        timeline,
    )
    conn.executemany(
        f"INSERT INTO {MINUTES} (minute, queue, sent, succeeded, failed, retried, runtime_sum, "
        "runtime_max) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (minute, queue) DO UPDATE SET "
        "sent = sent + excluded.sent, succeeded = succeeded + excluded.succeeded, "
        "failed = failed + excluded.failed, retried = retried + excluded.retried, "
        "runtime_sum = runtime_sum + excluded.runtime_sum, "
        "runtime_max = MAX(runtime_max, excluded.runtime_max)",
        [(minute, queue, *counts) for (minute, queue), counts in minutes.items()],
    )


def apply(row: TaskRow, event: Event) -> TaskRow:
    """A copy of ``row`` after ``event``."""
    row = copy.copy(row)
    fold_event(row, event)
    return row


def fold_event(row: TaskRow, event: Event) -> None:
    """Change ``row`` by what ``event`` tells (total: fields of the wrong type are ignored)."""
    f = event.fields
    ts = event.timestamp
    kind = event.type
    row.first_at = min(row.first_at or ts, ts)
    name, queue = f.get("name"), f.get("queue")
    if isinstance(name, str) and name and not row.name:
        row.name = name[:MAX_TEXT]
    if isinstance(queue, str) and queue and not row.queue:
        row.queue = queue[:MAX_TEXT]
    parent, root, group = f.get("parent_id"), f.get("root_id"), f.get("group_id")
    if isinstance(parent, str) and parent and row.parent_id is None:
        row.parent_id = parent[:MAX_TEXT]
    if isinstance(root, str) and root and row.root_id is None:
        row.root_id = root[:MAX_TEXT]
    if isinstance(group, str) and group and row.group_id is None:
        row.group_id = group[:MAX_TEXT]
    retries = f.get("retries")
    if isinstance(retries, int) and not isinstance(retries, bool) and retries > row.retries:
        row.retries = retries
    if kind == "task-sent":
        # The producer stamps task-sent after its publish returned, in its own process: a
        # worker may have run the task before that stamp. It never replaces a worker's state.
        latest = row.state == STATES["task-sent"] and ts >= row.at
    else:
        latest = ts >= row.at or row.state == STATES["task-sent"]
    if latest:
        row.state = STATES[kind]
        row.at = ts
    if kind != "task-sent" and event.hostname and (kind in _WORKER_EVENTS or not row.worker):
        row.worker = event.hostname[:MAX_TEXT]
    if kind == "task-sent":
        args, kwargs = _text(f.get("args")), _text(f.get("kwargs"))
        shown = " ".join(part for part in (args, kwargs if kwargs != "{}" else "") if part)
        if shown and not row.args:
            row.args = shown
    elif kind == "task-started":
        row.started_at = ts
    elif kind in ("task-succeeded", "task-failed"):
        row.done_at = ts
        runtime = _number(f.get("runtime"))
        if runtime is not None:
            row.runtime = runtime
    elif kind in ("task-revoked", "task-dead-lettered", "task-expired"):
        row.done_at = ts
    error = _error(event)
    if error:
        row.error = error
    elif kind == "task-succeeded" and latest:
        row.error = ""


def sweep(conn: sqlite3.Connection, cutoff: float) -> bool:
    """Delete up to SWEEP_BATCH rows (and their events) last changed before ``cutoff``, and
    the minute counts older than it; True when nothing older is left."""
    old = conn.execute(
        f"SELECT rowid, id, args FROM {TABLE} WHERE at < ? LIMIT ?", (cutoff, SWEEP_BATCH)
    ).fetchall()
    for rowid, _task_id, args in old:
        if args:
            conn.execute(
                f"INSERT INTO {SEARCH} ({SEARCH}, rowid, args) VALUES ('delete', ?, ?)",
                (rowid, args),
            )
    conn.executemany(f"DELETE FROM {TABLE} WHERE rowid = ?", [(r[0],) for r in old])
    conn.execute(
        f"DELETE FROM {EVENTS} WHERE rowid IN (SELECT rowid FROM {EVENTS} WHERE at < ? LIMIT ?)",
        (cutoff, SWEEP_BATCH * 5),
    )
    conn.execute(f"DELETE FROM {MINUTES} WHERE minute < ?", (int(cutoff // 60),))
    return len(old) < SWEEP_BATCH


def _text(value: object) -> str:
    if not isinstance(value, str):
        return ""
    return value if len(value) <= MAX_TEXT else value[: MAX_TEXT - 3] + "..."


def _number(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _error(event: Event) -> str:
    f = event.fields
    if event.type in ("task-failed", "task-retried"):
        return _text(f.get("exception"))
    if event.type in ("task-dead-lettered", "task-expired"):
        reason, detail = _text(f.get("reason")), _text(f.get("detail"))
        return _text(f"{reason}: {detail}" if detail else reason)
    return ""


def _detail(event: Event) -> str:
    """A short text of what ``event`` adds (the timeline's last column)."""
    f = event.fields
    if event.type == "task-succeeded" or event.type == "task-failed":
        runtime = _number(f.get("runtime"))
        took = f"in {runtime:.3f} s" if runtime is not None else ""
        return _text(" ".join(p for p in (took, _error(event)) if p))
    if event.type == "task-received":
        count = f.get("delivery_count")
        return f"delivery {count}" if isinstance(count, int) else ""
    if event.type == "task-retried":
        countdown = _number(f.get("countdown"))
        wait = f"again in {countdown:g} s" if countdown is not None else ""
        return _text(" ".join(p for p in (wait, _error(event)) if p))
    if event.type == "task-revoked":
        return "terminated" if f.get("terminated") is True else ""
    if event.type == "task-sent":
        eta = _number(f.get("eta"))
        return f"eta {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(eta))} UTC" if eta else ""
    return _error(event)
