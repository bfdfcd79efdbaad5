"""The dashboard's Periodic page, without any web code: every beat entry - the code's
(``beat_schedule``, ``add_periodic_task``) and, when a :class:`ScheduleSource` is given (the
Django mount), the database's - with its schedule, last and next run and whether it is on;
turning entries on and off, and sending a run now.

A code entry is switched in the broker (:mod:`conveyor.beat.switches`: every beat obeys within
a tick, and a restart keeps it); a database entry in its row, which the source also edits."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol
from zoneinfo import ZoneInfo

from ..app import Conveyor
from ..beat.entry import Entry
from ..beat.progress import LAST_PREFIX
from ..beat.schedules import InvalidSchedule
from ..beat.switches import read_switches, set_switch
from ..exceptions import ConfigurationError, ConveyorError, SerializationError
from ..utils.redaction import redact_arguments
from .operations import ActionError


class ScheduleSource(Protocol):
    """Periodic tasks kept outside the code (Django's ``PeriodicTask`` rows)."""

    def entries(self) -> Mapping[str, object]:
        """Name -> ``beat_schedule`` entry (an exception in place of one that is invalid)."""
        ...

    def edit_url(self, name: str) -> str | None:
        """Where entry ``name`` is edited, if anywhere."""
        ...

    def set_enabled(self, name: str, enabled: bool) -> bool:
        """Turn entry ``name`` on or off; False if there is no such entry."""
        ...


@dataclass(frozen=True)
class PeriodicRow:
    name: str
    task: str
    schedule: str
    call: str
    #: "code" or "database".
    source: str
    enabled: bool
    #: The broker switch of a code entry (None: the entry's own setting).
    switched: bool | None
    last_run: float | None
    last_task_id: str | None
    next_run: float | None
    timezone: str
    edit_url: str | None = None
    problem: str = ""


class Periodic:
    """The periodic tasks of ``app`` (and of ``source``, which wins on a name clash as it
    does in beat)."""

    def __init__(self, app: Conveyor, source: ScheduleSource | None = None) -> None:
        self.app = app
        self.source = source

    def _specs(self) -> dict[str, tuple[object, str]]:
        self.app.finalize()  # add_periodic_task runs in on_after_configure
        specs: dict[str, tuple[object, str]] = {
            name: (spec, "code") for name, spec in self.app.conf.beat_schedule.items()
        }
        if self.source is not None:
            specs.update({n: (s, "database") for n, s in self.source.entries().items()})
        return specs

    def rows(self) -> list[PeriodicRow]:
        kv = self.app.kv
        switches = read_switches(kv)
        progress = kv.values(LAST_PREFIX)
        now = datetime.fromtimestamp(self.app.broker.time(), UTC)
        rows = []
        for name, (spec, source) in sorted(self._specs().items()):
            edit = self.source.edit_url(name) if self.source and source == "database" else None
            try:
                if isinstance(spec, Exception):
                    raise InvalidSchedule(str(spec))
                entry = self._checked(name, spec)
            except InvalidSchedule as exc:
                task = str(spec.get("task", "")) if isinstance(spec, Mapping) else ""
                rows.append(
                    PeriodicRow(
                        name,
                        task,
                        "",
                        "",
                        source,
                        False,
                        None,
                        None,
                        None,
                        None,
                        "",
                        edit,
                        str(exc),
                    )
                )
                continue
            switched = switches.get(name) if source == "code" else None
            enabled = entry.enabled if switched is None else switched
            tz = entry.tz or ZoneInfo(str(self.app.conf.timezone))
            last_run, last_id = _last(progress.get(LAST_PREFIX + name))
            following = entry.schedule.next_after(now.astimezone(tz)) if enabled else None
            args, kwargs = redact_arguments(entry.args, entry.kwargs)
            shown = [json.dumps(a, default=str) for a in args]
            shown += [f"{k}={json.dumps(v, default=str)}" for k, v in kwargs.items()]
            rows.append(
                PeriodicRow(
                    name,
                    entry.task,
                    entry.schedule.describe(),
                    f"{entry.task}({', '.join(shown)})",
                    source,
                    enabled,
                    switched,
                    last_run,
                    last_id,
                    following.timestamp() if following else None,
                    tz.key,
                    edit,
                )
            )
        return rows

    def _entry(self, name: str) -> tuple[Entry, str]:
        found = self._specs().get(name)
        if found is None:
            raise ActionError(404, f"no periodic task named {name!r}")
        spec, source = found
        try:
            if isinstance(spec, Exception):
                raise InvalidSchedule(str(spec))
            return self._checked(name, spec), source
        except InvalidSchedule as exc:
            raise ActionError(409, f"periodic task {name!r} is invalid: {exc}") from None

    def _checked(self, name: str, spec: object) -> Entry:
        """The entry, refused as beat refuses it (arguments the task would not take...)."""
        entry = Entry.from_config(name, spec)
        try:
            task = self.app.tasks.get(entry.task)
            self.app.prepare(entry.task, entry.args, dict(entry.kwargs), dict(entry.options), task)
        except (ConfigurationError, SerializationError, TypeError) as exc:
            raise InvalidSchedule(f"beat_schedule[{name!r}]: {exc}") from None
        return entry

    def set_enabled(self, name: str, enabled: bool) -> int:
        """Turn entry ``name`` on or off; returns 1 if that changed something."""
        entry, source = self._entry(name)
        if source == "database":
            assert self.source is not None
            return int(self.source.set_enabled(name, enabled))
        current = read_switches(self.app.kv).get(name)
        if (entry.enabled if current is None else current) == enabled:
            return 0
        # Back to the code's own setting when that is what is asked; a switch otherwise.
        set_switch(self.app.kv, name, None if enabled == entry.enabled else enabled)
        return 1

    def run_now(self, name: str) -> str:
        """Send entry ``name``'s task now (beside its schedule); returns the task id."""
        entry, _ = self._entry(name)
        try:
            result = self.app.send_task(
                entry.task, list(entry.args), dict(entry.kwargs), **dict(entry.options)
            )
        except (ConveyorError, TypeError) as exc:
            raise ActionError(409, f"could not send {entry.task}: {exc}") from None
        return result.id


def _last(raw: bytes | None) -> tuple[float | None, str | None]:
    """The last run of a ``beat:last:`` record (None for a baseline or a paused entry)."""
    if raw is None:
        return None, None
    try:
        record = json.loads(raw)
        if not isinstance(record, dict) or record.get("baseline") or record.get("paused"):
            return None, None
        due = datetime.fromisoformat(str(record["due"])).timestamp()
        task_id = record.get("task_id")
        return due, str(task_id) if task_id else None
    except (ValueError, KeyError, TypeError):
        return None, None
