"""The dashboard's pages and actions, free of any web framework: what each page shows (a
template and its values) and what each action does. The standalone server
(:mod:`conveyor.dashboard.views`, Starlette) and the Django views
(:mod:`conveyor.contrib.django.dashboard`) adapt requests to these calls, so both serve the
same pages. Calls here are blocking (broker reads): adapters run them off their event loop."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import quote

from jinja2 import Environment, FileSystemLoader, select_autoescape

from ..describe import ago, preview, when
from ..utils.redaction import redact_text
from .audit import AuditLog
from .errors import BadRequest as BadRequest  # re-exported: the adapters import it here
from .fleet import DeadLetterFilter, Fleet
from .history import TaskHistory, history_path
from .indexer import HistoryIndexer
from .operations import ActionError
from .ops_pages import OpsPages
from .schedules import ScheduleSource
from .taskpages import TASK_ACTIONS, TaskPages

TEMPLATES = Path(__file__).with_name("templates")
STATIC = Path(__file__).with_name("static")
#: Longest filter value or id accepted from a request.
MAX_FILTER = 200
MAX_ID = 255
#: Pages whose changing part is streamed by the live endpoint.
LIVE_PAGES = ("overview", "queues", "workers", "dead", "scheduled", "retries", "tasks", "task")


def live_digest(html: str) -> str:
    """What identifies a rendering of a live block: the page's ``data-live-digest``, the
    stream's event ids (``Last-Event-ID`` when the browser reconnects)."""
    return hashlib.blake2b(html.encode(), digest_size=8).hexdigest()


def live_event(html: str, shown: str | None) -> tuple[str, str | None]:
    """The server-sent text for a rendering ``html`` of a live block, and the digest the
    browser shows after it: an event carrying the block (its digest as the event id) when it
    differs from ``shown`` (the browser's), else a comment that keeps proxies from closing
    the stream. Never the same block twice: a redraw would swallow a click on it."""
    digest = live_digest(html)
    if digest == shown:
        return ": still here\n\n", shown
    data = "\n".join(f"data: {line}" for line in html.splitlines() or [""])
    return f"id: {digest}\nevent: live\n{data}\n\n", digest


