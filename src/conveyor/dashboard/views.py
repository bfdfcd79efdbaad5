"""The dashboard's pages and actions. Pages are server-rendered (Jinja2, autoescaped); each
marks the part that updates itself (``{% block live %}``), which :meth:`Views.live` streams
as server-sent events. Actions are POSTed forms carrying a single-use token; each one is
written to the audit log."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse

from ..describe import ago, preview, when
from ..exceptions import ConveyorError
from ..message import from_json_value
from .audit import AuditLog
from .fleet import DeadLetterFilter, Fleet
from .security import FormTokens

TEMPLATES = Path(__file__).with_name("templates")
#: Seconds between two looks at the broker for a live page.
LIVE_INTERVAL = 2.0
#: Longest filter value accepted in a URL.
MAX_FILTER = 200

Handler = Callable[[Request], Awaitable[Response]]


class BadRequest(Exception):
    """A request the dashboard refuses with a 4xx page: ``status`` and a sentence."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Views:
    def __init__(self, fleet: Fleet, tokens: FormTokens, audit: AuditLog, read_only: bool) -> None:
        self.fleet = fleet
        self.tokens = tokens
        self.audit = audit
        self.read_only = read_only
        self.env = Environment(
            loader=FileSystemLoader(TEMPLATES),
            autoescape=select_autoescape(["html"]),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters.update(ago=ago, when=when, preview=preview)

    # -- rendering -----------------------------------------------------------------------
    def _context(self, request: Request, page: str, **values: Any) -> dict[str, Any]:
        return {
            "page": page,
            "app_name": self.fleet.app.main or "conveyor",
            "read_only": self.read_only,
            "token": self.tokens.issue(request.state.session),
            "query": request.url.query,
            "root": root_of(request),
            **values,
        }

    def render(self, name: str, context: dict[str, Any], status: int = 200) -> HTMLResponse:
        return HTMLResponse(self.env.get_template(name).render(context), status)

    def render_live(self, name: str, context: dict[str, Any]) -> str:
        template = self.env.get_template(name)
        block = template.blocks.get("live")
        if block is None:
            return ""
        return "".join(block(template.new_context(context)))

    # -- pages -----------------------------------------------------------------------------
    async def overview(self, request: Request) -> Response:
        return self.render("overview.html", await self._overview(request))

    async def _overview(self, request: Request) -> dict[str, Any]:
        queues, workers = await run_in_threadpool(
            lambda: (self.fleet.queues(), self.fleet.workers())
        )
        totals = {
            kind: sum(getattr(s, kind) for s in queues.values())
            for kind in ("ready", "delayed", "leased", "dead")
        }
        return self._context(request, "overview", queues=queues, workers=workers, totals=totals)

    async def queues(self, request: Request) -> Response:
        return self.render("queues.html", await self._queues(request))

    async def _queues(self, request: Request) -> dict[str, Any]:
        queues = await run_in_threadpool(self.fleet.queues)
        return self._context(request, "queues", queues=queues)

    async def workers(self, request: Request) -> Response:
        return self.render("workers.html", await self._workers(request))

    async def _workers(self, request: Request) -> dict[str, Any]:
        workers = await run_in_threadpool(self.fleet.workers)
        return self._context(request, "workers", workers=workers)

    async def dead_letters(self, request: Request) -> Response:
        return self.render("dead.html", await self._dead(request))

    async def _dead(self, request: Request) -> dict[str, Any]:
        where = dead_filter(request.query_params)
        letters = await run_in_threadpool(self.fleet.dead_letters, where)
        queues = await run_in_threadpool(self.fleet.queues)
        return self._context(
            request,
            "dead",
            letters=letters,
            where=where,
            queue_names=sorted(queues),
            reasons=sorted({d.reason for d in letters} | {where.reason} - {""}),
        )

    async def task(self, request: Request) -> Response:
        task_id = request.path_params["task_id"]
        if not 0 < len(task_id) <= 255:
            raise BadRequest(404, "no such task")
        record = await run_in_threadpool(self.fleet.task, task_id)
        if record is None:
            raise BadRequest(404, f"no task with id {task_id!r} in the result store")
        shown = {
            "result": _json_text(record.result),
            "args": _json_text(record.args),
            "kwargs": _json_text(record.kwargs),
        }
        return self.render("task.html", self._context(request, "task", record=record, shown=shown))

    async def find(self, request: Request) -> Response:
        """The header's task-id box."""
        task_id = request.query_params.get("id", "").strip()
        if not 0 < len(task_id) <= 255:
            raise BadRequest(400, "give a task id")
        target = f"{root_of(request)}/tasks/{quote(task_id, safe='')}"
        return RedirectResponse(target, status_code=303)

    async def audit_log(self, request: Request) -> Response:
        entries = await run_in_threadpool(self.audit.entries)
        return self.render("audit.html", self._context(request, "audit", entries=entries))

    # -- live updates ------------------------------------------------------------------------
    async def live(self, request: Request) -> Response:
        """Server-sent events: the live block of ``?page=``, sent when it changed."""
        pages: dict[str, tuple[str, Callable[[Request], Awaitable[dict[str, Any]]]]] = {
            "overview": ("overview.html", self._overview),
            "queues": ("queues.html", self._queues),
            "workers": ("workers.html", self._workers),
            "dead": ("dead.html", self._dead),
        }
        page = request.query_params.get("page", "")
        if page not in pages:
            raise BadRequest(404, "no live updates for this page")
        template, build = pages[page]

        async def stream() -> AsyncIterator[str]:
            last = None
            while not await request.is_disconnected():
                try:
                    html = self.render_live(template, await build(request))
                except ConveyorError as exc:
                    html = f'<p class="error">broker unreachable: {_escape(str(exc))}</p>'
                if html != last:
                    last = html
                    data = "\n".join(f"data: {line}" for line in html.splitlines() or [""])
                    yield f"event: live\n{data}\n\n"
                else:
                    yield ": still here\n\n"  # a comment keeps proxies from closing the stream
                await asyncio.sleep(LIVE_INTERVAL)

        return StreamingResponse(
            stream(), media_type="text/event-stream", headers={"x-accel-buffering": "no"}
        )

    # -- actions -------------------------------------------------------------------------
    async def action(self, request: Request) -> Response:
        """Every POST: check the token, do the action, audit it, and go back to the page."""
        if self.read_only:
            raise BadRequest(403, "the dashboard is read-only")
        form = await request.form()
        fields = {k: str(v) for k, v in form.multi_items() if isinstance(v, str)}
        if not self.tokens.redeem(request.state.session, fields.get("token", "")):
            raise BadRequest(
                403, "this form was already used, has expired or was not made here: reload the page"
            )
        name = request.path_params["action"]
        ids = [str(v) for v in form.getlist("id") if isinstance(v, str) and v]
        who = _who(request)
        if name == "purge-queue":
            queue = _required(fields, "queue")
            count = await run_in_threadpool(self.fleet.purge_queue, queue)
            target, back = f"queue {queue}", "/queues"
        elif name in ("replay-dead", "purge-dead"):
            where = dead_filter(fields)
            if fields.get("scope") == "matching":
                ids = await run_in_threadpool(self.fleet.matching_dead_ids, where)
                target = f"dead letters matching {where.describe()}"
            elif ids:
                target = f"dead letters {', '.join(ids[:5])}{' ...' if len(ids) > 5 else ''}"
            else:
                raise BadRequest(400, "select dead letters first")
            act = self.fleet.replay_dead if name == "replay-dead" else self.fleet.purge_dead
            count = await run_in_threadpool(act, ids)
            back = f"/dead?{where.query()}" if where.query() else "/dead"
        elif name in ("revoke", "terminate"):
            task_id = _required(fields, "task_id")
            count = await run_in_threadpool(self.fleet.revoke, task_id, name == "terminate")
            target, back = f"task {task_id}", f"/tasks/{quote(task_id, safe='')}"
        else:
            raise BadRequest(404, f"no action {name!r}")
        await run_in_threadpool(self.audit.record, who, name, target, count)
        return RedirectResponse(root_of(request) + back, status_code=303)


def root_of(request: Request) -> str:
    """The path the dashboard is mounted at ('' at the root), for links and redirects."""
    return str(request.scope.get("root_path", "")).rstrip("/")


def dead_filter(values: Any) -> DeadLetterFilter:
    """The dead-letter filter of a query string or form; over-long values are refused."""
    found = {}
    for name in ("queue", "reason", "search"):
        value = str(values.get(name) or "").strip()
        if len(value) > MAX_FILTER:
            raise BadRequest(400, f"the {name} filter is longer than {MAX_FILTER} characters")
        found[name] = value
    return DeadLetterFilter(**found)


def _required(fields: dict[str, str], name: str) -> str:
    value = fields.get(name, "").strip()
    if not value or len(value) > 255:
        raise BadRequest(400, f"the form has no valid {name}")
    return value


def _who(request: Request) -> str:
    user = getattr(request.state, "user", None) or "anonymous"
    client = request.client.host if request.client else "?"
    return f"{user} ({client})"


def _json_text(value: object) -> str:
    if value is None:
        return ""
    try:
        return json.dumps(from_json_value(value), indent=2, default=str)
    except (ValueError, TypeError, RecursionError, ConveyorError):
        return repr(value)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
