"""Time zones and wall-clock times, as every schedule reads them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .base import InvalidSchedule

__all__ = ["localize", "require_aware", "zone"]


def zone(value: str | tzinfo | None) -> ZoneInfo | None:
    """Return ``value`` as a ZoneInfo (``datetime.UTC`` counts as ``"UTC"``)."""
    if value is None or isinstance(value, ZoneInfo):
        return value
    if value is UTC:
        return ZoneInfo("UTC")
    if not isinstance(value, str):
        raise InvalidSchedule(
            f"time zone must be an IANA name such as 'Europe/Berlin', got {value!r}"
        )
    try:
        return ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidSchedule(f"unknown time zone {value!r}") from None


def require_aware(moment: datetime) -> None:
    """Refuse a naive ``moment`` (a schedule cannot tell which instant it means)."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"next_after() needs an aware datetime, got naive {moment!r}")


def _is_imaginary(local: datetime) -> bool:
    assert local.tzinfo is not None
    return local != local.astimezone(UTC).astimezone(local.tzinfo)


def localize(naive: datetime, tz: tzinfo) -> datetime:
    """Attach ``tz`` to a wall-clock time with Conveyor's DST rule: a time inside a
    spring-forward gap moves to the first valid minute after it, a repeated time means its
    first occurrence."""
    local = naive.replace(tzinfo=tz, fold=0)
    if not _is_imaginary(local):
        return local
    probe = naive.replace(second=0, microsecond=0)
    for _ in range(24 * 60):  # gaps are at most a day (Samoa 2011), and start on a minute
        probe += timedelta(minutes=1)
        local = probe.replace(tzinfo=tz, fold=0)
        if not _is_imaginary(local):
            return local
    raise AssertionError(f"no valid time after {naive} in {tz}")  # pragma: no cover
