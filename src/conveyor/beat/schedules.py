"""Schedules: when a periodic task is due.

Three kinds, each answering ``next_after(moment)`` (the first due instant strictly after an
aware datetime, or None when it will never be due again):

* :class:`crontab` - Celery's crontab fields (``crontab(hour=7, minute=30)``) or a standard
  five-field expression (``crontab.from_string("30 7 * * 1-5")``), evaluated in a time zone
  (:mod:`conveyor.beat.cron`, which also describes the DST rules).
* :class:`every` - a fixed interval (a plain number of seconds or a ``timedelta`` in
  ``beat_schedule`` means this). Ticks sit on a grid ``anchor + k * interval`` (the anchor is
  the Unix epoch unless given), so they never drift and every beat process computes the same
  instants - which is what lets several beats agree on what "this run" is.
* :class:`clocked` - once, at a given moment.

:func:`as_schedule` reads what ``beat_schedule`` accepts.
"""

from __future__ import annotations

from datetime import timedelta

from .base import InvalidSchedule, Schedule
from .cron import crontab
from .intervals import every, schedule
from .one_off import clocked

__all__ = [
    "InvalidSchedule",
    "Schedule",
    "as_schedule",
    "clocked",
    "crontab",
    "every",
    "schedule",
]


def as_schedule(value: object) -> Schedule:
    """Read what ``beat_schedule`` accepts: a Schedule, seconds, a timedelta, a cron string,
    or a dict from :meth:`Schedule.to_dict`."""
    if isinstance(value, Schedule):
        return value
    if isinstance(value, int | float | timedelta) and not isinstance(value, bool):
        return every(value)
    if isinstance(value, str):
        return crontab.from_string(value)
    if isinstance(value, dict):
        return Schedule.from_dict(value)
    raise InvalidSchedule(
        f"a schedule must be a crontab, every, clocked, seconds, a timedelta or a cron string; "
        f"got {value!r}"
    )