class Pages:
    """Every page (:meth:`context` + :meth:`render`) and action (:meth:`act`) of one app.
    ``schedules``: periodic tasks kept outside the code (the Django mount's database ones)."""

    def __init__(
        self,
        fleet: Fleet,
        audit: AuditLog,
        read_only: bool,
        schedules: ScheduleSource | None = None,
        history: TaskHistory | None = None,
    ) -> None:
        self.fleet = fleet
        self.audit = audit
        self.read_only = read_only
        #: The task history (see :mod:`.history`); the adapter starts ``indexer``'s thread.
        self.history = history or TaskHistory(history_path(fleet.app))
        self.indexer = HistoryIndexer(lambda: fleet.app.broker.streams, self.history)
        self.task_pages = TaskPages(fleet, self.history, self.indexer)
        self.env = Environment(
            loader=FileSystemLoader(TEMPLATES),
            autoescape=select_autoescape(["html"]),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters.update(
            ago=ago, when=when, preview=partial(preview, redacted=True), redact=redact_text
        )
        self._builders: dict[str, Callable[[Mapping[str, str]], dict[str, Any]]] = {
            "overview": self._overview,
            "dead": self._dead,
            "tasks": self.task_pages.tasks,
            "task": self.task_pages.task,
            "audit": self._audit,
        }
        # The operations pages (Workers, Queues, Scheduled, Retries, Periodic): ops_pages.py.
        ops = OpsPages(fleet, audit, schedules)
        self._builders.update({k: _refusing(v) for k, v in ops.builders().items()})
        self._ops_actions = {k: _refusing(v) for k, v in ops.actions().items()}

    # -- pages ---------------------------------------------------------------------------
    def context(self, page: str, params: Mapping[str, str]) -> dict[str, Any]:
        """The values of ``page`` for the request's ``params`` (query string and path)."""
        build = self._builders.get(page)
        if build is None:
            raise BadRequest(404, "no such page")
        return {"page": page, "app_name": self.fleet.app.main or "conveyor", **build(params)}

    def render(self, page: str, context: Mapping[str, Any]) -> str:
        """The whole page; ``context`` also holds the adapter's root, token and read_only.
        A live page carries its live block's digest, so the stream sends only changes."""
        if page in LIVE_PAGES:
            context = {**context, "live_digest": live_digest(self.render_live(page, context))}
        return self.env.get_template(f"{page}.html").render(context)

    def render_live(self, page: str, context: Mapping[str, Any]) -> str:
        """Only the page's ``live`` block (what the live endpoint streams)."""
        if page not in LIVE_PAGES:
            raise BadRequest(404, "no live updates for this page")
        template = self.env.get_template(f"{page}.html")
        block = template.blocks["live"]
        return "".join(block(template.new_context(dict(context))))

    def render_error(self, status: int, message: str, root: str) -> str:
        context = {"status": status, "message": message, "page": "error", "root": root}
        return self.env.get_template("error.html").render(context)

    def _overview(self, params: Mapping[str, str]) -> dict[str, Any]:
        queues, workers = self.fleet.queues(), self.fleet.workers()
        totals = {
            kind: sum(getattr(s, kind) for s in queues.values())
            for kind in ("ready", "delayed", "leased", "dead")
        }
        charts = self.task_pages.overview(params)
        return {"queues": queues, "workers": workers, "totals": totals, **charts}

    def _dead(self, params: Mapping[str, str]) -> dict[str, Any]:
        where = dead_filter(params)
        letters = self.fleet.dead_letters(where)
        return {
            "letters": letters,
            "count": self.fleet.count_dead(where),
            "where": where,
            "queue_names": sorted(self.fleet.queues()),
            "reasons": sorted({d.reason for d in letters} | {where.reason} - {""}),
        }

    def _audit(self, params: Mapping[str, str]) -> dict[str, Any]:
        return {"entries": self.audit.entries()}

    # -- actions -------------------------------------------------------------------------
    def act(self, action: str, fields: Mapping[str, str], ids: Sequence[str], who: str) -> str:
        """Do ``action`` with a form's ``fields`` (and selected ``ids``), write it to the audit
        log as done by ``who``, and return the path (below the root) to show next."""
        if self.read_only:
            raise BadRequest(403, "the dashboard is read-only")
        ids = [i for i in ids if 0 < len(i) <= MAX_ID]
        if action in self._ops_actions:
            target, count, back = self._ops_actions[action](fields, ids)
        elif action in ("replay-dead", "purge-dead"):
            where = dead_filter(fields)
            replay = action == "replay-dead"
            if fields.get("scope") == "matching":
                count = self.fleet.move_matching_dead(where, replay=replay)
                target = f"dead letters matching {where.describe()}"
            elif ids:
                count = (self.fleet.replay_dead if replay else self.fleet.purge_dead)(ids)
                target = f"dead letters {', '.join(ids[:5])}{' ...' if len(ids) > 5 else ''}"
            else:
                raise BadRequest(400, "select dead letters first")
            back = f"/dead?{where.query()}" if where.query() else "/dead"
        elif action in ("revoke", "terminate"):
            task_id = required(fields, "task_id")
            count = self.fleet.revoke(task_id, action == "terminate")
            target, back = f"task {task_id}", task_path(task_id)
        elif action in TASK_ACTIONS:
            count, target, back = self.task_pages.act(action, fields, ids)
        else:
            raise BadRequest(404, f"no action {action!r}")
        self.fleet.forget_counts()
        self.audit.record(who, action, target, count)
        return back


def _refusing[**P, R](call: Callable[P, R]) -> Callable[P, R]:
    """``call`` with its refusals (ActionError) raised as BadRequest."""

    def refusing(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return call(*args, **kwargs)
        except ActionError as exc:
            raise BadRequest(exc.status, exc.message) from None

    return refusing


def task_path(task_id: str) -> str:
    return f"/tasks/{quote(task_id, safe='')}"


def dead_filter(values: Mapping[str, str]) -> DeadLetterFilter:
    """The dead-letter filter of a query string or form; over-long values are refused."""
    found = {}
    for name in ("queue", "reason", "search"):
        value = str(values.get(name) or "").strip()
        if len(value) > MAX_FILTER:
            raise BadRequest(400, f"the {name} filter is longer than {MAX_FILTER} characters")
        found[name] = value
    return DeadLetterFilter(**found)


def required(fields: Mapping[str, str], name: str) -> str:
    value = fields.get(name, "").strip()
    if not value or len(value) > MAX_ID:
        raise BadRequest(400, f"the form has no valid {name}")
    return value
