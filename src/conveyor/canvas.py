"""Signatures: a task call packed as data, to be sent later or composed (chain, group, chord)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .message import from_json_value, to_json_value

if TYPE_CHECKING:
    from .app import Conveyor
    from .result import AsyncResult


class Signature:
    """A task name with arguments and call options: ``add.s(2, 2)``.

    Partial application: arguments given when the signature is applied are *prepended*
    (as Celery does), so ``mul.s(2)`` in a chain is called as ``mul(previous_result, 2)``.
    An immutable signature (``.si()``) ignores them.
    """

    def __init__(
        self,
        task: str,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        options: dict[str, Any] | None = None,
        immutable: bool = False,
        app: Conveyor | None = None,
    ) -> None:
        self.task = task
        self.args = tuple(args)
        self.kwargs = dict(kwargs or {})
        self.options = dict(options or {})
        self.immutable = immutable
        self._app = app

    @property
    def name(self) -> str:
        return self.task

    @property
    def app(self) -> Conveyor:
        if self._app is None:
            from .app import default_app

            self._app = default_app()
        return self._app

    def __repr__(self) -> str:
        parts = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"{self.task}({', '.join(parts)}){'!' if self.immutable else ''}"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Signature) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash((self.task, self.args))

    # -- building ------------------------------------------------------------------------
    def clone(
        self, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None, **options: Any
    ) -> Signature:
        """A copy with extra arguments (prepended unless immutable) and options merged."""
        new = copy.copy(self)
        new.options = {**copy.deepcopy(self.options), **options}
        new.kwargs = dict(self.kwargs)
        if not self.immutable:
            new.args = tuple(args) + self.args
            new.kwargs.update(kwargs or {})
        return new

    def set(self, **options: Any) -> Signature:
        """Set call options (queue, priority, countdown, ...) in place; returns self."""
        if "immutable" in options:
            self.immutable = bool(options.pop("immutable"))
        self.options.update(options)
        return self

    def set_immutable(self, immutable: bool) -> None:
        self.immutable = immutable

    def link(self, callback: Signature) -> Signature:
        self.options.setdefault("link", []).append(callback)
        return callback

    def link_error(self, errback: Signature) -> Signature:
        self.options.setdefault("link_error", []).append(errback)
        return errback

    # -- applying ------------------------------------------------------------------------
    def apply_async(
        self, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None, **options: Any
    ) -> AsyncResult[Any]:
        sig = self.clone(args, kwargs)
        merged = {**sig.options, **options}
        return self.app.send_task(sig.task, sig.args, sig.kwargs, **merged)

    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult[Any]:
        return self.apply_async(args, kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the task inline with these extra arguments (like calling the task)."""
        sig = self.clone(args, kwargs)
        return self.app.tasks[sig.task](*sig.args, **sig.kwargs)

    # -- data ----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (travels inside messages, can be stored)."""
        options = {k: v for k, v in self.options.items() if k not in {"link", "link_error"}}
        data: dict[str, Any] = {
            "task": self.task,
            "args": to_json_value(list(self.args), f"signature {self.task} args"),
            "kwargs": to_json_value(self.kwargs, f"signature {self.task} kwargs"),
            "options": to_json_value(options, f"signature {self.task} options"),
            "immutable": self.immutable,
        }
        for key in ("link", "link_error"):
            if self.options.get(key):
                data[key] = [as_signature(s).to_dict() for s in _listify(self.options[key])]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], app: Conveyor | None = None) -> Signature:
        options = dict(from_json_value(data.get("options") or {}))
        for key in ("link", "link_error"):
            if data.get(key):
                options[key] = [cls.from_dict(d, app) for d in data[key]]
        return cls(
            data["task"],
            from_json_value(data.get("args") or []),
            from_json_value(data.get("kwargs") or {}),
            options=options,
            immutable=bool(data.get("immutable", False)),
            app=app,
        )


def _listify(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]


def as_signature(value: Any, app: Conveyor | None = None) -> Signature:
    """Accept a Signature, a task, or a signature dict."""
    if isinstance(value, Signature):
        return value
    if isinstance(value, dict):
        return Signature.from_dict(value, app)
    from .task import Task

    if isinstance(value, Task):
        return value.s()
    raise TypeError(f"expected a signature or a task, got {type(value).__name__}")


def signature(value: Any, *args: Any, **kwargs: Any) -> Signature:
    """``signature("tasks.add", args=(2, 2))`` or ``signature(sig_dict)``."""
    if isinstance(value, str):
        return Signature(value, kwargs.pop("args", ()), kwargs.pop("kwargs", {}), options=kwargs)
    return as_signature(value)


# -- what happens after a task finished (called by the worker once the result is stored) ----


def followup_id(task_id: str, kind: str, index: int) -> str:
    """A deterministic id for work a task triggers, so a redelivered task that finishes twice
    sends the same message id twice rather than two different tasks."""
    import uuid

    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"conveyor:{task_id}:{kind}:{index}"))


def on_task_finished(app: Conveyor, envelope: Any, state: str, value: Any) -> None:
    """Send ``link`` callbacks (with the result) or ``link_error`` errbacks (with the failed
    task's id and exception info ``{"type", "message"}``)."""
    from . import states

    if state == states.SUCCESS:
        result = from_json_value(value)
        for index, data in enumerate(envelope.callbacks):
            sig = Signature.from_dict(data, app)
            sig.apply_async(
                (result,),
                task_id=sig.options.get("task_id") or followup_id(envelope.id, "link", index),
                parent_id=envelope.id,
                root_id=envelope.root_id,
            )
    elif state == states.FAILURE:
        for index, data in enumerate(envelope.errbacks):
            sig = Signature.from_dict(data, app)
            sig.apply_async(
                (envelope.id, value),
                task_id=sig.options.get("task_id") or followup_id(envelope.id, "errback", index),
                parent_id=envelope.id,
                root_id=envelope.root_id,
            )
