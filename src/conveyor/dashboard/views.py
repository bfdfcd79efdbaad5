"""The dashboard's pages over Starlette: requests in, :class:`~.pages.Pages` calls (in a
thread: they read the broker) out. Actions are POSTed forms carrying a single-use token."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse

from ..exceptions import ConveyorError
from .pages import LIVE_PAGES, MAX_ID, BadRequest, Pages, live_event, task_path
from .security import FormTokens

#: Seconds between two looks at the broker for a live page.
LIVE_INTERVAL = 2.0

Handler = Callable[[Request], Awaitable[Response]]


def root_of(request: Request) -> str:
    """The path the dashboard is mounted at ('' at the root), for links and redirects."""
    return str(request.scope.get("root_path", "")).rstrip("/")


class Views:
    def __init__(self, pages: Pages, tokens: FormTokens) -> None:
        self.pages = pages
        self.tokens = tokens

    async def _context(self, request: Request, page: str) -> dict[str, object]:
        params = {**request.query_params, **request.path_params}
        context = await run_in_threadpool(self.pages.context, page, params)
        context.update(
            root=root_of(request),
            read_only=self.pages.read_only,
            token=self.tokens.issue(request.state.session),
        )
        return context

    def page(self, name: str) -> Handler:
        async def handle(request: Request) -> Response:
            context = await self._context(request, name)
            return HTMLResponse(self.pages.render(name, context))

        return handle

    async def find(self, request: Request) -> Response:
        """The header's task-id box."""
        task_id = request.query_params.get("id", "").strip()
        if not 0 < len(task_id) <= MAX_ID:
            raise BadRequest(400, "give a task id")
        return RedirectResponse(root_of(request) + task_path(task_id), status_code=303)

    async def live(self, request: Request) -> Response:
        """Server-sent events: the live block of ``?page=``, sent when it changed."""
        page = request.query_params.get("page", "")
        if page not in LIVE_PAGES:
            raise BadRequest(404, "no live updates for this page")
        first = await self._context(request, page)  # bad parameters: a 4xx answer, no stream

        # What the browser shows already: the page's block, or the last event it received.
        shown = request.headers.get("last-event-id") or request.query_params.get("digest")

        async def stream() -> AsyncIterator[str]:
            last = shown
            context: dict[str, object] | None = first
            while not await request.is_disconnected():
                try:
                    context = context or await self._context(request, page)
                    html = self.pages.render_live(page, context)
                except ConveyorError as exc:
                    html = f'<p class="error">the broker did not answer: {_escape(str(exc))}</p>'
                except BadRequest as exc:  # e.g. the task was forgotten meanwhile
                    html = f'<p class="error">{_escape(exc.message)}</p>'
                context = None
                text, last = live_event(html, last)
                yield text
                await asyncio.sleep(LIVE_INTERVAL)

        return StreamingResponse(
            stream(), media_type="text/event-stream", headers={"x-accel-buffering": "no"}
        )

    async def action(self, request: Request) -> Response:
        """Every POST: check the token, act, and go back to the page."""
        if self.pages.read_only:
            raise BadRequest(403, "the dashboard is read-only")
        form = await request.form()
        fields = {k: v for k, v in form.multi_items() if isinstance(v, str)}
        if not self.tokens.redeem(request.state.session, fields.get("token", "")):
            raise BadRequest(
                403, "this form was already used, has expired or was not made here: reload the page"
            )
        ids = [v for v in form.getlist("id") if isinstance(v, str) and v]
        who = f"{request.state.user} ({request.client.host if request.client else '?'})"
        action = request.path_params["action"]
        back = await run_in_threadpool(self.pages.act, action, fields, ids, who)
        return RedirectResponse(root_of(request) + back, status_code=303)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
