"""The base of the workflow kinds (chain, group, chord): applying one, and which of its
options a workflow hands down to its tasks."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence

from ..exceptions import ConfigurationError
from ..result import AsyncResult
from .plan import SendPlan
from .signature import (
    Options,
    Result,
    Signature,
    SignatureLike,
    TaskLike,
    links_to_json,
    options_to_json,
    random_ids,
)

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
#: Options that delay only the tasks that start a workflow.
_DELAY = ("countdown", "eta")


class Workflow(Signature):
    """Base of chain, group and chord: applying sends the tasks; calling applies."""

    def apply_async(
        self,
        args: Sequence[object] | None = None,
        kwargs: Mapping[str, object] | None = None,
        **options: object,
    ) -> Result:
        """Freeze, send every task that can start now (one bulk publish), return the handle."""
        app = self.app
        on_commit = options.pop("on_commit", None)
        work = copy.deepcopy(self)
        work.options.update(options)
        parent_id, root_id = work.options.pop("parent_id", None), work.options.pop("root_id", None)
        if not (parent_id is None or isinstance(parent_id, str)) or not (
            root_id is None or isinstance(root_id, str)
        ):
            raise TypeError(f"parent_id and root_id must be strings: {parent_id!r}, {root_id!r}")
        work._freeze(random_ids, "", {})
        handle = work._handle(app, None)
        plan = SendPlan(app, parent_id=parent_id, root_id=root_id)
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

    def delay(self, *args: object, **kwargs: object) -> Result:
        return self.apply_async(args, kwargs)

    def __call__(self, *args: object, **kwargs: object) -> Result:
        """Apply asynchronously (as Celery does for workflows) and return the handle."""
        return self.apply_async(args, kwargs)

    def apply(
        self,
        args: Sequence[object] | None = None,
        kwargs: Mapping[str, object] | None = None,
        **options: object,
    ) -> AsyncResult[object]:
        raise NotImplementedError(
            f"{type(self).__name__}.apply() is not supported: set task_always_eager=True to run "
            "a workflow inline, or use conveyor.testing.TestWorker"
        )

    def _data(self) -> dict[str, object]:
        """The JSON fields every kind has; each adds its members."""
        return {
            "task": self.task,
            "subtask_type": self.subtask_type,
            "options": options_to_json(self.options, self.task),
            **links_to_json(self.options, self._app),
        }


#: A member given to chain / group: a signature, or (as the only one) an iterable of them.
type Member = SignatureLike | Iterable[SignatureLike]


def unpack_members(items: tuple[Member, ...]) -> Iterable[object]:
    """``chain(a, b)`` or ``chain([a, b])`` / a generator (likewise for groups)."""
    if len(items) == 1 and not isinstance(items[0], Signature | TaskLike | dict | str):
        first = items[0]
        if not isinstance(first, Iterable):
            raise TypeError(f"'{type(first).__name__}' object is not iterable")
        return list(first)
    return items


def inheritable(options: Mapping[str, object]) -> Options:
    """The options a workflow hands down to all of its tasks."""
    return {k: v for k, v in options.items() if k not in _NOT_INHERITED}


def start_delay(options: Mapping[str, object]) -> Options:
    """The delay options a workflow hands down to the tasks that start it."""
    return {k: options[k] for k in _DELAY if k in options}
