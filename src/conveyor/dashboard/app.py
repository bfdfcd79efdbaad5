"""The dashboard as an ASGI application: :func:`create_dashboard` for any project
(``conveyor dashboard`` serves it with uvicorn)."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from ..app import Conveyor
from ..exceptions import ConveyorError
from .audit import AuditLog
from .fleet import Fleet
from .history import TaskHistory
from .pages import STATIC, BadRequest, Pages
from .security import DashboardAuth, FormTokens, Guard
from .views import Views, root_of

logger = logging.getLogger("conveyor.dashboard")


def create_dashboard(
    app: Conveyor,
    *,
    auth: DashboardAuth | None = None,
    read_only: bool = False,
    secret: bytes | None = None,
    history: str | os.PathLike[str] | None = None,
) -> Starlette:
    """The dashboard of ``app``. ``auth`` None serves everyone who can connect (bind it to
    loopback then); ``read_only`` hides and refuses every action; ``secret`` signs form
    tokens (give several dashboard processes the same one; default: random per process);
    ``history`` is the task-history file (default: see :func:`.history.history_path`), kept
    current from the events stream by a thread while the application runs."""
    task_history = TaskHistory(Path(history)) if history is not None else None
    pages = Pages(Fleet(app), AuditLog(lambda: app.kv), read_only, history=task_history)
    views = Views(pages, FormTokens(lambda: app.kv, secret))

    def error(request: Request, status: int, message: str) -> Response:
        return HTMLResponse(pages.render_error(status, message, root_of(request)), status)

    async def bad_request(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, BadRequest)
        return error(request, exc.status, exc.message)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return error(request, exc.status_code, str(exc.detail))

    async def broker_error(request: Request, exc: Exception) -> Response:
        logger.warning("dashboard: %s", exc)
        return error(request, 503, f"the broker or result store did not answer: {exc}")

    routes = [
        Route("/", views.page("overview")),
        Route("/queues", views.page("queues")),
        Route("/workers", views.page("workers")),
        Route("/scheduled", views.page("scheduled")),
        Route("/retries", views.page("retries")),
        Route("/periodic", views.page("periodic")),
        Route("/dead", views.page("dead")),
        Route("/tasks", views.page("tasks")),
        Route("/tasks/{task_id:str}", views.page("task")),
        Route("/audit", views.page("audit")),
        Route("/find", views.find),
        Route("/live", views.live),
        Route("/actions/{action:str}", views.action, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        pages.indexer.start()
        try:
            yield
        finally:
            pages.indexer.stop()
            pages.history.close()

    web = Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[Middleware(Guard, auth=auth)],
        exception_handlers={
            BadRequest: bad_request,
            HTTPException: http_error,
            ConveyorError: broker_error,
        },
    )
    # Mounted in another application, this one's lifespan does not run: that application
    # starts (and stops) the history's thread itself.
    web.state.history_indexer = pages.indexer
    return web
