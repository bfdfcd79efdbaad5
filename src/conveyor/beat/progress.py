"""Progress: how far each entry's runs went, kept in the broker, so that a restarted beat
(or any other) resumes where the fleet left off."""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import TYPE_CHECKING, TypedDict

if TYPE_CHECKING:
    from ..app import Conveyor

__all__ = ["LAST_PREFIX", "Progress"]

logger = logging.getLogger("conveyor.beat")

LAST_PREFIX = "beat:last:"


class ProgressRecord(TypedDict, total=False):
    """An entry's ``beat:last:{entry}`` record (see :class:`Progress`)."""

    due: str
    task_id: str | None
    paused: bool
    baseline: bool
    beat: str
    sent_at: str


class Progress:
    """The ``beat:last:{entry}`` records: ``due``, the last instant sent or skipped (UTC, ISO),
    and the ``task_id`` sent for it; ``paused`` marks an entry that was disabled or removed,
    ``baseline`` one that started from "now". ``owner`` names the beat in log lines."""

    def __init__(self, app: Conveyor, owner: str) -> None:
        self.app = app
        self.owner = owner

    def read(self, name: str) -> ProgressRecord | None:
        """Entry ``name``'s record, or None if there is none (or it is unreadable)."""
        raw = self.app.kv.get_value(LAST_PREFIX + name)
        if raw is None:
            return None
        try:
            parsed = json.loads(raw)
        except ValueError:
            logger.warning("%s: ignoring unreadable %s%s: %r", self.owner, LAST_PREFIX, name, raw)
            return None
        record: ProgressRecord = parsed  # what a beat wrote, if it is a dict
        return record if isinstance(parsed, dict) else None

    def write(self, name: str, record: ProgressRecord, *, newer_only: bool = False) -> None:
        """Store entry ``name``'s record; with ``newer_only``, unless the stored one is of a
        later run."""
        if newer_only:
            # Not atomic: a lagging write can step back one run, which claims make harmless.
            current = self.read(name)
            if (
                current
                and current.get("due")
                and not current.get("paused")
                and datetime.fromisoformat(current["due"]) > datetime.fromisoformat(record["due"])
            ):
                return
        self.app.kv.set_value(LAST_PREFIX + name, json.dumps(record).encode())
