"""The built-in tasks ``conveyor.map`` and ``conveyor.starmap`` that :class:`~.mapping.xmap`
and :class:`~.mapping.xstarmap` (and so ``chunks``) send. Every app registers them when it
is created (:func:`register_builtin_tasks`), so any worker can run them."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from .. import _state
from ..exceptions import ConfigurationError, NotRegistered
from .signature import Signature

if TYPE_CHECKING:
    from ..app import Conveyor
    from ..task import Task


def register_builtin_tasks(app: Conveyor) -> None:
    """Register ``conveyor.map`` and ``conveyor.starmap`` with ``app`` (done on creation)."""
    app.task(name="conveyor.map")(_map)
    app.task(name="conveyor.starmap")(_starmap)


def _map(task: dict[str, object], it: list[object]) -> list[object]:
    sig = Signature.from_dict(task)
    target = _find_task(sig.task)
    return [_call(target, (item, *sig.args), sig.kwargs) for item in it]


def _starmap(task: dict[str, object], it: list[list[object]]) -> list[object]:
    sig = Signature.from_dict(task)
    target = _find_task(sig.task)
    return [_call(target, (*item, *sig.args), sig.kwargs) for item in it]


def _find_task(name: str) -> Task[..., object]:
    """The task ``name`` of the default app, else of the oldest app that has one."""
    apps = _state.registered_apps()
    with contextlib.suppress(ConfigurationError):
        apps.insert(0, _state.default_app())
    for app in apps:
        task = app.tasks.get(name)
        if task is not None:
            return task
    raise NotRegistered(name)


def _call(task: Task[..., object], args: Sequence[object], kwargs: Mapping[str, object]) -> object:
    value = task(*args, **kwargs)
    if inspect.iscoroutine(value):
        return asyncio.run(value)
    return value
