"""Switches: an entry turned on or off from outside its code (the dashboard's Periodic page),
kept in the broker as ``beat:enabled:{entry}`` (``1`` or ``0``), read by every beat on each
tick. A switch wins over the entry's own ``enabled``; removing it gives the entry back its
own. Database schedules (Django) are switched in their row instead."""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING

from ..exceptions import ConveyorError

if TYPE_CHECKING:
    from ..kv import KeyValue
    from .entry import Entry

__all__ = ["SWITCH_PREFIX", "apply_switches", "read_switches", "set_switch"]

logger = logging.getLogger("conveyor.beat")

SWITCH_PREFIX = "beat:enabled:"


def read_switches(kv: KeyValue) -> dict[str, bool]:
    """Every switched entry: name -> enabled."""
    return {
        key.removeprefix(SWITCH_PREFIX): value == b"1"
        for key, value in kv.values(SWITCH_PREFIX).items()
    }


def set_switch(kv: KeyValue, name: str, enabled: bool | None) -> None:
    """Turn entry ``name`` on or off in every beat (None: back to the entry's own setting)."""
    if enabled is None:
        kv.delete_value(SWITCH_PREFIX + name)
    else:
        kv.set_value(SWITCH_PREFIX + name, b"1" if enabled else b"0")


def apply_switches(kv: KeyValue, entries: dict[str, Entry]) -> dict[str, Entry]:
    """``entries`` with the switches applied (unchanged if the broker does not answer)."""
    try:
        switches = read_switches(kv)
    except ConveyorError as exc:
        logger.warning("cannot read the periodic task switches: %s", exc)
        return entries
    return {
        name: dataclasses.replace(entry, enabled=switches[name])
        if name in switches and switches[name] != entry.enabled
        else entry
        for name, entry in entries.items()
    }
