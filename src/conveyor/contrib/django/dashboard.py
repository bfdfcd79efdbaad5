"""The dashboard inside a Django project, behind Django's login and permissions::

    # urls.py
    from django.urls import include, path

    urlpatterns = [
        path("conveyor/", include("conveyor.contrib.django.dashboard")),
        ...
    ]

Staff users with ``conveyor.view_dashboard`` see the pages; ``conveyor.operate_dashboard``
also allows actions (superusers have both). Anyone else is sent to the login page (or gets
403 when logged in). Actions are Django-CSRF-protected POSTs that also carry the dashboard's
single-use token, and are written to the audit log under the user's name. The pages are the
standalone dashboard's (:mod:`conveyor.dashboard.pages`), so both look and behave the same.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from functools import cache
from typing import cast

from django.conf import settings
from django.contrib.auth.views import redirect_to_login
from django.http import (
    FileResponse,
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseBase,
    HttpResponseNotAllowed,
    HttpResponseRedirect,
    StreamingHttpResponse,
)
from django.urls import URLPattern, path
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.csrf import csrf_protect

from conveyor._state import default_app
from conveyor.dashboard.audit import AuditLog
from conveyor.dashboard.fleet import Fleet
from conveyor.dashboard.pages import (
    LIVE_PAGES,
    MAX_ID,
    STATIC,
    BadRequest,
    Pages,
    live_event,
    task_path,
)
from conveyor.dashboard.security import SECURITY_HEADERS, FormTokens
from conveyor.exceptions import ConveyorError

from .dashboard_schedules import DatabaseSchedules

app_name = "conveyor_dashboard"
VIEW = "conveyor.view_dashboard"
OPERATE = "conveyor.operate_dashboard"
#: Seconds between two looks at the broker for a live page; a live stream ends after
#: LIVE_FOR seconds (the browser reconnects), so a WSGI worker is never held forever.
LIVE_INTERVAL = 2.0
LIVE_FOR = 300.0

View = Callable[..., HttpResponseBase]


@cache
def _site() -> tuple[Pages, FormTokens]:
    """The default app's pages (made on first use: the app exists once Django is set up).
    Form tokens are signed with a key derived from SECRET_KEY, so every process of the site
    accepts the others' forms."""
    app = default_app()
    secret = hashlib.sha256(b"conveyor.dashboard\0" + settings.SECRET_KEY.encode()).digest()
    kv = lambda: app.kv  # noqa: E731 - asked at each use: the app may reconnect
    pages = Pages(Fleet(app), AuditLog(kv), read_only=False, schedules=DatabaseSchedules())
    pages.indexer.start()  # a daemon thread per web process; they share the history file
    return pages, FormTokens(kv, secret)


def _guarded(view: View) -> View:
    """Login, staff and permission checks; BadRequest and broker errors as pages."""

    def wrapper(request: HttpRequest, *args: object, **kwargs: object) -> HttpResponseBase:
        user = request.user
        if not user.is_authenticated:
            return redirect_to_login(request.get_full_path())
        if not (user.is_active and user.is_staff and user.has_perm(VIEW)):
            return _error(request, 403, "you may not see the Conveyor dashboard")
        try:
            return view(request, *args, **kwargs)
        except BadRequest as exc:
            return _error(request, exc.status, exc.message)
        except ConveyorError as exc:
            return _error(request, 503, f"the broker or result store did not answer: {exc}")

    wrapper.__name__ = view.__name__
    wrapper.__doc__ = view.__doc__
    return wrapper


def _error(request: HttpRequest, status: int, message: str) -> HttpResponse:
    pages, _ = _site()
    html = pages.render_error(status, message, request.META["CONVEYOR_ROOT"])
    return HttpResponse(html, status=status)


def _page(name: str) -> View:
    def view(request: HttpRequest, **params: str) -> HttpResponse:
        pages, tokens = _site()
        context = pages.context(name, {**request.GET.dict(), **params})
        context.update(_adapter_context(request, tokens, pages))
        return HttpResponse(pages.render(name, context))

    view.__name__ = f"dashboard_{name}"
    return _guarded(_csrf(view))


def _adapter_context(request: HttpRequest, tokens: FormTokens, pages: Pages) -> dict[str, object]:
    from django.middleware.csrf import get_token

    read_only = not request.user.has_perm(OPERATE)
    return {
        "root": request.META["CONVEYOR_ROOT"],
        "read_only": read_only,
        "token": tokens.issue(_session(request)),
        "csrf_token": get_token(request),
    }


def _session(request: HttpRequest) -> str:
    """What a form token is bound to: the Django session (made if there is none yet)."""
    if request.session.session_key is None:
        request.session.save()
    return str(request.session.session_key)


