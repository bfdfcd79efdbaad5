"""Process-wide state: the apps alive in this process, the default one, and the request of
the task running in the current thread or asyncio task.

It lives apart from :mod:`conveyor.app` and :mod:`conveyor.task` so that the modules those
import (the canvas, results) can read it without importing them.
"""

from __future__ import annotations

import threading
import weakref
from contextvars import ContextVar
from typing import TYPE_CHECKING

from .exceptions import ConfigurationError

if TYPE_CHECKING:
    from .app import Conveyor
    from .request import Request

_apps: list[weakref.ref[Conveyor]] = []
_default: weakref.ref[Conveyor] | None = None
_lock = threading.Lock()


def add_app(app: Conveyor, *, default: bool) -> None:
    """Record a new app (``default=True`` also makes it the default)."""
    global _default
    with _lock:
        _apps[:] = [ref for ref in _apps if ref() is not None]
        _apps.append(weakref.ref(app))
        if default:
            _default = weakref.ref(app)


def set_default_app(app: Conveyor) -> None:
    global _default
    with _lock:
        _default = weakref.ref(app)


def registered_apps() -> list[Conveyor]:
    """Apps alive in this process, oldest first."""
    with _lock:
        return [app for ref in _apps if (app := ref()) is not None]


def default_app() -> Conveyor:
    """The app shared tasks and bare ``AsyncResult(id)`` use: the last one created
    (or the one given ``set_as_default=True`` most recently)."""
    app = _default() if _default is not None else None
    if app is None:
        raise ConfigurationError(
            "no Conveyor app exists yet: create one with Conveyor('proj') before using "
            "shared tasks or AsyncResult without app="
        )
    return app


#: The request of the task running in this thread or asyncio task (set by the worker).
request_var: ContextVar[Request | None] = ContextVar("conveyor_request", default=None)


def current_request() -> Request | None:
    """The request of the task running in this thread or asyncio task, if any."""
    return request_var.get()


#: Set by ``conveyor.result.allow_join_result``: ``result.get()`` allowed inside a task.
join_allowed: ContextVar[bool] = ContextVar("conveyor_join_allowed", default=False)


def joining_forbidden() -> bool:
    """Whether ``result.get()`` must refuse to wait here: inside a running task, outside
    an ``allow_join_result()`` block."""
    return request_var.get() is not None and not join_allowed.get()


class CurrentApp:
    """``conveyor.current_app``: stands for the default app at the time of each use.

    ``from conveyor import current_app`` binds a name before the app may exist (a Django
    project creates it later), so this small stand-in forwards each attribute read or write
    to :func:`default_app` - nothing else. ``current_app._get_current_object()`` is the app
    itself (Celery's spelling), for ``isinstance`` checks and identity.
    """

    __slots__ = ()

    def _get_current_object(self) -> Conveyor:
        return default_app()

    def __getattr__(self, name: str) -> object:
        return getattr(default_app(), name)

    def __setattr__(self, name: str, value: object) -> None:
        setattr(default_app(), name, value)

    def __repr__(self) -> str:
        app = _default() if _default is not None else None
        return f"<current_app: {app!r}>" if app is not None else "<current_app: no app yet>"
