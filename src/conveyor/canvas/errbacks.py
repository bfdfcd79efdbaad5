"""Errbacks (``link_error``) of a failed task, in the three shapes handlers come in.

* **Celery's** ``def on_error(request, exc, traceback)``: a task whose function takes three
  arguments or more and names its first ``request`` (or ``req``), or annotates it as
  :class:`~conveyor.request.Request`. As in Celery, it is called right here, in the process
  that settles the failed task, with that task's request, its exception (rebuilt from the
  stored error) and the traceback text. What it raises is logged, never propagated.
* **Conveyor's** ``def log_error(task_id, exc_info)`` - plus ``traceback`` when a third
  argument is required: sent as a task with ``{"type", "message"}`` as ``exc_info``.
* **Celery's old style** ``def on_error(task_id)``: sent as a task with the id alone.

Errbacks that are not registered in this process are sent (Conveyor's shape), as Celery
sends the ones it cannot call.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable, Sequence
from enum import Enum
from typing import TYPE_CHECKING

from .._exceptions_registry import rebuild_exception
from ..request import Request
from .base import Workflow
from .plan import SendPlan
from .signature import IdFactory, Signature, as_signature, json_dict

if TYPE_CHECKING:
    from ..app import Conveyor

logger = logging.getLogger("conveyor.canvas")

#: First-parameter names that mark a Celery-style ``(request, exc, traceback)`` errback.
REQUEST_NAMES = frozenset({"request", "req"})


class Style(Enum):
    """How an errback is called (see the module docstring)."""

    CELERY = "celery"  # called here: (request, exc, traceback)
    TASK_ID = "task_id"  # sent: (task_id,)
    INFO = "info"  # sent: (task_id, exc_info)
    TRACEBACK = "traceback"  # sent: (task_id, exc_info, traceback)


def errback_style(app: Conveyor, sig: Signature) -> Style:
    """The shape of errback ``sig`` (from its function's parameters)."""
    if isinstance(sig, Workflow) or sig.immutable:
        return Style.INFO
    task = app.tasks.get(sig.task)
    if task is None:
        return Style.INFO
    try:
        params = inspect.signature(task.fn)
    except (TypeError, ValueError):
        return Style.INFO
    bound = (None,) if task.bind else ()
    if _celery_style(params, task.bind) and _binds(params, (*bound, None, None, None), sig):
        return Style.CELERY
    for style, count in ((Style.INFO, 2), (Style.TRACEBACK, 3), (Style.TASK_ID, 1)):
        if _binds(params, (*bound, *([None] * count)), sig):
            return style
    return Style.INFO  # fails in the task, naming the mismatch


def _celery_style(params: inspect.Signature, bound: bool) -> bool:
    positional = [
        p
        for p in params.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ][1 if bound else 0 :]
    if not positional:
        return False
    first = positional[0]
    annotation = first.annotation
    named = isinstance(annotation, type) and issubclass(annotation, Request)
    named = named or (isinstance(annotation, str) and annotation.split(".")[-1] == "Request")
    return named or first.name in REQUEST_NAMES


def _binds(params: inspect.Signature, args: tuple[object, ...], sig: Signature) -> bool:
    try:
        params.bind(*args, *sig.args, **sig.kwargs)
    except TypeError:
        return False
    return True


def send_errbacks(
    app: Conveyor,
    request: Request,
    errbacks: Sequence[object],
    info: object,
    traceback: str | None = None,
    ids: Callable[[int], IdFactory] | None = None,
) -> None:
    """Run or send ``errbacks`` of the failed task of ``request`` (its error ``info``); the
    traceback (fetched once, if not given) goes to those that take it. ``ids(index)`` gives
    each sent errback its deterministic ids."""
    if not errbacks:
        return
    plan = SendPlan(app, once=True, parent_id=request.id, root_id=request.root_id)
    error = json_dict(info, "error info")
    shown = {k: v for k, v in error.items() if k != "args"}
    fetched = traceback is not None
    inline: list[Signature] = []
    for index, data in enumerate(errbacks):
        sig = as_signature(data, app)
        style = errback_style(app, sig)
        if style is not Style.INFO and not fetched:
            record = app.results.get(request.id)
            traceback, fetched = (record.traceback if record else None), True
        if style is Style.CELERY:
            inline.append(sig)
            continue
        if ids is not None:
            sig._freeze(ids(index), "", {})
        args: tuple[object, ...] = (request.id,)
        if style is not Style.TASK_ID:
            args += (shown,)
        if style is Style.TRACEBACK:
            args += (traceback,)
        plan.add(sig, args)
    plan.send()
    if inline:
        exc = rebuild_exception(error, traceback)
        for sig in inline:
            _call_inline(app, sig, request, exc, traceback)


def _call_inline(
    app: Conveyor, sig: Signature, request: Request, exc: BaseException, traceback: str | None
) -> None:
    task = app.tasks[sig.task]
    try:
        returned = task.call_with_request((request, exc, traceback, *sig.args), sig.kwargs)
        if inspect.iscoroutine(returned):
            asyncio.run(returned)
    except Exception:
        logger.exception(
            "errback %s of %s[%s] raised (ignored)", sig.task, request.task, request.id
        )
