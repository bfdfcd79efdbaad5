"""The dashboard as an ASGI application: :func:`create_dashboard` for any project
(``conveyor dashboard`` serves it with uvicorn)."""

from __future__ import annotations

import logging
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
from .security import DashboardAuth, FormTokens, Guard
from .views import BadRequest, Views, root_of

STATIC = Path(__file__).with_name("static")
logger = logging.getLogger("conveyor.dashboard")


def create_dashboard(
    app: Conveyor,
    *,
    auth: DashboardAuth | None = None,
    read_only: bool = False,
    secret: bytes | None = None,
) -> Starlette:
    """The dashboard of ``app``. ``auth`` None serves everyone who can connect (bind it to
    loopback then); ``read_only`` hides and refuses every action; ``secret`` signs form
    tokens (give several dashboard processes the same one; default: random per process)."""
    views = Views(Fleet(app), FormTokens(app.kv, secret), AuditLog(app.kv), read_only)

    async def bad_request(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, BadRequest)
        return _error(views, request, exc.status, exc.message)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return _error(views, request, exc.status_code, str(exc.detail))

    async def broker_error(request: Request, exc: Exception) -> Response:
        logger.warning("dashboard: %s", exc)
        message = f"the broker or result store did not answer: {exc}"
        return _error(views, request, 503, message)

    routes = [
        Route("/", views.overview),
        Route("/queues", views.queues),
        Route("/workers", views.workers),
        Route("/dead", views.dead_letters),
        Route("/tasks/{task_id:str}", views.task),
        Route("/find", views.find),
        Route("/audit", views.audit_log),
        Route("/live", views.live),
        Route("/actions/{action:str}", views.action, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    return Starlette(
        routes=routes,
        middleware=[Middleware(Guard, auth=auth)],
        exception_handlers={
            BadRequest: bad_request,
            HTTPException: http_error,
            ConveyorError: broker_error,
        },
    )


def _error(views: Views, request: Request, status: int, message: str) -> HTMLResponse:
    template = views.env.get_template("error.html")
    context = {"status": status, "message": message, "page": "error", "root": root_of(request)}
    return HTMLResponse(template.render(context), status)
