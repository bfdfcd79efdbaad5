"""Signatures: a task name with arguments and call options, and their JSON form.

:class:`Signature` is also the base of the workflow kinds (:mod:`.workflows`). The walks over
a workflow tree (where its result will be, which tasks start it, ...) are methods here with the
behaviour of a single task; each workflow kind overrides them.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, ClassVar, Protocol, runtime_checkable

from .. import _state
from ..message import ChordInfo, JSONValue, from_json_value, to_json_value
from ..result import AsyncResult, GroupResult

if TYPE_CHECKING:
    from ..app import Conveyor
    from ..task import Task
    from .plan import SendPlan

#: The handle of an applied signature.
type Result = AsyncResult[object] | GroupResult
#: What :func:`as_signature` accepts: a signature, a task, or a signature's JSON form
#: (:meth:`Signature.to_dict`); a plain function is refused with a hint.
type SignatureLike = Signature | Mapping[str, object] | Callable[..., object]
#: A signature's call options (``queue``, ``countdown``, ``link``, ``chord``, ...): whatever
#: ``apply_async`` accepts, kept as given until the task is sent.
type Options = dict[str, object]
#: Makes a task id for a position in a workflow (``""`` for the top, ``".0.1"`` below).
type IdFactory = Callable[[str], str]
#: Where a signature's result will be: a task id, or a list of those (groups), nested.
type ResultTree = str | list[ResultTree] | None


class Signature:
    """A task name with arguments and call options: ``add.s(2, 2)``.

    Partial application: arguments given when the signature is applied are *prepended*
    (as Celery does), so ``mul.s(2)`` in a chain is called as ``mul(previous_result, 2)``.
    An immutable signature (``.si()``) ignores them. ``a | b`` builds a chain.
    """

    #: ``"chain"``, ``"group"`` or ``"chord"`` for the workflow kinds (their JSON tag).
    subtask_type: ClassVar[str | None] = None
    #: The workflow kinds by ``subtask_type``, for :meth:`from_dict` and ``|``. They subclass
    #: this class (so this module cannot import theirs) and are entered as they are defined.
    _workflow_kinds: ClassVar[dict[str, type[Signature]]] = {}

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        kind = vars(cls).get("subtask_type")
        if kind is not None:
            Signature._workflow_kinds[kind] = cls

    def __init__(
        self,
        task: str,
        args: Sequence[object] = (),
        kwargs: Mapping[str, object] | None = None,
        *,
        options: Mapping[str, object] | None = None,
        immutable: bool = False,
        app: Conveyor | None = None,
    ) -> None:
        if not isinstance(task, str) or not task:
            raise TypeError(f"a signature's task name must be a non-empty string, got {task!r}")
        self.task = task
        self.args: tuple[object, ...] = tuple(args)
        self.kwargs: dict[str, object] = dict(kwargs or {})
        self.options: Options = dict(options or {})
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
            self._app = _state.default_app()
        return self._app

    @property
    def type(self) -> Task[..., object]:
        """The registered task this signature calls."""
        return self.app.get_task(self.task)

    def __repr__(self) -> str:
        parts = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"{self.task}({', '.join(parts)}){'!' if self.immutable else ''}"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Signature) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash((self.task, self.id))  # args may hold lists; equal signatures share both

    def __deepcopy__(self, memo: dict[int, object]) -> Signature:
        new = copy.copy(self)
        for key, value in self.__dict__.items():
            if key != "_app":  # the app is shared, never copied
                setattr(new, key, copy.deepcopy(value, memo))
        return new

    # -- building ------------------------------------------------------------------------
    def clone(
        self,
        args: Sequence[object] = (),
        kwargs: Mapping[str, object] | None = None,
        **options: object,
    ) -> Signature:
        """A copy with extra arguments (prepended unless immutable) and options merged."""
        new = copy.deepcopy(self)
        new.options.update(options)
        new._prepend(tuple(args), kwargs)
        return new

    def set(self, **options: object) -> Signature:
        """Set call options (queue, priority, countdown, ...) in place; returns self."""
        if "immutable" in options:
            self.immutable = bool(options.pop("immutable"))
        self.options.update(options)
        return self

    def set_immutable(self, immutable: bool) -> None:
        self.immutable = immutable

    def link(self, callback: SignatureLike) -> Signature:
        """Run ``callback`` with this task's result when it succeeds; returns the callback."""
        sig = as_signature(callback, self._app)
        self.options["link"] = [*listify(self.options.get("link")), sig]
        return sig

    def link_error(self, errback: SignatureLike) -> Signature:
        """Run ``errback(task_id, {"type", "message"})`` if this task fails."""
        sig = as_signature(errback, self._app)
        self.options["link_error"] = [*listify(self.options.get("link_error")), sig]
        return sig

    on_error = link_error

    def __or__(self, other: SignatureLike) -> Signature:
        make_chain: Callable[..., Signature] = self._workflow_kinds["chain"]
        steps = as_signature(other, self._app)._chain_steps()
        return make_chain(self, *steps, app=self._app)

    def freeze(self, _id: str | None = None) -> Result:
        """Assign ids (in place) and return the handle this signature's results will have."""
        if _id is not None:
            self._set_final_id(_id)
        self._freeze(random_ids, "", {})
        return self._handle(self.app, None)

    # -- applying ------------------------------------------------------------------------
    def apply_async(
        self,
        args: Sequence[object] | None = None,
        kwargs: Mapping[str, object] | None = None,
        **options: object,
    ) -> Result:
        """Send the task; returns its :class:`~conveyor.result.AsyncResult`."""
        sig = self.clone(args or (), kwargs)
        merged = {**sig.options, **options}
        return self.app.send_call(sig.task, sig.args, sig.kwargs, merged)

    def delay(self, *args: object, **kwargs: object) -> Result:
        return self.apply_async(args, kwargs)

    def apply(
        self,
        args: Sequence[object] | None = None,
        kwargs: Mapping[str, object] | None = None,
        **options: object,
    ) -> AsyncResult[object]:
        """Run the task here and now, as a worker would (results stored)."""
        sig = self.clone(args or (), kwargs)
        merged = {**sig.options, **options}
        return self.app.send_call(sig.task, sig.args, sig.kwargs, merged, eager=True)

    def __call__(self, *args: object, **kwargs: object) -> object:
        """Run the task inline with these extra arguments (like calling the task)."""
        sig = self.clone(args, kwargs)
        return self.app.tasks[sig.task](*sig.args, **sig.kwargs)

    # -- data ----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, object]:
        """JSON-ready form (travels inside messages, can be stored)."""
        return {
            "task": self.task,
            "args": to_json_value(list(self.args), f"signature {self.task} args"),
            "kwargs": to_json_value(self.kwargs, f"signature {self.task} kwargs"),
            "options": options_to_json(self.options, self.task),
            "immutable": self.immutable,
            **links_to_json(self.options, self._app),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object], app: Conveyor | None = None) -> Signature:
        kind = data.get("subtask_type")
        if isinstance(kind, str) and kind in Signature._workflow_kinds:
            return Signature._workflow_kinds[kind]._from_dict(data, app)
        return Signature(
            json_str(data, "task"),
            json_list(from_json_value(data.get("args") or []), "args"),
            json_dict(from_json_value(data.get("kwargs") or {}), "kwargs"),
            options=options_from_json(data, app),
            immutable=bool(data.get("immutable", False)),
            app=app,
        )

    @classmethod
    def _from_dict(cls, data: Mapping[str, object], app: Conveyor | None) -> Signature:
        """Rebuild a workflow kind (each one overrides this)."""
        raise NotImplementedError

    # -- the workflow tree: a single task here, overridden by each workflow kind -----------
    def _freeze(self, ids: IdFactory, path: str, inherited: Options) -> None:
        """Give every task its id (``ids(path)`` unless set) and the options handed down."""
        self.options = {**inherited, **self.options}
        if not self.options.get("task_id"):
            self.options["task_id"] = ids(path)

    def _handle(self, app: Conveyor, parent: Result | None) -> Result:
        """The handle of a frozen signature (``parent`` for ``.parent`` navigation)."""
        return AsyncResult(str(self.id), app, task_name=self.task, parent=parent)

    def _set_final_id(self, task_id: str) -> None:
        """Make ``task_id`` the id of the result (a group's id for groups)."""
        self.options["task_id"] = task_id

    def _prepend(self, args: tuple[object, ...], kwargs: Mapping[str, object] | None) -> None:
        """Partial application: a chain's first step, every group member, a chord's header."""
        if not self.immutable:
            self.args = args + self.args
            self.kwargs.update(kwargs or {})

    def _link_tail(self, links: list[object]) -> None:
        """Add ``links`` to the task(s) whose result is this signature's result."""
        self.options["link"] = [*listify(self.options.get("link")), *links]

    def _add_errback(self, errback: object) -> None:
        """Chains: every step; groups: every member; chords: the body (it fails with
        ChordError when a header task fails, so the errback runs once)."""
        self.options["link_error"] = [*listify(self.options.get("link_error")), errback]

    def _attach_chord(self, info: ChordInfo) -> None:
        """Mark the task(s) whose result is this signature's result as members of chord
        ``info`` (``{"id", "size"}``)."""
        self.options["chord"] = info
        self.options["ignore_result"] = False  # the body reads header results from the store

    def _result_tree(self) -> ResultTree:
        """Where this signature's result will be (frozen signatures only)."""
        return self.id

    def _leaves(self) -> Iterator[Signature]:
        """Every task of the tree."""
        yield self

    def _entries(self) -> Iterator[Signature]:
        """The tasks that carry a workflow's errbacks and would have started it."""
        yield self

    def _chain_steps(self) -> list[Signature]:
        """The steps this signature adds when it follows ``|``: itself, or a chain's steps
        (the chain's own options are not carried over)."""
        return [self]

    def _add_to(
        self, plan: SendPlan, args: tuple[object, ...], kwargs: Mapping[str, object] | None
    ) -> None:
        """Add what applying this (frozen) signature sends now to ``plan``."""
        plan.add_task(self, args, kwargs)


