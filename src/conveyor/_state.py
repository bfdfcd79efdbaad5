"""Process-wide state: the apps alive in this process and the default one.

It lives apart from :mod:`conveyor.app` so that modules the app imports (tasks, the canvas)
can find the default app without importing the app module.
"""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING

from .exceptions import ConfigurationError

if TYPE_CHECKING:
    from .app import Conveyor

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
