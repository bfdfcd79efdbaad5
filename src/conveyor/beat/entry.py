"""Entries: the periodic tasks of ``beat_schedule``, validated."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

from ..calling import CALL_OPTIONS
from ..exceptions import SerializationError
from ..message import encode_arguments
from .schedules import InvalidSchedule, Schedule, as_schedule
from .zones import zone

__all__ = ["CATCH_UP_POLICIES", "Entry"]

#: What an entry may do about runs that fell due while no beat was running.
CATCH_UP_POLICIES = ("latest", "all", "skip")

_ENTRY_KEYS = frozenset(
    {"task", "schedule", "args", "kwargs", "options", "catch_up", "tz", "enabled", "relative"}
)


@dataclass(frozen=True, slots=True)
class Entry:
    """One periodic task, read from a ``beat_schedule`` item."""

    name: str
    task: str
    schedule: Schedule
    args: tuple[object, ...] = ()
    kwargs: Mapping[str, object] = field(default_factory=dict)
    options: Mapping[str, object] = field(default_factory=dict)
    catch_up: str = "latest"
    tz: ZoneInfo | None = None
    enabled: bool = True

    @classmethod
    def from_config(cls, name: str, spec: object) -> Entry:
        """Validate one ``beat_schedule`` item; raise InvalidSchedule naming the entry."""
        where = f"beat_schedule[{name!r}]"
        if not isinstance(name, str) or not name:
            raise InvalidSchedule(f"{where}: entry names must be non-empty strings")
        if not isinstance(spec, Mapping):
            raise InvalidSchedule(f"{where} must be a dict, got {type(spec).__name__}")
        unknown = set(spec) - _ENTRY_KEYS
        if unknown:
            raise InvalidSchedule(
                f"{where}: unknown key(s) {', '.join(map(repr, sorted(unknown)))}; "
                f"expected {', '.join(sorted(_ENTRY_KEYS - {'relative'}))}"
            )
        task = spec.get("task")
        if not isinstance(task, str) or not task:
            raise InvalidSchedule(f"{where}: 'task' must be a task name, got {task!r}")
        if "schedule" not in spec:
            raise InvalidSchedule(f"{where}: 'schedule' is missing")
        try:
            schedule = as_schedule(spec["schedule"])
            tz = zone(spec.get("tz"))
        except InvalidSchedule as exc:
            raise InvalidSchedule(f"{where}: {exc}") from None
        args = spec.get("args") or ()
        if not isinstance(args, list | tuple):
            raise InvalidSchedule(f"{where}: 'args' must be a list or tuple, got {args!r}")
        kwargs = spec.get("kwargs") or {}
        if not isinstance(kwargs, Mapping):
            raise InvalidSchedule(f"{where}: 'kwargs' must be a dict, got {kwargs!r}")
        options = spec.get("options") or {}
        if not isinstance(options, Mapping):
            raise InvalidSchedule(f"{where}: 'options' must be a dict, got {options!r}")
        bad = (set(options) - CALL_OPTIONS) | ({"task_id", "on_commit"} & set(options))
        if bad:
            raise InvalidSchedule(
                f"{where}: option(s) {', '.join(map(repr, sorted(bad)))} cannot be used "
                "for periodic tasks"
            )
        catch_up = spec.get("catch_up", "latest")
        if catch_up not in CATCH_UP_POLICIES:
            raise InvalidSchedule(
                f"{where}: 'catch_up' must be one of {', '.join(map(repr, CATCH_UP_POLICIES))}, "
                f"got {catch_up!r}"
            )
        enabled = spec.get("enabled", True)
        if not isinstance(enabled, bool):
            raise InvalidSchedule(f"{where}: 'enabled' must be True or False, got {enabled!r}")
        try:
            encode_arguments(task, args, kwargs)
        except SerializationError as exc:
            raise InvalidSchedule(f"{where}: {exc}") from None
        return cls(
            name, task, schedule, tuple(args), dict(kwargs), dict(options), catch_up, tz, enabled
        )