@runtime_checkable
class TaskLike(Protocol):
    """What the canvas needs of a task (:class:`conveyor.Task` is one): its name and a
    signature of it. The canvas depends on this, not on the task module, which itself builds
    signatures (``add.s(1)``)."""

    name: str

    def s(self, *args: object, **kwargs: object) -> Signature: ...


def signature_problem(data: object, app: Conveyor | None = None) -> str | None:
    """Why the JSON form of a signature (a callback, errback or chord body that arrived in a
    message) cannot be rebuilt - a task name that is not a non-empty string, a field of the
    wrong type, anywhere in its tree - or None. A worker checks this before running a task,
    so a bad follow-up dead-letters its message instead of failing after the task ran."""
    try:
        if not isinstance(data, Mapping):
            return f"a signature must be an object, got {type(data).__name__}"
        Signature.from_dict(data, app)
    except (TypeError, ValueError, KeyError, AttributeError, RecursionError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def as_signature(value: object, app: Conveyor | None = None) -> Signature:
    """Accept a Signature, a task, or a signature dict (:meth:`Signature.to_dict`).

    A plain function (``link=on_success``) is refused here, at the call site: a worker
    finds callbacks by task name, so a function it does not know as a task would be
    dead-lettered later. Decorate it with ``@app.task``."""
    if isinstance(value, Signature):
        return value
    if isinstance(value, dict):
        return Signature.from_dict(value, app)
    if isinstance(value, TaskLike):
        return value.s()
    if callable(value):
        name = getattr(value, "__qualname__", None) or type(value).__name__
        raise TypeError(
            f"{name} is a plain function, not a task: a worker runs callbacks and errbacks "
            "(link=, link_error=) by task name, so decorate it with @app.task (or "
            "@shared_task) and pass it or its signature (on_success.s())"
        )
    raise TypeError(f"expected a signature or a task, got {type(value).__name__}")


def signature(value: str | SignatureLike, *args: object, **kwargs: object) -> Signature:
    """``signature("tasks.add", args=(2, 2), countdown=10)`` or ``signature(sig_dict)``."""
    if isinstance(value, str):
        sig_args = kwargs.pop("args", ())
        sig_kwargs = kwargs.pop("kwargs", None) or None
        if not isinstance(sig_args, Iterable):
            raise TypeError(f"'{type(sig_args).__name__}' object is not iterable")
        if sig_kwargs is not None and not isinstance(sig_kwargs, Mapping):
            raise TypeError(f"kwargs must be a dict, got {type(sig_kwargs).__name__}")
        return Signature(value, tuple(sig_args), sig_kwargs, options=kwargs)
    return as_signature(value)


# -- helpers shared by the canvas modules -----------------------------------------------------


def listify(value: object) -> list[object]:
    """``None`` -> ``[]``, a list or tuple -> a list of it, anything else -> ``[value]``."""
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def random_ids(path: str) -> str:
    """The :data:`IdFactory` of a workflow applied by a client: fresh ids."""
    return str(uuid.uuid4())


def options_to_json(options: Mapping[str, object], task: str) -> JSONValue:
    """Call options as JSON (timedeltas as seconds), without the links."""
    plain = {
        key: value.total_seconds() if isinstance(value, timedelta) else value
        for key, value in options.items()
        if key not in {"link", "link_error"}
    }
    return to_json_value(plain, f"signature {task} options")


def links_to_json(options: Mapping[str, object], app: Conveyor | None) -> dict[str, object]:
    """The ``link`` / ``link_error`` entries of a signature's JSON form (only those set)."""
    return {
        key: [as_signature(s, app).to_dict() for s in listify(options[key])]
        for key in ("link", "link_error")
        if options.get(key)
    }


def options_from_json(data: Mapping[str, object], app: Conveyor | None) -> Options:
    """Undo :func:`options_to_json` and :func:`links_to_json`."""
    options = json_dict(from_json_value(data.get("options") or {}), "options")
    for key in ("link", "link_error"):
        if data.get(key):
            options[key] = [as_signature(d, app) for d in json_list(data[key], key)]
    return options


def str_option(options: Mapping[str, object], key: str) -> str | None:
    """A string option (``queue``, ``root_id``, ...) as a string, None when unset."""
    value = options.get(key)
    return None if value is None else str(value)


def chord_option(options: Mapping[str, object]) -> ChordInfo | None:
    """The ``chord`` option (``{"id", "size"}``) of a chord's header task, None when unset."""
    info = options.get("chord")
    if not info:
        return None
    if not isinstance(info, Mapping):
        raise TypeError(f"the chord option must be a dict, got {info!r}")
    return {"id": str(info["id"]), "size": int(info["size"])}


# -- reading a signature's JSON form ----------------------------------------------------------


def json_str(data: Mapping[str, object], key: str) -> str:
    """``data[key]``, which must be a string."""
    value = data[key]
    if not isinstance(value, str):
        raise TypeError(f"signature field {key!r} must be a string, got {type(value).__name__}")
    return value


def json_list(value: object, what: str) -> list[object]:
    """``value``, which must be a list (a JSON array)."""
    if not isinstance(value, list):
        raise TypeError(f"signature {what} must be a list, got {type(value).__name__}")
    return value


def json_dict(value: object, what: str) -> dict[str, object]:
    """``value``, which must be a dict (a JSON object)."""
    if not isinstance(value, dict):
        raise TypeError(f"signature {what} must be a dict, got {type(value).__name__}")
    return value
