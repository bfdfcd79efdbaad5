"""The workflow kinds: :class:`chain`, :class:`group` and :class:`chord`.

Each kind overrides the tree walks of :class:`~.signature.Signature` (freezing, where its
result will be, which tasks start it, what applying it sends now), so code that walks a
workflow never asks which kind it holds.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING

from ..message import ChordInfo
from ..result import GroupResult
from .base import Member, Workflow, inheritable, start_delay, unpack_members
from .chords import ChordRecord, chord_key, tree_ids, tree_map
from .plan import SendPlan
from .signature import (
    IdFactory,
    Options,
    Result,
    ResultTree,
    Signature,
    SignatureLike,
    TaskLike,
    as_signature,
    json_list,
    listify,
    options_from_json,
)

if TYPE_CHECKING:
    from ..app import Conveyor


class chain(Workflow):
    """Tasks run one after another, each getting the previous result prepended (unless
    immutable): ``chain(add.s(2, 2), mul.s(4))`` or ``add.s(2, 2) | mul.s(4)``.

    A group followed by another step becomes a chord (the step gets the group's results).
    ``apply_async()`` returns the last task's result; ``.parent`` walks back.
    """

    subtask_type = "chain"

    def __init__(self, *tasks: Member, app: Conveyor | None = None, **options: object) -> None:
        steps = [as_signature(t, app) for t in unpack_members(tasks)]
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

    def __or__(self, other: SignatureLike) -> Signature:
        return chain(*self.tasks, as_signature(other, self._app), app=self._app, **self.options)

    def to_dict(self) -> dict[str, object]:
        return {**self._data(), "tasks": [t.to_dict() for t in self.tasks]}

    @classmethod
    def _from_dict(cls, data: Mapping[str, object], app: Conveyor | None) -> Signature:
        new = cls._of(
            [as_signature(t, app) for t in json_list(data.get("tasks", []), "tasks")], app
        )
        new.options = options_from_json(data, app)
        return new

    def _freeze(self, ids: IdFactory, path: str, inherited: Options) -> None:
        opts = {**inherited, **self.options}
        self.options = {}
        if not self.tasks:
            return
        links = listify(opts.pop("link", None))
        errbacks = listify(opts.pop("link_error", None))
        if opts.get("task_id"):
            self.tasks[-1]._set_final_id(str(opts["task_id"]))
        delay = start_delay(opts)
        common = inheritable(opts)
        for index, step in enumerate(self.tasks):
            step._freeze(ids, f"{path}.{index}", {**common, **(delay if index == 0 else {})})
        for errback in errbacks:
            self._add_errback(errback)
        if links:
            self._link_tail(links)

    def _handle(self, app: Conveyor, parent: Result | None) -> Result:
        if not self.tasks:
            raise ValueError("an empty chain has no result")
        handle = parent
        for step in self.tasks:
            handle = step._handle(app, handle)
        assert handle is not None
        return handle

    # The result is the last step's; the first step starts the chain.
    def _set_final_id(self, task_id: str) -> None:
        if self.tasks:
            self.tasks[-1]._set_final_id(task_id)

    def _prepend(self, args: tuple[object, ...], kwargs: Mapping[str, object] | None) -> None:
        if self.tasks:
            self.tasks[0]._prepend(args, kwargs)

    def _link_tail(self, links: list[object]) -> None:
        self.tasks[-1]._link_tail(links)

    def _add_errback(self, errback: object) -> None:
        for step in self.tasks:
            step._add_errback(errback)

    def _attach_chord(self, info: ChordInfo) -> None:
        self.tasks[-1]._attach_chord(info)

    def _result_tree(self) -> ResultTree:
        return self.tasks[-1]._result_tree()

    def _leaves(self) -> Iterator[Signature]:
        for step in self.tasks:
            yield from step._leaves()

    def _entries(self) -> Iterator[Signature]:
        if self.tasks:
            yield from self.tasks[0]._entries()

    def _chain_steps(self) -> list[Signature]:
        return list(self.tasks)

    def _add_to(
        self, plan: SendPlan, args: tuple[object, ...], kwargs: Mapping[str, object] | None
    ) -> None:
        """The first step is sent, with the rest of the chain as its link."""
        if not self.tasks:
            return
        first = self.tasks[0]
        if len(self.tasks) > 1:
            first = copy.deepcopy(first)
            first._link_tail([chain._of(self.tasks[1:], self._app)])
        plan.add(first, args, kwargs)


class group(Workflow):
    """Tasks run in parallel: ``group(add.s(i, i) for i in range(10))``; ``apply_async()``
    sends them in one bulk publish and returns a :class:`~conveyor.result.GroupResult`.
    ``group | task`` is a chord."""

    subtask_type = "group"

    def __init__(self, *tasks: Member, app: Conveyor | None = None, **options: object) -> None:
        members = [as_signature(t, app) for t in unpack_members(tasks)]
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

    def __or__(self, other: SignatureLike) -> Signature:
        return chord(self, as_signature(other, self._app), app=self._app)

    @property
    def group_id(self) -> str | None:
        value = self.options.get("group_id")
        return None if value is None else str(value)

    def to_dict(self) -> dict[str, object]:
        return {**self._data(), "tasks": [t.to_dict() for t in self.tasks]}

    @classmethod
    def _from_dict(cls, data: Mapping[str, object], app: Conveyor | None) -> Signature:
        new = cls(
            [as_signature(t, app) for t in json_list(data.get("tasks", []), "tasks")], app=app
        )
        new.options = options_from_json(data, app)
        return new

    def _freeze(self, ids: IdFactory, path: str, inherited: Options) -> None:
        opts = {**inherited, **self.options}
        group_id = opts.get("task_id") or opts.get("group_id") or ids(path)
        links = listify(opts.pop("link", None))
        errbacks = listify(opts.pop("link_error", None))
        common = {**inheritable(opts), **start_delay(opts)}
        self.options = {"group_id": str(group_id)}
        for index, member in enumerate(self.tasks):
            member._freeze(ids, f"{path}.{index}", common)
            if links:
                member._link_tail(links)
            for errback in errbacks:
                member._add_errback(errback)

    def _handle(self, app: Conveyor, parent: Result | None) -> Result:
        return self._group_result(app, parent)

    def _group_result(self, app: Conveyor, parent: Result | None) -> GroupResult:
        return GroupResult(
            str(self.group_id), [m._handle(app, None) for m in self.tasks], app, parent=parent
        )

    # Every member starts the group and holds part of its result.
    def _set_final_id(self, task_id: str) -> None:
        self.options["group_id"] = task_id

    def _prepend(self, args: tuple[object, ...], kwargs: Mapping[str, object] | None) -> None:
        for member in self.tasks:
            member._prepend(args, kwargs)

    def _link_tail(self, links: list[object]) -> None:
        for member in self.tasks:
            member._link_tail(links)

    def _add_errback(self, errback: object) -> None:
        for member in self.tasks:
            member._add_errback(errback)

    def _attach_chord(self, info: ChordInfo) -> None:
        for member in self.tasks:
            member._attach_chord(info)

    def _result_tree(self) -> ResultTree:
        return [member._result_tree() for member in self.tasks]

    def _leaves(self) -> Iterator[Signature]:
        for member in self.tasks:
            yield from member._leaves()

    def _entries(self) -> Iterator[Signature]:
        for member in self.tasks:
            yield from member._entries()

    def _add_to(
        self, plan: SendPlan, args: tuple[object, ...], kwargs: Mapping[str, object] | None
    ) -> None:
        """Every member is sent; single tasks learn their place in the group."""
        size = len(self.tasks)
        for index, member in enumerate(self.tasks):
            if not isinstance(member, Workflow) and self.group_id:
                member = member.clone(group_id=self.group_id, group_index=index, group_size=size)
            plan.add(member, args, kwargs)


class chord(Workflow):
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
        header: SignatureLike | Iterable[SignatureLike],
        body: SignatureLike | None = None,
        *,
        propagate: bool = True,
        app: Conveyor | None = None,
        **options: object,
    ) -> None:
        if isinstance(header, group):
            head = header
        elif isinstance(header, Signature | TaskLike) or not isinstance(header, Iterable):
            head = group(header, app=app)
        else:
            head = group([as_signature(member, app) for member in header], app=app)
        super().__init__("conveyor.chord", options=options, app=app or head._app)
        self.header: group = head
        self.body: Signature | None = None if body is None else as_signature(body, self._app)
        self.propagate = propagate

    @property
    def tasks(self) -> list[Signature]:
        return self.header.tasks

    def __repr__(self) -> str:
        return f"chord({self.header!r}, {self.body!r})"

    def __call__(self, *args: object, **kwargs: object) -> Result:
        """``chord(header)(body)`` sets the body and applies; ``chord(header, body)()``
        applies."""
        if args and isinstance(args[0], Signature | TaskLike):
            self.body = as_signature(args[0], self._app)
            args = args[1:]
        return self.apply_async(args, kwargs)

    def __or__(self, other: SignatureLike) -> Signature:
        step = as_signature(other, self._app)
        body = step if self.body is None else self.body | step
        return chord(self.header, body, propagate=self.propagate, app=self._app, **self.options)

    def to_dict(self) -> dict[str, object]:
        return {
            **self._data(),
            "header": self.header.to_dict(),
            "body": None if self.body is None else self.body.to_dict(),
            "propagate": self.propagate,
        }

    @classmethod
    def _from_dict(cls, data: Mapping[str, object], app: Conveyor | None) -> Signature:
        header = as_signature(data["header"], app)
        body = data.get("body")
        new = cls(
            header,
            None if body is None else as_signature(body, app),
            propagate=bool(data.get("propagate", True)),
            app=app,
        )
        new.options = options_from_json(data, app)
        return new

    def _freeze(self, ids: IdFactory, path: str, inherited: Options) -> None:
        if self.body is None:
            raise ValueError("a chord needs a body: chord(header)(body) or chord(header, body)")
        opts = {**inherited, **self.options}
        self.options = {}
        links = listify(opts.pop("link", None))
        errbacks = listify(opts.pop("link_error", None))
        chord_id = opts.get("group_id") or self.header.group_id or ids(path + "#chord")
        self.header.options["group_id"] = str(chord_id)
        common = inheritable(opts)
        self.header._freeze(ids, path + ".h", {**common, **start_delay(opts)})
        if opts.get("task_id"):
            self.body._set_final_id(str(opts["task_id"]))
        self.body._freeze(ids, path + ".b", common)
        if links:
            self.body._link_tail(links)
        for errback in errbacks:
            self.body._add_errback(errback)

    def _handle(self, app: Conveyor, parent: Result | None) -> Result:
        assert self.body is not None
        return self.body._handle(app, self.header._handle(app, parent))

    # The header starts the chord; the body holds its result and its errbacks.
    def _set_final_id(self, task_id: str) -> None:
        if self.body is not None:
            self.body._set_final_id(task_id)

    def _prepend(self, args: tuple[object, ...], kwargs: Mapping[str, object] | None) -> None:
        self.header._prepend(args, kwargs)

    def _link_tail(self, links: list[object]) -> None:
        assert self.body is not None
        self.body._link_tail(links)

    def _add_errback(self, errback: object) -> None:
        assert self.body is not None
        self.body._add_errback(errback)

    def _attach_chord(self, info: ChordInfo) -> None:
        assert self.body is not None
        self.body._attach_chord(info)

    def _result_tree(self) -> ResultTree:
        assert self.body is not None
        return self.body._result_tree()

    def _leaves(self) -> Iterator[Signature]:
        yield from self.header._leaves()
        if self.body is not None:
            yield from self.body._leaves()

    def _entries(self) -> Iterator[Signature]:
        if self.body is not None:
            yield from self.body._entries()

    def _add_to(
        self, plan: SendPlan, args: tuple[object, ...], kwargs: Mapping[str, object] | None
    ) -> None:
        """The chord record and the header's membership are stored, then the header is sent
        (each header task carries ``{"id", "size"}`` to join the chord when it finishes)."""
        assert self.body is not None
        header = copy.deepcopy(self.header)
        chord_id = str(header.group_id)
        tree = header._result_tree()
        ids = list(tree_ids(tree))
        if not ids:  # nothing to wait for: the body runs at once
            plan.add(self.body, (tree_map(tree, lambda _: None),))
            return
        header._attach_chord({"id": chord_id, "size": len(ids)})
        record = ChordRecord(tree, self.body.to_dict(), self.propagate, plan.root_id)
        plan.store(chord_key(chord_id), record.dumps())
        saved = header._group_result(plan.app, None)
        plan.store(saved.storage_key, saved.dumps())
        header._add_to(plan, args, kwargs)
