"""Beat: periodic tasks, sent exactly once per (entry, due time) by any number of processes."""

from __future__ import annotations

from .schedules import (
    InvalidSchedule,
    Schedule,
    as_schedule,
    clocked,
    crontab,
    every,
    schedule,
)

__all__ = ["InvalidSchedule", "Schedule", "as_schedule", "clocked", "crontab", "every", "schedule"]
