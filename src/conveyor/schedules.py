"""Periodic schedules (Celery's ``celery.schedules``): ``crontab``, ``every``/``schedule``,
``clocked``. See :mod:`conveyor.beat.schedules`."""

from __future__ import annotations

from .beat.schedules import (
    InvalidSchedule,
    Schedule,
    as_schedule,
    clocked,
    crontab,
    every,
    schedule,
)

__all__ = ["InvalidSchedule", "Schedule", "as_schedule", "clocked", "crontab", "every", "schedule"]
