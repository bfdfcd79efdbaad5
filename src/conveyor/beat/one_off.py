"""The one-off schedule: ``clocked(at)``, due once."""

from __future__ import annotations

from datetime import UTC, datetime, tzinfo
from typing import Self

from ..message import JSONValue
from .base import InvalidSchedule, Schedule
from .zones import localize, require_aware, zone

__all__ = ["clocked"]


class clocked(Schedule):
    """Due once, at ``at``. A naive ``at`` is wall time in ``tz`` (or, without ``tz``, in the
    time zone the beat evaluates it in: the entry's or the app's)."""

    kind = "clocked"
    __slots__ = ("at", "tz")

    def __init__(self, at: datetime, tz: str | tzinfo | None = None) -> None:
        if not isinstance(at, datetime):
            raise InvalidSchedule(f"clocked() needs a datetime, got {at!r}")
        self.tz = zone(tz)
        if at.tzinfo is None and self.tz is not None:
            at = localize(at, self.tz)
        self.at = at

    def next_after(self, moment: datetime) -> datetime | None:
        require_aware(moment)
        at = self.at
        if at.tzinfo is None:
            assert moment.tzinfo is not None
            at = localize(at, moment.tzinfo)
        return at if at.astimezone(UTC) > moment.astimezone(UTC) else None

    def describe(self) -> str:
        return f"once at {self.at.isoformat(sep=' ')}"

    def to_dict(self) -> dict[str, JSONValue]:
        return {
            "type": self.kind,
            "at": self.at.isoformat(),
            "tz": self.tz.key if self.tz else None,
        }

    @classmethod
    def _from_fields(cls, fields: dict[str, object]) -> Self:
        try:
            at, tz = fields["at"], fields.get("tz")
            if not isinstance(at, str) or not (tz is None or isinstance(tz, str | tzinfo)):
                raise TypeError("'at' must be an ISO time and 'tz' a zone name")
            return cls(datetime.fromisoformat(at), tz=tz)
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidSchedule(f"bad clocked fields {fields!r}: {exc}") from None

    def __repr__(self) -> str:
        return f"<clocked {self.at.isoformat()}>"
