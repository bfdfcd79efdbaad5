"""One task over many arguments: :class:`xmap`, :class:`xstarmap` (one message that runs a
task for each item) and :class:`chunks` (a group of ``starmap`` tasks)."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import TYPE_CHECKING

from . import workflows
from .signature import Signature, SignatureLike, as_signature

if TYPE_CHECKING:
    from ..app import Conveyor


class xmap(Signature):
    """One task that calls ``task(item)`` for each item, in one worker: ``add.map(...)``."""

    def __init__(self, task: Signature, it: Iterable[object], app: Conveyor | None = None) -> None:
        super().__init__(
            "conveyor.map", (), {"task": task.to_dict(), "it": list(it)}, app=app or task._app
        )


class xstarmap(Signature):
    """One task that calls ``task(*args)`` for each args tuple: ``add.starmap(...)``."""

    def __init__(
        self, task: Signature, it: Iterable[Iterable[object]], app: Conveyor | None = None
    ) -> None:
        super().__init__(
            "conveyor.starmap",
            (),
            {"task": task.to_dict(), "it": [list(args) for args in it]},
            app=app or task._app,
        )


class chunks(workflows.group):
    """Split ``it`` (argument tuples) into parts of ``n``, one ``starmap`` task per part:
    ``add.chunks(zip(xs, ys), 100)``. ``.get()`` returns one list per part."""

    def __init__(
        self,
        task: SignatureLike,
        it: Iterable[Iterable[object]],
        n: int,
        app: Conveyor | None = None,
        **options: object,
    ) -> None:
        if n < 1:
            raise ValueError(f"chunk size must be at least 1, got {n}")
        sig = as_signature(task, app)
        items = list(it)
        parts = [xstarmap(sig, items[i : i + n], app) for i in range(0, len(items), n)]
        super().__init__(parts, app=app or sig._app, **options)

    def group(self) -> workflows.group:
        """The equivalent plain group."""
        return workflows.group(copy.deepcopy(self.tasks), app=self._app, **self.options)
