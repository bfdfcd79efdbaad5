"""The canvas: signatures and the workflows built from them (chain, group, chord, chunks,
map/starmap), and what a worker does after a task finished (``link`` / ``link_error``).

How workflows travel (everything is JSON inside messages or small values in the result store):

* Applying a workflow first *freezes* it: every task gets its id (and every group its id), so
  the handle returned (``AsyncResult`` / ``GroupResult``) is known at once and every message
  that later sends a follow-up sends the same ids again.
* ``chain(a, b, c)``: ``a`` is sent with the rest of the chain as a ``link``; when ``a``
  succeeds the worker sends ``b`` with ``a``'s result prepended, and so on.
* ``group``: the members are sent with one bulk publish (``app.send_many``).
* ``chord(header, body)``: a chord record (header result ids, body) is stored, then the header
  is sent; each header task carries ``{"id", "size"}``. Once its result is stored, it joins an
  idempotent set keyed by the chord id; whoever sees the set full sends the body, guarded by a
  short claim and a "sent" marker. Tasks sent by follow-ups carry a run-once header so the
  worker skips duplicates (see :func:`once_guard`).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import inspect
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar

from . import states
from ._exceptions_registry import exception_info
from .exceptions import BrokerError, ChordError, ConfigurationError, NotRegistered, ResultStoreError
from .message import from_json_value, to_json_value
from .result import AsyncResult, GroupResult
from .results.base import ResultRecord
from .task import Task, _shared_tasks

if TYPE_CHECKING:
    from .app import Conveyor

logger = logging.getLogger("conveyor.canvas")

#: Header marking a task sent by a follow-up: the worker runs one id at most once.
ONCE_HEADER = "conveyor_once"

type Result = AsyncResult[Any] | GroupResult
type _Ids = Callable[[str], str]

#: Options a workflow hands down to its tasks as defaults (everything but these).
_NOT_INHERITED = frozenset(
    {
        "task_id",
        "group_id",
        "group_index",
        "group_size",
        "chord",
        "link",
        "link_error",
        "parent_id",
        "root_id",
        "countdown",
        "eta",
        "on_commit",
    }
)
_DELAY = ("countdown", "eta")


class Signature:
    """A task name with arguments and call options: ``add.s(2, 2)``.

    Partial application: arguments given when the signature is applied are *prepended*
    (as Celery does), so ``mul.s(2)`` in a chain is called as ``mul(previous_result, 2)``.
    An immutable signature (``.si()``) ignores them. ``a | b`` builds a chain.
    """

    subtask_type: ClassVar[str | None] = None

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
    def id(self) -> str | None:
        """The task id, once frozen (or given with ``.set(task_id=...)``)."""
        value = self.options.get("task_id")
        return None if value is None else str(value)

    @property
    def app(self) -> Conveyor:
        if self._app is None:
            from .app import default_app

            self._app = default_app()
        return self._app

    @property
    def type(self) -> Task[Any, Any]:
        """The registered task this signature calls."""
        return self.app.get_task(self.task)

    def __repr__(self) -> str:
        parts = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"{self.task}({', '.join(parts)}){'!' if self.immutable else ''}"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Signature) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash((self.task, self.id))  # args may hold lists; equal signatures share both

    def __deepcopy__(self, memo: dict[int, Any]) -> Signature:
        new = copy.copy(self)
        for key, value in self.__dict__.items():
            if key != "_app":  # the app is shared, never copied
                setattr(new, key, copy.deepcopy(value, memo))
        return new

    # -- building ------------------------------------------------------------------------
    def clone(
        self, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None, **options: Any
    ) -> Signature:
        """A copy with extra arguments (prepended unless immutable) and options merged."""
        new = copy.deepcopy(self)
        new.options.update(options)
        if not self.immutable:
            new.args = tuple(args) + new.args
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

    def link(self, callback: Any) -> Signature:
        """Run ``callback`` with this task's result when it succeeds; returns the callback."""
        sig = as_signature(callback, self._app)
        self.options["link"] = [*_listify(self.options.get("link")), sig]
        return sig

    def link_error(self, errback: Any) -> Signature:
        """Run ``errback(task_id, {"type", "message"})`` if this task fails."""
        sig = as_signature(errback, self._app)
        self.options["link_error"] = [*_listify(self.options.get("link_error")), sig]
        return sig

    on_error = link_error

    def __or__(self, other: Any) -> Signature:
        other = as_signature(other, self._app)
        if isinstance(other, chain):
            return chain(self, *other.tasks, app=self._app)
        return chain(self, other, app=self._app)

    def freeze(self, _id: str | None = None) -> Result:
        """Assign ids (in place) and return the handle this signature's results will have."""
        if _id is not None:
            _set_final_id(self, _id)
        self._freeze(_random_ids, "", {})
        return self._handle(self.app, None)

    # -- applying ------------------------------------------------------------------------
    def apply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> Any:
        """Send the task; returns its :class:`~conveyor.result.AsyncResult`."""
        sig = self.clone(args or (), kwargs)
        merged = {**sig.options, **options}
        return self.app.send_task(sig.task, sig.args, sig.kwargs, **merged)

    def delay(self, *args: Any, **kwargs: Any) -> Any:
        return self.apply_async(args, kwargs)

    def apply(
        self,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult[Any]:
        """Run the task here and now, as a worker would (results stored)."""
        sig = self.clone(args or (), kwargs)
        merged = {**sig.options, **options}
        return self.app.send_task(sig.task, sig.args, sig.kwargs, _eager=True, **merged)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the task inline with these extra arguments (like calling the task)."""
        sig = self.clone(args, kwargs)
        return self.app.tasks[sig.task](*sig.args, **sig.kwargs)

    # -- data ----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (travels inside messages, can be stored)."""
        data: dict[str, Any] = {
            "task": self.task,
            "args": to_json_value(list(self.args), f"signature {self.task} args"),
            "kwargs": to_json_value(self.kwargs, f"signature {self.task} kwargs"),
            "options": _options_to_json(self.options, self.task),
            "immutable": self.immutable,
        }
        for key in ("link", "link_error"):
            if self.options.get(key):
                data[key] = [
                    as_signature(s, self._app).to_dict() for s in _listify(self.options[key])
                ]
        if self.subtask_type is not None:
            data["subtask_type"] = self.subtask_type
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], app: Conveyor | None = None) -> Signature:
        kind = data.get("subtask_type")
        if kind is not None and kind in _KINDS:
            return _KINDS[kind]._from_dict(data, app)
        options = _options_from_json(data, app)
        return Signature(
            data["task"],
            from_json_value(data.get("args") or []),
            from_json_value(data.get("kwargs") or {}),
            options=options,
            immutable=bool(data.get("immutable", False)),
            app=app,
        )

    @classmethod
    def _from_dict(cls, data: dict[str, Any], app: Conveyor | None) -> Signature:
        raise NotImplementedError

    # -- internals shared by every kind (overridden by workflows) ------------------------
    def _freeze(self, ids: _Ids, path: str, inherited: dict[str, Any]) -> None:
        self.options = {**inherited, **self.options}
        if not self.options.get("task_id"):
            self.options["task_id"] = ids(path)

    def _handle(self, app: Conveyor, parent: Result | None) -> Result:
        return AsyncResult(str(self.id), app, task_name=self.task, parent=parent)


