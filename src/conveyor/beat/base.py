"""The schedule interface: what every kind of schedule answers, and its error."""

from __future__ import annotations

import abc
from collections.abc import Mapping
from datetime import datetime
from typing import ClassVar, Self

from ..exceptions import ConfigurationError
from ..message import JSONValue

__all__ = ["InvalidSchedule", "Schedule"]


class InvalidSchedule(ConfigurationError, ValueError):
    """A schedule or one of its fields is invalid."""


class Schedule(abc.ABC):
    """When something is due. Schedules are immutable values (equal when their dicts are).

    Each subclass registers under its ``kind``, which :meth:`from_dict` reads back."""

    __slots__ = ()

    kind: ClassVar[str]
    _kinds: ClassVar[dict[str, type[Schedule]]] = {}

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        Schedule._kinds[cls.kind] = cls

    @abc.abstractmethod
    def next_after(self, moment: datetime) -> datetime | None:
        """The first due instant strictly after ``moment`` (aware), or None if none is left."""

    @abc.abstractmethod
    def describe(self) -> str:
        """A short English description."""

    @abc.abstractmethod
    def to_dict(self) -> dict[str, JSONValue]:
        """A JSON-ready dict with a ``"type"`` key; :meth:`from_dict` reverses it."""

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> Schedule:
        """Rebuild any schedule from :meth:`to_dict` output."""
        if not isinstance(data, dict) or "type" not in data:
            raise InvalidSchedule(f"a schedule dict needs a 'type' key, got {data!r}")
        fields: dict[str, object] = dict(data)
        kind = fields.pop("type")
        target = Schedule._kinds.get(kind) if isinstance(kind, str) else None
        if target is None:
            raise InvalidSchedule(
                f"unknown schedule type {kind!r}; expected one of {sorted(Schedule._kinds)}"
            )
        if cls is not Schedule and target is not cls:
            raise InvalidSchedule(f"expected a {cls.kind} schedule, got {kind!r}")
        return target._from_fields(fields)

    @classmethod
    @abc.abstractmethod
    def _from_fields(cls, fields: dict[str, object]) -> Self: ...

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Schedule):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(repr(sorted(self.to_dict().items())))
