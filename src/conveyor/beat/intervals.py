"""The interval schedule: ``every(seconds)`` on a fixed grid, and Celery's ``schedule``."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Self

from ..message import JSONValue
from .base import InvalidSchedule, Schedule
from .zones import require_aware

__all__ = ["EPOCH", "every", "schedule"]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class every(Schedule):
    """A fixed interval, on the grid ``anchor + k * interval`` (anchor: the Unix epoch).

    ``every(900)`` fires at :00, :15, :30 and :45 of each hour, wherever and whenever the beat
    started. Pass ``anchor`` to shift the grid (``anchor=datetime(2024, 1, 1, 9, 5, tzinfo=...)``).
    """

    kind = "interval"
    __slots__ = ("anchor", "interval")

    def __init__(self, interval: float | timedelta, *, anchor: datetime | None = None) -> None:
        if isinstance(interval, bool) or not isinstance(interval, int | float | timedelta):
            raise InvalidSchedule(f"an interval must be seconds or a timedelta, got {interval!r}")
        if isinstance(interval, int | float):
            if not math.isfinite(interval):
                raise InvalidSchedule(f"an interval must be finite, got {interval!r}")
            interval = timedelta(seconds=interval)
        if interval <= timedelta(0):
            raise InvalidSchedule(f"an interval must be positive, got {interval}")
        if anchor is not None:
            require_aware(anchor)
        self.interval = interval
        self.anchor = anchor

    @property
    def seconds(self) -> float:
        return self.interval.total_seconds()

    def next_after(self, moment: datetime) -> datetime | None:
        require_aware(moment)
        # In UTC: aware arithmetic within one zone is wall-clock arithmetic, off by DST shifts.
        anchor = (self.anchor or EPOCH).astimezone(UTC)
        steps = (moment - anchor) // self.interval + 1
        return (anchor + steps * self.interval).astimezone(moment.tzinfo)

    def describe(self) -> str:
        rest = self.interval
        parts: list[str] = []
        for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
            count, rest = divmod(rest, timedelta(seconds=size))
            if count:
                parts.append(f"{count} {unit}{'s' if count != 1 else ''}")
        if rest:
            seconds = rest.total_seconds()
            parts.append(f"{seconds:g} second{'s' if seconds != 1 else ''}")
        text = "every " + " ".join(parts)
        text = text.replace("every 1 ", "every ") if len(parts) == 1 else text
        return f"{text} (from {self.anchor.isoformat()})" if self.anchor else text

    def to_dict(self) -> dict[str, JSONValue]:
        return {
            "type": self.kind,
            "seconds": self.seconds,
            "anchor": self.anchor.isoformat() if self.anchor else None,
        }

    @classmethod
    def _from_fields(cls, fields: dict[str, object]) -> Self:
        anchor = fields.get("anchor")
        extra = set(fields) - {"seconds", "anchor"}
        if "seconds" not in fields or extra:
            raise InvalidSchedule(f"an interval dict has 'seconds' and 'anchor', got {fields!r}")
        seconds = fields["seconds"]
        if isinstance(seconds, bool) or not isinstance(seconds, int | float | timedelta):
            raise InvalidSchedule(f"an interval must be seconds or a timedelta, got {seconds!r}")
        if not anchor:
            return cls(seconds)
        if not isinstance(anchor, str):
            raise InvalidSchedule(f"an interval's anchor must be an ISO time, got {anchor!r}")
        return cls(seconds, anchor=datetime.fromisoformat(anchor))

    def __repr__(self) -> str:
        anchor = f", anchor={self.anchor.isoformat()!r}" if self.anchor else ""
        return f"<every {self.seconds:g}s{anchor}>"


def schedule(run_every: float | timedelta) -> every:
    """Celery's name for an interval schedule: ``schedule(run_every=timedelta(seconds=30))``."""
    return every(run_every)