class _Workflow(Signature):
    """Base of chain, group and chord: applying sends the tasks; calling applies."""

    def apply_async(
        self,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> Any:
        """Freeze, send every task that can start now (one bulk publish), return the handle."""
        app = self.app
        on_commit = options.pop("on_commit", None)
        work = copy.deepcopy(self)
        work.options.update(options)
        parent_id, root_id = work.options.pop("parent_id", None), work.options.pop("root_id", None)
        work._freeze(_random_ids, "", {})
        handle = work._handle(app, None)
        plan = _Plan(app, parent_id=parent_id, root_id=root_id)
        plan.add(work, tuple(args or ()), kwargs)
        if on_commit is None and app.conf.task_enqueue_on_commit:
            on_commit = app.in_transaction()
        if on_commit and not app.conf.task_always_eager:
            if app.commit_hook is None:
                raise ConfigurationError(
                    "on_commit=True needs a transaction hook: add 'conveyor.contrib.django' "
                    "to INSTALLED_APPS"
                )
            app.commit_hook(plan.send)
        else:
            plan.send()
        return handle

    def delay(self, *args: Any, **kwargs: Any) -> Any:
        return self.apply_async(args, kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Apply asynchronously (as Celery does for workflows) and return the handle."""
        return self.apply_async(args, kwargs)

    def apply(
        self,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> AsyncResult[Any]:
        raise NotImplementedError(
            f"{type(self).__name__}.apply() is not supported: set task_always_eager=True to run "
            "a workflow inline, or use conveyor.testing.TestWorker"
        )

    def clone(
        self, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None, **options: Any
    ) -> Signature:
        new = copy.deepcopy(self)
        new.options.update(options)
        if args or kwargs:
            _prepend(new, tuple(args), kwargs)
        return new

    def _data(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "subtask_type": self.subtask_type,
            "options": _options_to_json(self.options, self.task),
            **{
                key: [as_signature(s, self._app).to_dict() for s in _listify(self.options[key])]
                for key in ("link", "link_error")
                if self.options.get(key)
            },
        }


class chain(_Workflow):
    """Tasks run one after another, each getting the previous result prepended (unless
    immutable): ``chain(add.s(2, 2), mul.s(4))`` or ``add.s(2, 2) | mul.s(4)``.

    A group followed by another step becomes a chord (the step gets the group's results).
    ``apply_async()`` returns the last task's result; ``.parent`` walks back.
    """

    subtask_type = "chain"

    def __init__(self, *tasks: Any, app: Conveyor | None = None, **options: Any) -> None:
        steps = [as_signature(t, app) for t in _members(tasks)]
        super().__init__(
            "conveyor.chain", options=options, app=app or next((s._app for s in steps), None)
        )
        self.tasks: list[Signature] = []
        for step in steps:
            self._append(step)

    def _append(self, step: Signature) -> None:
        if isinstance(step, chain) and not step.options:
            for inner in step.tasks:
                self._append(inner)
            return
        if self.tasks and isinstance(self.tasks[-1], group):
            self.tasks[-1] = chord(self.tasks[-1], step, app=self._app)
            return
        self.tasks.append(step)

    @classmethod
    def _of(cls, steps: list[Signature], app: Conveyor | None) -> chain:
        """A chain of already normalised steps (no group-to-chord rewriting)."""
        new = cls(app=app)
        new.tasks = steps
        return new

    def __repr__(self) -> str:
        return " | ".join(repr(t) for t in self.tasks) or "chain()"

    def __or__(self, other: Any) -> Signature:
        return chain(*self.tasks, as_signature(other, self._app), app=self._app, **self.options)

    def to_dict(self) -> dict[str, Any]:
        return {**self._data(), "tasks": [t.to_dict() for t in self.tasks]}

    @classmethod
    def _from_dict(cls, data: dict[str, Any], app: Conveyor | None) -> Signature:
        new = cls._of([Signature.from_dict(t, app) for t in data.get("tasks", [])], app)
        new.options = _options_from_json(data, app)
        return new

    def _freeze(self, ids: _Ids, path: str, inherited: dict[str, Any]) -> None:
        opts = {**inherited, **self.options}
        self.options = {}
        if not self.tasks:
            return
        links = _listify(opts.pop("link", None))
        errbacks = _listify(opts.pop("link_error", None))
        if opts.get("task_id"):
            _set_final_id(self.tasks[-1], str(opts["task_id"]))
        delay = {k: opts[k] for k in _DELAY if k in opts}
        common = _inheritable(opts)
        for index, step in enumerate(self.tasks):
            step._freeze(ids, f"{path}.{index}", {**common, **(delay if index == 0 else {})})
        for errback in errbacks:
            for step in self.tasks:
                _add_errback(step, errback)
        if links:
            _link_tail(self.tasks[-1], links)

    def _handle(self, app: Conveyor, parent: Result | None) -> Result:
        if not self.tasks:
            raise ValueError("an empty chain has no result")
        handle = parent
        for step in self.tasks:
            handle = step._handle(app, handle)
        assert handle is not None
        return handle


class group(_Workflow):
    """Tasks run in parallel: ``group(add.s(i, i) for i in range(10))``; ``apply_async()``
    sends them in one bulk publish and returns a :class:`~conveyor.result.GroupResult`.
    ``group | task`` is a chord."""

    subtask_type = "group"

    def __init__(self, *tasks: Any, app: Conveyor | None = None, **options: Any) -> None:
        members = [as_signature(t, app) for t in _members(tasks)]
        super().__init__(
            "conveyor.group", options=options, app=app or next((m._app for m in members), None)
        )
        self.tasks: list[Signature] = members

    def __repr__(self) -> str:
        return f"group([{', '.join(repr(t) for t in self.tasks)}])"

    def __len__(self) -> int:
        return len(self.tasks)

    def __iter__(self) -> Iterator[Signature]:
        return iter(self.tasks)

    def __or__(self, other: Any) -> Signature:
        return chord(self, as_signature(other, self._app), app=self._app)

    def to_dict(self) -> dict[str, Any]:
        return {**self._data(), "tasks": [t.to_dict() for t in self.tasks]}

    @classmethod
    def _from_dict(cls, data: dict[str, Any], app: Conveyor | None) -> Signature:
        new = cls([Signature.from_dict(t, app) for t in data.get("tasks", [])], app=app)
        new.options = _options_from_json(data, app)
        return new

    def _freeze(self, ids: _Ids, path: str, inherited: dict[str, Any]) -> None:
        opts = {**inherited, **self.options}
        group_id = opts.get("task_id") or opts.get("group_id") or ids(path)
        links = _listify(opts.pop("link", None))
        errbacks = _listify(opts.pop("link_error", None))
        common = {**_inheritable(opts), **{k: opts[k] for k in _DELAY if k in opts}}
        self.options = {"group_id": str(group_id)}
        for index, member in enumerate(self.tasks):
            member._freeze(ids, f"{path}.{index}", common)
            if links:
                _link_tail(member, links)
            for errback in errbacks:
                _add_errback(member, errback)

    @property
    def group_id(self) -> str | None:
        value = self.options.get("group_id")
        return None if value is None else str(value)

    def _handle(self, app: Conveyor, parent: Result | None) -> Result:
        return GroupResult(
            str(self.group_id), [m._handle(app, None) for m in self.tasks], app, parent=parent
        )


class chord(_Workflow):
    """A header group whose results, in header order, are passed to a body task once every
    header task finished: ``chord(header)(body)`` or ``chord(header, body)()``.

    The body runs exactly once, also when header tasks are redelivered. If a header task does
    not succeed, by default the body does not run: its result is FAILURE with a
    :class:`~conveyor.exceptions.ChordError` naming the failed tasks and its ``link_error``
    handlers run. With ``propagate=False`` the body runs anyway and receives, per header task,
    ``{"task_id", "state", "result", "error"}``.
    """

    subtask_type = "chord"

    def __init__(
        self,
        header: Any,
        body: Any = None,
        *,
        propagate: bool = True,
        app: Conveyor | None = None,
        **options: Any,
    ) -> None:
        if isinstance(header, group):
            head = header
        elif isinstance(header, Signature | Task):
            head = group(header, app=app)
        else:
            head = group(list(header), app=app)
        super().__init__("conveyor.chord", options=options, app=app or head._app)
        self.header: group = head
        self.body: Signature | None = None if body is None else as_signature(body, self._app)
        self.propagate = propagate

    @property
    def tasks(self) -> list[Signature]:
        return self.header.tasks

    def __repr__(self) -> str:
        return f"chord({self.header!r}, {self.body!r})"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """``chord(header)(body)`` sets the body and applies; ``chord(header, body)()``
        applies."""
        if args and isinstance(args[0], Signature | Task):
            self.body = as_signature(args[0], self._app)
            args = args[1:]
        return self.apply_async(args, kwargs)

    def __or__(self, other: Any) -> Signature:
        other = as_signature(other, self._app)
        body = other if self.body is None else self.body | other
        return chord(self.header, body, propagate=self.propagate, app=self._app, **self.options)

    def to_dict(self) -> dict[str, Any]:
        return {
            **self._data(),
            "header": self.header.to_dict(),
            "body": None if self.body is None else self.body.to_dict(),
            "propagate": self.propagate,
        }

    @classmethod
    def _from_dict(cls, data: dict[str, Any], app: Conveyor | None) -> Signature:
        header = Signature.from_dict(data["header"], app)
        body = data.get("body")
        new = cls(
            header,
            None if body is None else Signature.from_dict(body, app),
            propagate=bool(data.get("propagate", True)),
            app=app,
        )
        new.options = _options_from_json(data, app)
        return new

    def _freeze(self, ids: _Ids, path: str, inherited: dict[str, Any]) -> None:
        if self.body is None:
            raise ValueError("a chord needs a body: chord(header)(body) or chord(header, body)")
        opts = {**inherited, **self.options}
        self.options = {}
        links = _listify(opts.pop("link", None))
        errbacks = _listify(opts.pop("link_error", None))
        chord_id = opts.get("group_id") or self.header.group_id or ids(path + "#chord")
        self.header.options["group_id"] = str(chord_id)
        common = _inheritable(opts)
        self.header._freeze(
            ids, path + ".h", {**common, **{k: opts[k] for k in _DELAY if k in opts}}
        )
        if opts.get("task_id"):
            _set_final_id(self.body, str(opts["task_id"]))
        self.body._freeze(ids, path + ".b", common)
        if links:
            _link_tail(self.body, links)
        for errback in errbacks:
            _add_errback(self.body, errback)

    def _handle(self, app: Conveyor, parent: Result | None) -> Result:
        assert self.body is not None
        return self.body._handle(app, self.header._handle(app, parent))


class xmap(Signature):
    """One task that calls ``task(item)`` for each item, in one worker: ``add.map(...)``."""

    def __init__(self, task: Signature, it: Iterable[Any], app: Conveyor | None = None) -> None:
        super().__init__(
            "conveyor.map", (), {"task": task.to_dict(), "it": list(it)}, app=app or task._app
        )


class xstarmap(Signature):
    """One task that calls ``task(*args)`` for each args tuple: ``add.starmap(...)``."""

    def __init__(self, task: Signature, it: Iterable[Any], app: Conveyor | None = None) -> None:
        super().__init__(
            "conveyor.starmap",
            (),
            {"task": task.to_dict(), "it": [list(args) for args in it]},
            app=app or task._app,
        )


class chunks(group):
    """Split ``it`` (argument tuples) into parts of ``n``, one ``starmap`` task per part:
    ``add.chunks(zip(xs, ys), 100)``. ``.get()`` returns one list per part."""

    def __init__(
        self, task: Any, it: Iterable[Any], n: int, app: Conveyor | None = None, **options: Any
    ) -> None:
        if n < 1:
            raise ValueError(f"chunk size must be at least 1, got {n}")
        sig = as_signature(task, app)
        items = list(it)
        parts = [xstarmap(sig, items[i : i + n], app) for i in range(0, len(items), n)]
        super().__init__(parts, app=app or sig._app, **options)

    def group(self) -> _Group:
        """The equivalent plain group."""
        return _Group(copy.deepcopy(self.tasks), app=self._app, **self.options)


_Group = group
_KINDS: dict[str, type[Signature]] = {"chain": chain, "group": group, "chord": chord}


# -- building helpers ---------------------------------------------------------------------


def _members(items: tuple[Any, ...]) -> Iterable[Any]:
    """``chain(a, b)`` or ``chain([a, b])`` / a generator (likewise for groups)."""
    if len(items) == 1 and not isinstance(items[0], Signature | Task | dict | str):
        return list(items[0])
    return items


def _listify(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def _inheritable(options: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if k not in _NOT_INHERITED}


def _options_to_json(options: dict[str, Any], task: str) -> Any:
    plain = {
        key: value.total_seconds() if isinstance(value, timedelta) else value
        for key, value in options.items()
        if key not in {"link", "link_error"}
    }
    return to_json_value(plain, f"signature {task} options")


def _options_from_json(data: dict[str, Any], app: Conveyor | None) -> dict[str, Any]:
    options = dict(from_json_value(data.get("options") or {}))
    for key in ("link", "link_error"):
        if data.get(key):
            options[key] = [Signature.from_dict(d, app) for d in data[key]]
    return options


def _random_ids(path: str) -> str:
    return str(uuid.uuid4())


def _derived_ids(seed: str) -> _Ids:
    """Ids that depend only on ``seed`` and the position in the workflow, so a follow-up
    sent twice (its task was redelivered) sends the same ids twice."""
    return lambda path: str(uuid.uuid5(uuid.NAMESPACE_URL, f"conveyor:{seed}{path}"))


def followup_id(task_id: str, kind: str, index: int) -> str:
    """The deterministic id of the ``index``-th ``kind`` follow-up of ``task_id``."""
    return _derived_ids(f"{task_id}:{kind}:{index}")("")


def _is_workflow(sig: Signature) -> bool:
    return isinstance(sig, _Workflow)


def _set_final_id(sig: Signature, task_id: str) -> None:
    if isinstance(sig, chain):
        if sig.tasks:
            _set_final_id(sig.tasks[-1], task_id)
    elif isinstance(sig, chord):
        if sig.body is not None:
            _set_final_id(sig.body, task_id)
    elif isinstance(sig, group):
        sig.options["group_id"] = task_id
    else:
        sig.options["task_id"] = task_id


def _link_tail(sig: Signature, links: list[Any]) -> None:
    """Add ``links`` to the task(s) whose result is ``sig``'s result."""
    if isinstance(sig, chain):
        _link_tail(sig.tasks[-1], links)
    elif isinstance(sig, chord):
        assert sig.body is not None
        _link_tail(sig.body, links)
    elif isinstance(sig, group):
        for member in sig.tasks:
            _link_tail(member, links)
    else:
        sig.options["link"] = [*_listify(sig.options.get("link")), *links]


def _add_errback(sig: Signature, errback: Any) -> None:
    """Chains: every step; groups: every member; chords: the body (it fails with ChordError
    when a header task fails, so the errback runs once)."""
    if isinstance(sig, chain | group):
        for step in sig.tasks:
            _add_errback(step, errback)
    elif isinstance(sig, chord):
        assert sig.body is not None
        _add_errback(sig.body, errback)
    else:
        sig.options["link_error"] = [*_listify(sig.options.get("link_error")), errback]


def _attach_chord(sig: Signature, info: dict[str, Any]) -> None:
    """Mark the task(s) whose result is ``sig``'s result as members of chord ``info``."""
    if isinstance(sig, chain):
        _attach_chord(sig.tasks[-1], info)
    elif isinstance(sig, chord):
        assert sig.body is not None
        _attach_chord(sig.body, info)
    elif isinstance(sig, group):
        for member in sig.tasks:
            _attach_chord(member, info)
    else:
        sig.options["chord"] = info
        sig.options["ignore_result"] = False  # the body reads header results from the store


def _prepend(sig: Signature, args: tuple[Any, ...], kwargs: dict[str, Any] | None) -> None:
    """Partial application: a chain's first step, every group member, a chord's header."""
    if isinstance(sig, chain):
        if sig.tasks:
            _prepend(sig.tasks[0], args, kwargs)
    elif isinstance(sig, group | chord):
        for member in sig.tasks:
            _prepend(member, args, kwargs)
    elif not sig.immutable:
        sig.args = args + sig.args
        sig.kwargs.update(kwargs or {})


def _tree(sig: Signature) -> Any:
    """Where ``sig``'s result will be: a task id, or a list (groups) of those."""
    if isinstance(sig, chain):
        return _tree(sig.tasks[-1])
    if isinstance(sig, chord):
        assert sig.body is not None
        return _tree(sig.body)
    if isinstance(sig, group):
        return [_tree(m) for m in sig.tasks]
    return sig.id


def _tree_ids(tree: Any) -> Iterator[str]:
    if isinstance(tree, list):
        for item in tree:
            yield from _tree_ids(item)
    else:
        yield str(tree)


def _tree_map(tree: Any, fn: Callable[[str], Any]) -> Any:
    if isinstance(tree, list):
        return [_tree_map(item, fn) for item in tree]
    return fn(str(tree))


def _leaves(sig: Signature) -> Iterator[Signature]:
    if isinstance(sig, chord):
        yield from _leaves(sig.header)
        if sig.body is not None:
            yield from _leaves(sig.body)
    elif isinstance(sig, chain | group):
        for step in sig.tasks:
            yield from _leaves(step)
    else:
        yield sig


def _entries(sig: Signature) -> Iterator[Signature]:
    """The tasks that carry a workflow's errbacks and would have started it."""
    if isinstance(sig, chain):
        if sig.tasks:
            yield from _entries(sig.tasks[0])
    elif isinstance(sig, chord):
        if sig.body is not None:
            yield from _entries(sig.body)
    elif isinstance(sig, group):
        for member in sig.tasks:
            yield from _entries(member)
    else:
        yield sig


def as_signature(value: Any, app: Conveyor | None = None) -> Signature:
    """Accept a Signature, a task, a signature dict, or a module-level function.

    A plain function (as in ``link=on_success``) is registered as a task of the app under
    ``module.qualname`` so a worker can run it; the worker must register it too (importing
    the module that passes it, or decorating it with ``@app.task``)."""
    if isinstance(value, Signature):
        return value
    if isinstance(value, dict):
        return Signature.from_dict(value, app)
    if isinstance(value, Task):
        return value.s()
    if inspect.isfunction(value):
        return _function_task(value, app).s()
    raise TypeError(f"expected a signature or a task, got {type(value).__name__}")


def _function_task(fn: Callable[..., Any], app: Conveyor | None) -> Task[Any, Any]:
    name = f"{fn.__module__}.{fn.__qualname__}"
    if "<" in name:
        raise TypeError(
            f"{name} cannot be a callback: a worker finds callbacks by name, so use a task "
            "(@app.task) or a module-level function"
        )
    if app is None:
        from .app import default_app

        app = default_app()
    task = app.tasks.get(name)
    if task is None:
        task = app.task(name=name)(fn)
    return task


def signature(value: Any, *args: Any, **kwargs: Any) -> Signature:
    """``signature("tasks.add", args=(2, 2), countdown=10)`` or ``signature(sig_dict)``."""
    if isinstance(value, str):
        return Signature(value, kwargs.pop("args", ()), kwargs.pop("kwargs", {}), options=kwargs)
    return as_signature(value)


# -- sending ------------------------------------------------------------------------------


class _Plan:
    """Collects what applying a frozen workflow publishes (leaf tasks, in one bulk call) and
    the small values that must be stored first (chord records, saved groups)."""

    def __init__(
        self,
        app: Conveyor,
        *,
        once: bool = False,
        parent_id: str | None = None,
        root_id: str | None = None,
    ) -> None:
        self.app = app
        self.once = once
        self.parent_id = parent_id
        self.root_id = root_id
        self.leaves: list[Signature] = []
        self.values: list[tuple[str, bytes]] = []

    def add(
        self, sig: Signature, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> None:
        if isinstance(sig, chain):
            self._chain(sig, args, kwargs)
        elif isinstance(sig, chord):
            self._chord(sig, args, kwargs)
        elif isinstance(sig, group):
            self._group(sig, args, kwargs)
        else:
            self._leaf(sig, args, kwargs)

    def _leaf(self, sig: Signature, args: tuple[Any, ...], kwargs: dict[str, Any] | None) -> None:
        leaf = sig.clone(args, kwargs)
        options = leaf.options
        if self.parent_id and not options.get("parent_id"):
            options["parent_id"] = self.parent_id
        if self.root_id and not options.get("root_id"):
            options["root_id"] = self.root_id
        if self.once:
            options["headers"] = {**(options.get("headers") or {}), ONCE_HEADER: True}
        self.leaves.append(leaf)

    def _chain(self, sig: chain, args: tuple[Any, ...], kwargs: dict[str, Any] | None) -> None:
        if not sig.tasks:
            return
        first = sig.tasks[0]
        if len(sig.tasks) > 1:
            first = copy.deepcopy(first)
            _link_tail(first, [chain._of(sig.tasks[1:], sig._app)])
        self.add(first, args, kwargs)

    def _group(self, sig: group, args: tuple[Any, ...], kwargs: dict[str, Any] | None) -> None:
        size = len(sig.tasks)
        for index, member in enumerate(sig.tasks):
            if not _is_workflow(member) and sig.group_id:
                member = member.clone(group_id=sig.group_id, group_index=index, group_size=size)
            self.add(member, args, kwargs)

    def _chord(self, sig: chord, args: tuple[Any, ...], kwargs: dict[str, Any] | None) -> None:
        assert sig.body is not None
        header = copy.deepcopy(sig.header)
        chord_id = str(header.group_id)
        tree = _tree(header)
        ids = list(_tree_ids(tree))
        if not ids:  # nothing to wait for: the body runs at once
            self.add(sig.body, (_tree_map(tree, lambda _: None),))
            return
        info = {"id": chord_id, "size": len(ids)}
        for member in header.tasks:
            _attach_chord(member, info)
        record = {
            "header": tree,
            "body": sig.body.to_dict(),
            "propagate": sig.propagate,
            "root_id": self.root_id,
        }
        self.values.append((_chord_key(chord_id), json.dumps(record).encode()))
        saved = header._handle(self.app, None)
        assert isinstance(saved, GroupResult)
        self.values.append((saved.storage_key, saved.dumps()))
        self._group(header, args, kwargs)

    def send(self) -> None:
        store = self.app.results
        for key, value in self.values:
            store.kv.set_value(key, value, store.expires)
        if self.leaves:
            self.app.send_many(self.leaves)


# -- after a task finished (called by the worker once the result is stored) ----------------


def on_task_finished(app: Conveyor, envelope: Any, state: str, value: Any) -> None:
    """Follow-ups of a finished task: ``link`` callbacks with the result (SUCCESS); otherwise
    ``link_error`` errbacks (FAILURE) with ``(task_id, {"type", "message"})`` - plus the
    traceback text for handlers that require a third argument - and the tasks its callbacks
    would have started are marked as not run; then the chord join, if it is a header task.

    Safe to run more than once for one task (a redelivery): every id sent is deterministic
    and the chord join is an idempotent set-add."""
    if not (envelope.callbacks or envelope.errbacks or envelope.chord):
        return
    _retrying(lambda: _settle(app, envelope, state, value))


def _settle(app: Conveyor, envelope: Any, state: str, value: Any) -> None:
    task_id: str = envelope.id
    if state == states.SUCCESS:
        result = from_json_value(value)
        plan = _Plan(app, once=True, parent_id=task_id, root_id=envelope.root_id)
        for index, data in enumerate(envelope.callbacks):
            sig = Signature.from_dict(data, app)
            sig._freeze(_derived_ids(f"{task_id}:link:{index}"), "", {})
            plan.add(sig, (result,))
        plan.send()
    else:
        if state == states.FAILURE:
            _send_errbacks(app, task_id, envelope.root_id, envelope.errbacks, value)
        if envelope.callbacks:
            note = f"not run: {envelope.task}[{task_id}] before it ended in {state}"
            callbacks = [Signature.from_dict(data, app) for data in envelope.callbacks]
            _skip(app, callbacks, state, value, note)
    if envelope.chord:
        _join(app, envelope.chord, task_id)


def _send_errbacks(
    app: Conveyor,
    task_id: str,
    root_id: str | None,
    errbacks: Sequence[Any],
    info: Any,
    traceback: str | None = None,
) -> None:
    if not errbacks:
        return
    plan = _Plan(app, once=True, parent_id=task_id, root_id=root_id)
    info = {k: v for k, v in from_json_value(info).items() if k != "args"}
    fetched = traceback is not None
    for index, data in enumerate(errbacks):
        sig = as_signature(data, app)
        sig._freeze(_derived_ids(f"{task_id}:errback:{index}"), "", {})
        args: tuple[Any, ...] = (task_id, info)
        if _wants_traceback(app, sig):
            if not fetched:
                record = app.results.get(task_id)
                traceback, fetched = (record.traceback if record else None), True
            args += (traceback,)
        plan.add(sig, args)
    plan.send()


def _wants_traceback(app: Conveyor, sig: Signature) -> bool:
    """True for an errback whose function requires a third argument (Celery's
    ``on_failure(task_id, exc, traceback)`` style)."""
    if _is_workflow(sig) or sig.immutable:
        return False
    task = app.tasks.get(sig.task)
    if task is None:
        return False
    try:
        params = inspect.signature(task.fn)
    except (TypeError, ValueError):
        return False
    bound = (None,) if task.bind else ()
    try:
        params.bind(*bound, None, None, *sig.args, **sig.kwargs)
        return False
    except TypeError:
        pass
    try:
        params.bind(*bound, None, None, None, *sig.args, **sig.kwargs)
        return True
    except TypeError:
        return False


def _skip(app: Conveyor, sigs: Sequence[Signature], state: str, info: Any, note: str) -> None:
    """Record the tasks of ``sigs`` that were never sent as not run (``state`` with ``info``,
    the note as traceback), follow their links, and join their chords on their behalf."""
    leaves = [leaf for sig in sigs for leaf in _leaves(sig) if leaf.id]
    if not leaves:
        return
    existing = app.results.get_many([str(leaf.id) for leaf in leaves])
    # A task that has a record was sent after all (an earlier run of a redelivered task
    # succeeded): it runs and settles its own follow-ups.
    marked = [leaf for leaf, record in zip(leaves, existing, strict=True) if record is None]
    if not marked:
        return
    now = time.time()
    app.results.store(
        [
            ResultRecord(
                id=str(leaf.id),
                state=state,
                result=info,
                traceback=note,
                date_done=now,
                name=leaf.task,
                queue=leaf.options.get("queue"),
                root_id=leaf.options.get("root_id"),
                group_id=leaf.options.get("group_id"),
            )
            for leaf in marked
        ]
    )
    for leaf in marked:
        links = [as_signature(s, app) for s in _listify(leaf.options.get("link"))]
        if links:
            _skip(app, links, state, info, note)
        if leaf.options.get("chord"):
            _join(app, leaf.options["chord"], str(leaf.id))


# -- chords ---------------------------------------------------------------------------------


def _chord_key(chord_id: str) -> str:
    return f"chord:{chord_id}"


def _join(app: Conveyor, info: dict[str, Any], member_id: str) -> None:
    chord_id, size = str(info["id"]), int(info["size"])
    joined = app.results.kv.join(f"{_chord_key(chord_id)}:joined", member_id, app.results.expires)
    if joined >= size:
        _fire(app, chord_id, member_id)


def _fire(app: Conveyor, chord_id: str, member_id: str) -> None:
    """Send the body of a chord whose header is complete, once.

    The claim only keeps concurrent finishers from all sending; it expires (after half a
    lease timeout, before a crashed claimer's message can be redelivered), so a claimer that
    died before sending cannot block the body. The "sent" marker, written after sending, stops
    later redeliveries; a duplicate that slips through has the same body ids and is skipped
    by the worker's run-once guard."""
    store = app.results
    sent_key = f"{_chord_key(chord_id)}:sent"
    if store.kv.get_value(sent_key) is not None:
        return
    hold = max(0.05, float(app.conf.broker_lease_timeout) / 2)
    deadline = time.monotonic() + 2 * hold + 1.0
    while not store.kv.claim(f"{_chord_key(chord_id)}:sending", hold):
        if store.kv.get_value(sent_key) is not None:
            return
        if time.monotonic() > deadline:
            raise ResultStoreError(f"chord {chord_id}: the send claim never expired")
        _pause(0.02)
    raw = store.kv.get_value(_chord_key(chord_id))
    if raw is None:
        logger.error("chord %s: its record is gone (expired?); the body cannot be sent", chord_id)
        return
    data = json.loads(raw)
    tree = data["header"]
    ids = list(_tree_ids(tree))
    records = dict(zip(ids, store.get_many(ids), strict=True))
    values = {
        task_id: from_json_value(record.result)
        for task_id, record in records.items()
        if record is not None and record.state == states.SUCCESS
    }
    failed = [task_id for task_id in ids if task_id not in values]
    body = Signature.from_dict(data["body"], app)
    propagate = bool(data.get("propagate", True))
    if failed and propagate:
        info = _chord_error(chord_id, len(ids), failed, records)
        note = f"not run: chord {chord_id} had failed header tasks"
        for entry in _entries(body):
            _send_errbacks(
                app,
                str(entry.id),
                entry.options.get("root_id"),
                _listify(entry.options.get("link_error")),
                info,
                traceback=note,
            )
        _skip(app, [body], states.FAILURE, info, note)
    else:
        if propagate:
            results = _tree_map(tree, values.__getitem__)
        else:
            results = _tree_map(tree, lambda i: _outcome(i, records[i]))
        plan = _Plan(app, once=True, parent_id=member_id, root_id=data.get("root_id"))
        plan.add(body, (results,))
        plan.send()
    store.kv.set_value(sent_key, b"1", store.expires)


def _outcome(task_id: str, record: ResultRecord | None) -> dict[str, Any]:
    """One header task's outcome, as a ``propagate=False`` body receives it."""
    if record is not None and record.state == states.SUCCESS:
        return {
            "task_id": task_id,
            "state": record.state,
            "result": from_json_value(record.result),
            "error": None,
        }
    state = record.state if record is not None else states.PENDING
    return {"task_id": task_id, "state": state, "result": None, "error": _error(record)}


def _error(record: ResultRecord | None) -> dict[str, str]:
    if record is None:
        return {"type": "conveyor.exceptions.ChordError", "message": "result missing"}
    if record.state == states.FAILURE and isinstance(record.result, dict):
        info = from_json_value(record.result)
        return {"type": str(info.get("type")), "message": str(info.get("message", ""))}
    if record.state == states.REVOKED:
        return {"type": "conveyor.exceptions.TaskRevokedError", "message": "revoked"}
    if record.state == states.EXPIRED:
        return {"type": "conveyor.exceptions.TaskExpiredError", "message": "expired"}
    return {"type": "conveyor.exceptions.ChordError", "message": f"ended in {record.state}"}


def _chord_error(
    chord_id: str, size: int, failed: list[str], records: dict[str, ResultRecord | None]
) -> dict[str, Any]:
    shown = []
    for task_id in failed[:5]:
        record = records[task_id]
        error = _error(record)
        name = record.name if record is not None and record.name else "?"
        shown.append(f"{name}[{task_id}] {error['type']}: {error['message']}")
    more = f" (and {len(failed) - 5} more)" if len(failed) > 5 else ""
    message = (
        f"chord {chord_id}: {len(failed)} of {size} header task(s) did not succeed: "
        + "; ".join(shown)
        + more
    )
    return {**exception_info(ChordError(message)), "failed": failed}


# -- the worker's run-once guard ----------------------------------------------------------


def once_guard(app: Conveyor, envelope: Any) -> ResultRecord | float | None:
    """Decide about a delivery of a task sent by a follow-up (it has :data:`ONCE_HEADER`):
    ``None`` to run it; its ready record if it already finished (do not run it again, only
    re-send its follow-ups); or a delay in seconds if another delivery of the same id (and the
    same retry) started less than two lease timeouts ago (check again later)."""
    record = app.results.get(envelope.id)
    if record is not None and record.ready:
        return record
    lease = float(app.conf.broker_lease_timeout)
    if app.results.kv.claim(f"once:{envelope.id}:{envelope.retries}", 2 * lease):
        return None
    return lease / 2


# -- helpers ------------------------------------------------------------------------------


def _pause(seconds: float) -> None:
    threading.Event().wait(seconds)


def _retrying(action: Callable[[], None], patience: float = 30.0) -> None:
    """Follow-ups are idempotent, so a transient broker/store error is retried rather than
    losing a chain step or a chord body (the message is acked after this returns)."""
    deadline = time.monotonic() + patience
    delay = 0.05
    while True:
        try:
            action()
            return
        except (BrokerError, ResultStoreError) as exc:
            if time.monotonic() + delay > deadline:
                raise
            logger.warning("follow-up failed, retrying in %.2fs: %s", delay, exc)
            _pause(delay)
            delay = min(delay * 2, 2.0)


# -- built-in tasks: map and starmap ------------------------------------------------------


def _target(name: str) -> Task[Any, Any]:
    from .app import default_app, registered_apps

    apps = registered_apps()
    with contextlib.suppress(ConfigurationError):
        apps.insert(0, default_app())
    for app in apps:
        task = app.tasks.get(name)
        if task is not None:
            return task
    raise NotRegistered(name)


def _call(task: Task[Any, Any], args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
    value = task(*args, **kwargs)
    if inspect.iscoroutine(value):
        return asyncio.run(value)
    return value


def _map(task: dict[str, Any], it: list[Any]) -> list[Any]:
    sig = Signature.from_dict(task)
    target = _target(sig.task)
    return [_call(target, (item, *sig.args), sig.kwargs) for item in it]


def _starmap(task: dict[str, Any], it: list[list[Any]]) -> list[Any]:
    sig = Signature.from_dict(task)
    target = _target(sig.task)
    return [_call(target, (*item, *sig.args), sig.kwargs) for item in it]


# Registered in every app (like shared tasks), so any worker can run them.
_shared_tasks.extend(
    [Task(_map, None, name="conveyor.map"), Task(_starmap, None, name="conveyor.starmap")]
)
