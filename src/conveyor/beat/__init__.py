"""Beat: periodic tasks, sent exactly once per (entry, due time) by any number of processes."""

from __future__ import annotations

from .scheduler import Beat, Entry, run_beat, run_id
from .schedules import (
    InvalidSchedule,
    Schedule,
    as_schedule,
    clocked,
    crontab,
    every,
    schedule,
)

__all__ = [
    "Beat",
    "Entry",
    "InvalidSchedule",
    "Schedule",
    "as_schedule",
    "clocked",
    "crontab",
    "every",
    "run_beat",
    "run_id",
    "schedule",
]
