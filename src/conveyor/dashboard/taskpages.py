"""The history side of the dashboard: the task list (filters, pages, bulk revoke and retry),
a task's page (arguments, result, timeline, retries, family, workflow graph) and the
overview's charts. Framework-free like :mod:`.pages`, which routes to these."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import quote, urlencode

from ..exceptions import ConveyorError
from ..message import from_json_value
from ..results.base import ResultRecord
from ..states import READY_STATES
from ..utils.redaction import redact_arguments, redact_value
from . import charts, workflow
from .errors import BadRequest
from .fleet import Fleet
from .history import STATES, UNFINISHED, TaskFilter, TaskHistory, TaskRow, parse_time
from .indexer import BATCH, HistoryIndexer

logger = logging.getLogger("conveyor.dashboard")

MAX_FILTER = 200
MAX_ID = 255
PAGE_SIZES = (25, 50, 100, 200)
#: Most tasks one "everything matching" action changes.
MAX_BULK_REVOKE = 100_000
MAX_BULK_RETRY = 10_000
#: Counting stops here (the page says "more than"): a count walks its index, and "everything
#: matching" acts on at most MAX_BULK_REVOKE tasks anyway.
COUNT_CAP = 100_000
#: States a task may be retried from (the bulk action retries FAILURE ones).
RETRYABLE = ("FAILURE", "REVOKED", "DEAD", "EXPIRED")
#: The overview's chart ranges: seconds covered and bucket width.
RANGES = {"hour": (3600.0, 60.0), "day": (86400.0, 900.0)}
TASK_ACTIONS = ("revoke-tasks", "terminate-tasks", "retry-tasks", "retry")
_CURSOR = re.compile(r"^(\d{1,12}(?:\.\d{1,9})?)_(\d{1,19})$")


class TaskPages:
    """Pages and actions over ``history`` (kept current by ``indexer``) and ``fleet``."""

    def __init__(self, fleet: Fleet, history: TaskHistory, indexer: HistoryIndexer) -> None:
        self.fleet = fleet
        self.history = history
        self.indexer = indexer

    @contextlib.contextmanager
    def _closing(self) -> Iterator[None]:
        """Close the history's connections after a request: a page opens one or two (about
        a millisecond), and nothing is left open when the dashboard is dropped unclosed."""
        try:
            yield
        finally:
            self.history.close()

    def refresh(self) -> bool:
        """Fold the newest events before a page reads the history (one batch, after the
        background thread's if it is folding); True if more are waiting (it is behind)."""
        try:
            return self.indexer.catch_up() >= BATCH
        except NotImplementedError:
            return False  # the broker keeps no streams (the thread said so once)
        except (ConveyorError, ValueError) as exc:
            logger.warning("history: cannot fold events: %s", exc)
            return False

    # -- the list ------------------------------------------------------------------------
    def tasks(self, params: Mapping[str, str]) -> dict[str, Any]:
        with self._closing():
            return self._tasks(params)

    def _tasks(self, params: Mapping[str, str]) -> dict[str, Any]:
        where = parse_filter(params)
        before = parse_cursor(params.get("before", ""))
        size = parse_size(params.get("size", ""))
        behind = self.refresh()
        shown = where
        where = self.history.resolve(where)
        found = self.history.tasks(where, limit=size + 1, before=before)
        rows = found[:size]
        more = len(found) > size
        base = shown.fields()
        if size != 50:
            base["size"] = str(size)
        older = None
        if more:
            last, rowid = rows[-1]
            older = _query({**base, "before": f"{last.first_at!r}_{rowid}"})
        count = self.history.count(where, cap=COUNT_CAP)
        # The history's queues (and the default one): counting the broker's would cost as
        # much as the page with a million messages queued.
        queues = set(self.history.distinct("queue")) | {self.fleet.app.conf.task_default_queue}
        return {
            "rows": [row for row, _ in rows],
            "count": count,
            "behind": behind,
            "lost_at": self.history.lost_at(),
            "count_text": f"more than {COUNT_CAP:,}" if count >= COUNT_CAP else f"{count:,}",
            "where": shown,
            "size": size,
            "older": older,
            "newest": _query(base) if before is not None else None,
            "states": STATES,
            "queue_names": sorted(queues | ({where.queue} - {""})),
            "worker_names": sorted(set(self.history.distinct("worker")) | ({where.worker} - {""})),
            "can_revoke_matching": where.state in UNFINISHED,
            "can_retry_matching": where.state == "FAILURE",
            "unfinished": UNFINISHED,
            "retryable": RETRYABLE,
            "max_revoke": MAX_BULK_REVOKE,
            "max_retry": MAX_BULK_RETRY,
        }

    # -- one task ------------------------------------------------------------------------
    def task(self, params: Mapping[str, str]) -> dict[str, Any]:
        with self._closing():
            return self._task(params)

    def _task(self, params: Mapping[str, str]) -> dict[str, Any]:
        task_id = params.get("task_id", "")
        if not 0 < len(task_id) <= MAX_ID:
            raise BadRequest(404, "no such task")
        self.refresh()
        record = self.fleet.task(task_id)
        row = self.history.get(task_id)
        if record is None and row is None:
            raise BadRequest(
                404, f"no task with id {task_id!r} in the result store or the task history"
            )
        state = merged_state(record, row)
        start = row or TaskRow(  # known from the result store only (its events are gone)
            task_id,
            name=(record.name if record else None) or "",
            state=state,
            parent_id=record.parent_id if record else None,
            root_id=record.root_id if record else None,
            group_id=record.group_id if record else None,
        )
        family = workflow.family(start, self.history.related, self.history.get)
        children = self.history.related("parent_id", task_id)
        listed = {c.id for c in children}
        extra = [c for c in (record.children or []) if c not in listed] if record else []
        return {
            "task_id": task_id,
            "record": record,
            "row": row,
            "state": state,
            "shown": _shown(record),
            "progress": _progress(record),
            "timeline": self.history.timeline(task_id),
            "children": children,
            "other_children": extra,
            "retried_as": self.history.related("retry_of", task_id),
            "graph": workflow.draw(family, task_id) if len(family) > 1 else "",
            "family_size": len(family),
            "can_retry": state in RETRYABLE,
            "args_kept": record is not None and record.args is not None,
            "can_revoke": state not in READY_STATES and state not in RETRYABLE,
        }

    # -- the overview's charts -------------------------------------------------------------
    def overview(self, params: Mapping[str, str]) -> dict[str, Any]:
        with self._closing():
            return self._overview(params)

    def _overview(self, params: Mapping[str, str]) -> dict[str, Any]:
        span_name = params.get("range", "") or "hour"
        if span_name not in RANGES:
            raise BadRequest(400, f"no range {span_name[:40]!r}: give hour or day")
        span, width = RANGES[span_name]
        self.refresh()
        count = int(span // width)
        now = time.time()
        since = (math.floor(now / width) + 1) * width - span
        buckets = self.history.buckets(since, width, count)
        starts = [b.start for b in buckets]
        per = "min" if width == 60 else f"{int(width // 60)} min"
        done = charts.bars(
            f"Tasks done per {per}",
            starts,
            [
                charts.Series("succeeded", "ok", [b.succeeded for b in buckets]),
                charts.Series("failed", "failed", [b.failed for b in buckets]),
                charts.Series("retried", "retried", [b.retried for b in buckets]),
            ],
        )
        runtime = charts.line(
            "Runtime (s)",
            starts,
            [
                charts.Series("average", "runtime", [b.runtime_avg for b in buckets]),
                charts.Series("longest", "runtime-max", [b.runtime_max for b in buckets]),
            ],
            " s",
        )
        totals = {
            "succeeded": sum(b.succeeded for b in buckets),
            "failed": sum(b.failed for b in buckets),
            "sent": sum(b.sent for b in buckets),
        }
        return {
            "range": span_name,
            "charts": [done, runtime],
            "done_totals": totals,
            "oldest": self.fleet.oldest_ages(),
        }

    # -- actions -------------------------------------------------------------------------
    def act(
        self, action: str, fields: Mapping[str, str], ids: Sequence[str]
    ) -> tuple[int, str, str]:
        """Do ``action``; return (how many changed, what on for the audit log, where next)."""
        with self._closing():
            return self._act(action, fields, ids)

    def _act(
        self, action: str, fields: Mapping[str, str], ids: Sequence[str]
    ) -> tuple[int, str, str]:
        where = self.history.resolve(parse_filter(fields))
        back = "/tasks" + (f"?{where.query()}" if where.query() else "")
        matching = fields.get("scope") == "matching"
        if action == "retry":
            task_id = _required(fields, "task_id")
            new_id = self.retry(task_id)
            if new_id is None:
                raise BadRequest(
                    409,
                    f"task {task_id} cannot be retried: its arguments were not kept (turn on "
                    "result_extended so the result store keeps them)",
                )
            return 1, f"task {task_id} (as {new_id})", task_path(new_id)
        if action in ("revoke-tasks", "terminate-tasks"):
            verb = action.partition("-")[0]
            if matching:
                if where.state not in UNFINISHED:
                    raise BadRequest(400, f"filter on an unfinished state to {verb} every match")
                chosen = self.history.ids(where, states=UNFINISHED, limit=MAX_BULK_REVOKE)
                target = f"tasks matching {where.describe()}"
            else:
                chosen = _selected(ids)
                target = _listed(chosen)
            if chosen:
                self.fleet.app.revoke(chosen, terminate=verb == "terminate")
            return len(chosen), target, back
        if action == "retry-tasks":
            if matching:
                if where.state != "FAILURE":
                    raise BadRequest(400, "filter on state FAILURE to retry every match")
                chosen = self.history.ids(where, states=("FAILURE",), limit=MAX_BULK_RETRY)
                target = f"failed tasks matching {where.describe()}"
            else:
                chosen = _selected(ids)
                target = _listed(chosen)
            retried = [new for new in (self.retry(i) for i in chosen) if new is not None]
            skipped = len(chosen) - len(retried)
            if skipped:
                target += f" ({skipped} not retried: arguments not kept or not retryable)"
            return len(retried), target, back
        raise BadRequest(404, f"no action {action!r}")

    def retry(self, task_id: str) -> str | None:
        """Send ``task_id`` again as a new task with the same arguments (from the result
        store, which keeps them with ``result_extended``); the new id, or None if the
        arguments were not kept or the task is not in a retryable state."""
        record = self.fleet.task(task_id)
        row = self.history.get(task_id)
        state = merged_state(record, row)
        name = (record.name if record else None) or (row.name if row else None)
        if state not in RETRYABLE or record is None or record.args is None or not name:
            return None
        try:
            args = from_json_value(record.args)
            kwargs = from_json_value(record.kwargs or {})
        except (ValueError, TypeError, RecursionError):
            return None
        queue = record.queue or (row.queue if row else None)
        options: dict[str, object] = {"queue": queue} if queue else {}
        result = self.fleet.app.send_task(name, args, kwargs, **options)
        original = row or TaskRow(task_id, name=name, queue=queue or "")
        self.history.record_retry(original, result.id)
        return result.id


def parse_filter(values: Mapping[str, str]) -> TaskFilter:
    """The task filter of a query string or form; BadRequest(400) for a malformed one."""
    found: dict[str, str] = {}
    for name in ("state", "name", "queue", "worker", "since", "until", "search"):
        value = str(values.get(name) or "").strip()
        if len(value) > MAX_FILTER:
            raise BadRequest(400, f"the {name} filter is longer than {MAX_FILTER} characters")
        if any(ord(c) < 32 for c in value):
            raise BadRequest(400, f"the {name} filter holds control characters")
        found[name] = value
    state = found["state"].upper()
    if state and state not in STATES:
        shown = found["state"][:40]
        raise BadRequest(400, f"no task state {shown!r}: give one of {', '.join(STATES)}")
    times: dict[str, float | None] = {}
    for name in ("since", "until"):
        try:
            times[name] = parse_time(found[name]) if found[name] else None
        except (ValueError, OverflowError) as exc:
            raise BadRequest(400, f"the {name} filter: {exc}") from None
    since, until = times["since"], times["until"]
    if since is not None and until is not None and since >= until:
        raise BadRequest(400, "the since filter is not before the until filter")
    return TaskFilter(
        state=state,
        name=found["name"],
        queue=found["queue"],
        worker=found["worker"],
        since=since,
        until=until,
        search=found["search"],
    )


def merged_state(record: ResultRecord | None, row: TaskRow | None) -> str:
    """A task's state from its result record and its history row: a finished one wins (a
    task revoked or dead-lettered before it ran has no record saying so), then the record's
    (custom states such as PROGRESS), then the row's."""
    if record is not None and record.state in READY_STATES:
        return record.state
    if row is not None and (row.state in READY_STATES or row.state in RETRYABLE):
        return row.state
    if record is not None:
        return record.state
    return row.state if row is not None else "PENDING"


def parse_cursor(text: str) -> tuple[float, int] | None:
    if not text:
        return None
    match = _CURSOR.match(text)
    if not match:
        raise BadRequest(400, "malformed page position (before=): follow the page's links")
    return float(match.group(1)), int(match.group(2))


def parse_size(text: str) -> int:
    if not text:
        return 50
    if not text.isdigit() or int(text) not in PAGE_SIZES:
        raise BadRequest(400, f"page size is one of {', '.join(map(str, PAGE_SIZES))}")
    return int(text)


def task_path(task_id: str) -> str:
    return f"/tasks/{quote(task_id, safe='')}"


def _query(fields: Mapping[str, str]) -> str:
    return urlencode(fields)


def _required(fields: Mapping[str, str], name: str) -> str:
    value = fields.get(name, "").strip()
    if not value or len(value) > MAX_ID:
        raise BadRequest(400, f"the form has no valid {name}")
    return value


def _selected(ids: Sequence[str]) -> list[str]:
    chosen = list(dict.fromkeys(i for i in ids if 0 < len(i) <= MAX_ID))
    if not chosen:
        raise BadRequest(400, "select tasks first")
    if len(chosen) > 1000:
        raise BadRequest(400, "select at most 1000 tasks (or act on everything matching)")
    return chosen


def _listed(ids: Sequence[str]) -> str:
    return f"tasks {', '.join(ids[:5])}{' ...' if len(ids) > 5 else ''}"


def _shown(record: ResultRecord | None) -> dict[str, str]:
    """Arguments (secrets hidden by the logs' rules) and result of ``record`` as text."""
    if record is None:
        return {"args": "", "kwargs": "", "result": ""}
    args: object = None
    kwargs: object = None
    try:
        if record.args is not None or record.kwargs is not None:
            decoded_args = from_json_value(record.args or [])
            decoded_kwargs = from_json_value(record.kwargs or {})
            if isinstance(decoded_kwargs, dict):
                args, kwargs = redact_arguments(decoded_args, decoded_kwargs)
            else:
                args, kwargs = redact_arguments(decoded_args, {})
    except (ValueError, TypeError, RecursionError, ConveyorError):
        args, kwargs = "<arguments that do not decode>", None
    result: object = None
    if record.result is not None:
        try:
            result = redact_value(from_json_value(record.result))
        except (ValueError, TypeError, RecursionError, ConveyorError):
            result = repr(record.result)
    return {"args": _text(args), "kwargs": _text(kwargs) if kwargs else "", "result": _text(result)}


def _progress(record: ResultRecord | None) -> dict[str, object] | None:
    """The meta of a running task's custom state (``PROGRESS``: ``{"current", "total"}``),
    with a percentage when it tells one."""
    if record is None or record.state in READY_STATES or not isinstance(record.result, dict):
        return None
    meta = record.result
    current, total = meta.get("current"), meta.get("total")
    percent = None
    if isinstance(current, int | float) and isinstance(total, int | float) and total > 0:
        percent = max(0.0, min(100.0, 100.0 * current / total))
    return {"meta": _text(redact_value(meta)), "percent": percent}


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, indent=2, default=str)
    except (ValueError, TypeError, RecursionError):
        return repr(value)