def find(request: HttpRequest) -> HttpResponse:
    task_id = request.GET.get("id", "").strip()
    if not 0 < len(task_id) <= MAX_ID:
        raise BadRequest(400, "give a task id")
    return HttpResponseRedirect(request.META["CONVEYOR_ROOT"] + task_path(task_id))


def live(request: HttpRequest) -> StreamingHttpResponse:
    page = request.GET.get("page", "")
    if page not in LIVE_PAGES:
        raise BadRequest(404, "no live updates for this page")
    pages, tokens = _site()
    params = request.GET.dict()
    extra = _adapter_context(request, tokens, pages)
    pages.context(page, params)  # bad parameters: a 4xx page, no stream

    # What the browser shows already: the page's block, or the last event it received.
    shown = request.headers.get("last-event-id") or request.GET.get("digest")

    def stream() -> Iterator[str]:
        last, until = shown, time.monotonic() + LIVE_FOR
        while time.monotonic() < until:
            try:
                html = pages.render_live(page, {**pages.context(page, params), **extra})
            except ConveyorError as exc:
                html = f"<p class='error'>the broker did not answer: {type(exc).__name__}</p>"
            except BadRequest:  # e.g. the task was forgotten meanwhile
                html = "<p class='error'>no longer found</p>"
            text, last = live_event(html, last)
            yield text
            time.sleep(LIVE_INTERVAL)

    response = StreamingHttpResponse(stream(), content_type="text/event-stream")
    response["X-Accel-Buffering"] = "no"
    response["Cache-Control"] = "no-store"
    return response


def action(request: HttpRequest, name: str) -> HttpResponseBase:
    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    return _checked_action(request, name)


def _act(request: HttpRequest, name: str) -> HttpResponse:
    pages, tokens = _site()
    if not request.user.has_perm(OPERATE):
        raise BadRequest(403, "you may look but not act: ask for conveyor.operate_dashboard")
    fields = dict(request.POST.items())
    if not tokens.redeem(_session(request), fields.get("token", "")):
        raise BadRequest(
            403, "this form was already used, has expired or was not made here: reload the page"
        )
    ids = [v for v in request.POST.getlist("id") if v]
    who = f"{request.user.get_username()} ({request.META.get('REMOTE_ADDR', '?')})"
    back = request.META["CONVEYOR_ROOT"] + pages.act(name, fields, ids, who)
    if not url_has_allowed_host_and_scheme(back, allowed_hosts={request.get_host()}):
        back = request.META["CONVEYOR_ROOT"] + "/"
    return HttpResponseRedirect(back)


def _csrf(view: View) -> View:
    """Django's CSRF check (and cookie) for ``view``."""
    return cast(View, csrf_protect(view))


_checked_action = _csrf(_act)


def static(request: HttpRequest, name: str) -> FileResponse:
    if name not in ("conveyor.css", "conveyor.js"):
        raise Http404(name)
    return FileResponse((STATIC / name).open("rb"))


def _rooted(view: View, depth: int) -> View:
    """Record the dashboard's root path (the request path less ``depth`` trailing parts), and
    add the dashboard's security headers (the strict CSP) to the answer."""

    def wrapper(request: HttpRequest, *args: object, **kwargs: object) -> HttpResponseBase:
        parts = request.path.rstrip("/").split("/")
        request.META["CONVEYOR_ROOT"] = "/".join(parts[: len(parts) - depth])
        response = view(request, *args, **kwargs)
        for name, value in SECURITY_HEADERS.items():
            response[name] = value
        return response

    wrapper.__name__ = view.__name__
    return wrapper


urlpatterns: list[URLPattern] = [
    path("", _rooted(_page("overview"), 0), name="overview"),
    path("queues", _rooted(_page("queues"), 1), name="queues"),
    path("workers", _rooted(_page("workers"), 1), name="workers"),
    path("scheduled", _rooted(_page("scheduled"), 1), name="scheduled"),
    path("retries", _rooted(_page("retries"), 1), name="retries"),
    path("periodic", _rooted(_page("periodic"), 1), name="periodic"),
    path("dead", _rooted(_page("dead"), 1), name="dead"),
    path("audit", _rooted(_page("audit"), 1), name="audit"),
    path("tasks", _rooted(_page("tasks"), 1), name="tasks"),
    path("tasks/<str:task_id>", _rooted(_page("task"), 2), name="task"),
    path("find", _rooted(_guarded(find), 1), name="find"),
    path("live", _rooted(_guarded(live), 1), name="live"),
    path("actions/<str:name>", _rooted(_guarded(action), 2), name="action"),
    path("static/<str:name>", _rooted(static, 2), name="static"),
]
