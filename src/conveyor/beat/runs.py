"""Runs: an entry's run due at one instant, named alike by every beat process.

A run's task id and its claim key derive from the entry's name and the due instant only, so
every beat computes the same ones: the beat that creates the claim (``app.kv.claim``) sends the
run, and a run claimed by a beat that crashed before sending is known by its task id.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from .base import Schedule

__all__ = ["CLAIM_PREFIX", "claim_key", "due_between", "iso", "run_id"]

CLAIM_PREFIX = "beat:claim:"
_RUN_NAMESPACE = uuid.UUID("5d0b6a53-3c0e-4d8e-9a55-6f0c7f1b2a41")


def run_id(entry: str, instant: datetime) -> str:
    """The task id of ``entry``'s run due at ``instant`` (the same in every beat process)."""
    return str(uuid.uuid5(_RUN_NAMESPACE, f"{entry}\x00{iso(instant)}"))


def claim_key(entry: str, instant: datetime) -> str:
    """The broker key whose creation claims ``entry``'s run due at ``instant``."""
    return f"{CLAIM_PREFIX}{entry}:{iso(instant)}"


def iso(instant: datetime) -> str:
    """``instant`` in UTC, ISO 8601: how runs are named and recorded."""
    return instant.astimezone(UTC).isoformat()


def due_between(
    schedule: Schedule, after: datetime, until: datetime, tz: ZoneInfo, limit: int
) -> tuple[list[datetime], bool]:
    """The last ``limit`` instants in ``(after, until]`` (UTC), and whether there were more.

    Searches backwards from ``until`` in doubling windows, so a long downtime costs about
    ``limit`` evaluations rather than one per missed run."""
    span = timedelta(hours=1)
    while True:
        start = max(after, until - span)
        found: list[datetime] = []
        moment = schedule.next_after(start.astimezone(tz))
        while moment is not None and (instant := moment.astimezone(UTC)) <= until:
            found.append(instant)
            moment = schedule.next_after(moment)
        if len(found) >= limit or start == after:
            more = len(found) > limit
            if not more and start > after:
                first = schedule.next_after(after.astimezone(tz))
                more = first is not None and first.astimezone(UTC) <= start
            return found[-limit:], more
        span *= 2
