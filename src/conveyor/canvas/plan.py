"""The send plan: what applying a frozen workflow publishes, collected first and then sent
together (one bulk publish, after the small values it needs are stored)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from .once import ONCE_HEADER

if TYPE_CHECKING:
    from ..app import Conveyor
    from .signature import Signature


class SendPlan:
    """Collects the tasks to publish and the values to store first (chord records, saved
    groups). ``once=True`` marks the tasks for the worker's run-once guard (follow-ups);
    ``parent_id`` / ``root_id`` are given to tasks that have none."""

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
        self.tasks: list[Signature] = []
        self.values: list[tuple[str, bytes]] = []

    def add(
        self,
        sig: Signature,
        args: tuple[object, ...] = (),
        kwargs: Mapping[str, object] | None = None,
    ) -> None:
        """Plan applying ``sig`` (frozen) with ``args`` / ``kwargs`` given to what starts it."""
        sig._add_to(self, args, kwargs)

    def add_task(
        self, sig: Signature, args: tuple[object, ...], kwargs: Mapping[str, object] | None
    ) -> None:
        """Plan publishing the single task ``sig``."""
        task = sig.clone(args, kwargs)
        options = task.options
        if self.parent_id and not options.get("parent_id"):
            options["parent_id"] = self.parent_id
        if self.root_id and not options.get("root_id"):
            options["root_id"] = self.root_id
        if self.once:
            headers = options.get("headers") or {}
            if not isinstance(headers, Mapping):
                raise TypeError(f"headers of {sig.task} must be a dict, got {headers!r}")
            options["headers"] = {**headers, ONCE_HEADER: True}
        self.tasks.append(task)

    def store(self, key: str, value: bytes) -> None:
        """Plan storing ``value`` (with the result expiry) before anything is published."""
        self.values.append((key, value))

    def send(self) -> None:
        store = self.app.results
        for key, value in self.values:
            store.kv.set_value(key, value, store.expires)
        if self.tasks:
            self.app.send_many(self.tasks)
