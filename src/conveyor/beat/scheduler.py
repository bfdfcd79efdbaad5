"""Beat: sends periodic tasks, once per (entry, due time), from any number of beat processes.

How "exactly once" holds with several beats, restarts and crashes:

1. **Every beat computes the same due instants.** Schedules are pure functions of time
   (intervals sit on a fixed grid, crontabs on the wall clock) and "now" is the broker's clock.
2. **A claim per run.** Before sending, a beat atomically creates
   ``beat:claim:{entry}:{instant}`` in the broker (``app.kv.claim``); only the beat that created
   it sends. A lock would only serialize beats; the claim names the run itself, so a slow beat
   that wakes up late cannot send a run another beat already sent.
3. **A deterministic task id** (UUID5 of entry and instant), so every run is identifiable: a beat
   that crashed between claim and send leaves a claimed run with no message under that id.
4. **Progress lives in the broker.** ``beat:last:{entry}`` holds the last instant sent (or
   skipped), so a restarted beat resumes where the fleet left off.

Runs that fell due while this beat was running are always sent, even when it is late. Runs that
fell due while it was not running (before it started, or while it was stalled) and that no other
beat sent are *missed*, and follow the entry's ``catch_up`` policy: ``"latest"`` (default) sends
the most recent one, ``"all"`` sends each (the latest ``MAX_CATCH_UP``), ``"skip"`` none.

This module is the loop; entries are read in :mod:`.entry`, runs named and claimed in
:mod:`.runs`, and progress kept by :mod:`.progress`.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Protocol, TypedDict
from zoneinfo import ZoneInfo

from ..exceptions import ConfigurationError, SerializationError
from ..message import JSONValue
from ..signals import beat_init
from .entry import CATCH_UP_POLICIES, Entry
from .progress import Progress
from .runs import claim_key, due_between, iso, run_id
from .schedules import InvalidSchedule
from .switches import apply_switches

if TYPE_CHECKING:
    from ..app import Conveyor
    from ..brokers.base import Broker

__all__ = ["CATCH_UP_POLICIES", "MAX_CATCH_UP", "Beat", "Entry", "run_beat", "run_id"]

logger = logging.getLogger("conveyor.beat")

#: Most missed runs one entry sends after downtime with ``catch_up="all"``.
MAX_CATCH_UP = 1000


@dataclass(slots=True)
class _State:
    """What one beat process knows about one enabled entry."""

    entry: Entry
    tz: ZoneInfo
    cursor: datetime  # every instant up to here (UTC) was sent, skipped or seen claimed
    next_due: datetime | None = None
    unsent: list[datetime] = field(default_factory=list)  # claimed by us, send failed

    @property
    def timing(self) -> tuple[dict[str, JSONValue], str]:
        return self.entry.schedule.to_dict(), self.tz.key


# -- the scheduler -------------------------------------------------------------------------
class BeatOptions(TypedDict, total=False):
    """The keyword options of :class:`Beat` (for wrappers that pass them on)."""

    name: str | None
    max_interval: float
    claim_ttl: float
    stall_after: float
    entries: Mapping[str, object] | None


class Beat:
    """Sends the app's periodic tasks. Run any number of these against one broker.

    Entries come from ``app.conf.beat_schedule`` (re-read on every tick, so changes apply
    without a restart) unless :meth:`set_entries` replaced them. ``max_interval`` caps the sleep
    between ticks; ``claim_ttl`` is how long a run's claim is kept; a beat that did not tick for
    ``stall_after`` seconds past its plan treats runs due meanwhile as missed.
    """

    def __init__(
        self,
        app: Conveyor,
        *,
        name: str | None = None,
        max_interval: float = 5.0,
        claim_ttl: float = 3600.0,
        stall_after: float = 30.0,
        entries: Mapping[str, object] | None = None,
    ) -> None:
        if max_interval <= 0 or claim_ttl <= 0 or stall_after <= 0:
            raise ConfigurationError("max_interval, claim_ttl and stall_after must be positive")
        app.finalize()  # fires on_after_configure, where add_periodic_task is usually called
        self.app = app
        self.name = name or f"beat@{socket.gethostname()}:{os.getpid()}"
        self._progress = Progress(app, self.name)
        self.max_interval = max_interval
        self.claim_ttl = claim_ttl
        self.stall_after = stall_after
        #: Broker time of the first tick: runs due before it that no beat sent were missed.
        self.started_at: datetime | None = None
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._source: dict[str, object] | None = None
        self._entries: dict[str, Entry] = {}
        self._states: dict[str, _State] = {}
        self._paused: set[str] = set()
        self._reported: dict[str, str] = {}  # entry -> last config error logged
        self._alive_since: datetime | None = None
        self._tick_by: datetime | None = None
        self.set_entries(entries)

    # -- configuration -------------------------------------------------------------------
    @property
    def broker(self) -> Broker:
        return self.app.broker

    @property
    def entries(self) -> dict[str, Entry]:
        """The entries in use (disabled ones included)."""
        with self._lock:
            return dict(self._entries)

    def set_entries(self, entries: Mapping[str, object] | None) -> None:
        """Use ``entries`` (``beat_schedule`` form) instead of ``app.conf.beat_schedule``;
        ``None`` goes back to the app's. Raises InvalidSchedule (and changes nothing) if an
        entry is invalid. Takes effect at once in a running beat."""
        source = None if entries is None else dict(entries)
        with self._lock:
            loaded = {name: self._load(name, spec) for name, spec in self._source_items(source)}
            self._source = source
            self._entries = loaded
            self._reported.clear()
        self._wake.set()

    def reload(self) -> None:
        """Re-read the entries now instead of at the next tick."""
        self._wake.set()

    def _source_items(self, source: dict[str, object] | None) -> list[tuple[str, object]]:
        items = source if source is not None else self.app.conf.beat_schedule
        return list(items.items())

    def _load(self, name: str, spec: object) -> Entry:
        entry = Entry.from_config(name, spec)
        if entry != self._entries.get(name):
            # Build (but do not send) a message, so that what the app would refuse at send
            # time (a bad priority, say) is refused when the entry is loaded.
            try:
                self.app.prepare(
                    entry.task,
                    entry.args,
                    dict(entry.kwargs),
                    dict(entry.options),
                    self.app.tasks.get(entry.task),
                )
            except (ConfigurationError, SerializationError, TypeError) as exc:
                raise InvalidSchedule(f"beat_schedule[{name!r}]: {exc}") from None
        return entry

    def _reload(self) -> None:
        """Re-read the entries; an invalid one is logged once and keeps its last good form."""
        loaded: dict[str, Entry] = {}
        for name, spec in self._source_items(self._source):
            try:
                loaded[name] = self._load(name, spec)
                self._reported.pop(name, None)
            except InvalidSchedule as exc:
                if self._reported.get(name) != str(exc):
                    self._reported[name] = str(exc)
                    kept = "keeping its previous version" if name in self._entries else "ignored"
                    logger.error("%s: %s (%s)", self.name, exc, kept)
                if name in self._entries:
                    loaded[name] = self._entries[name]
        self._entries = apply_switches(self.app.kv, loaded)

    # -- running -------------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Tick until ``stop`` is set. Broker errors are logged and retried with backoff.
        Sends ``conveyor.signals.beat_init`` (sender: this beat) first."""
        beat_init.send(sender=self)
        logger.info("%s: starting with %d entries", self.name, len(self._entries))
        failures = 0
        while not stop.is_set():
            try:
                delay = self.tick()
                failures = 0
            except Exception:
                failures += 1
                delay = min(self.max_interval, 0.25 * 2**failures)
                logger.exception("%s: tick failed; retrying in %.1f s", self.name, delay)
            deadline = time.monotonic() + delay
            # Wait on stop and on reload(): one Event cannot watch both, so wait in slices.
            while not stop.is_set() and not self._wake.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                stop.wait(min(remaining, 0.25))
        logger.info("%s: stopped", self.name)

    def tick(self) -> float:
        """Send every run that is due; return how long to sleep before the next tick."""
        with self._lock:
            self._wake.clear()
            now = self._now()
            if self._tick_by is not None and now > self._tick_by + timedelta(
                seconds=self.stall_after
            ):
                logger.warning(
                    "%s: ticked %.0f s later than planned (stalled?); runs due meanwhile "
                    "count as missed",
                    self.name,
                    (now - self._tick_by).total_seconds(),
                )
                self._alive_since = now
            if self._alive_since is None:
                self._alive_since = self.started_at = now
            self._reload()
            self._sync(now)
            for state in list(self._states.values()):
                self._run(state, now)
            now = self._now()
            delay = self.max_interval
            for state in self._states.values():
                if state.unsent:
                    delay = min(delay, 1.0)
                if state.next_due is not None:
                    delay = min(delay, (state.next_due - now).total_seconds())
            # Wake a hair late rather than early: an early wake-up finds nothing due.
            delay = max(delay, 0.0) + 0.002
            self._tick_by = now + timedelta(seconds=delay)
            return delay

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self.broker.time(), UTC)

    def _timezone(self, entry: Entry) -> ZoneInfo:
        return entry.tz or ZoneInfo(str(self.app.conf.timezone))

    # -- entries coming and going --------------------------------------------------------
    def _sync(self, now: datetime) -> None:
        for name in list(self._states):
            entry = self._entries.get(name)
            if entry is None or not entry.enabled:
                del self._states[name]
                self._pause(name, now, "removed" if entry is None else "disabled")
        for name, entry in self._entries.items():
            if not entry.enabled:
                if name not in self._paused:
                    self._pause(name, now, "disabled")
                continue
            self._paused.discard(name)
            state = self._states.get(name)
            if state is None:
                self._states[name] = self._start(entry, now)
            elif state.entry != entry:
                old_timing = state.timing
                state.entry, state.tz = entry, self._timezone(entry)
                if state.timing != old_timing:
                    # A new schedule applies from now on; it does not reach into the past.
                    state.cursor = max(state.cursor, now)
                    state.next_due = self._next(state, state.cursor)
                    logger.info(
                        "%s: %s now runs %s; next at %s",
                        self.name,
                        name,
                        entry.schedule.describe(),
                        _local(state.next_due, state.tz),
                    )

    def _start(self, entry: Entry, now: datetime) -> _State:
        tz = self._timezone(entry)
        record = self._progress.read(entry.name)
        if record is None or record.get("paused") or not record.get("due"):
            cursor = now  # new or re-enabled: nothing before now is owed
            self._progress.write(entry.name, {"due": iso(now), "task_id": None, "baseline": True})
        else:
            cursor = datetime.fromisoformat(record["due"])
        state = _State(entry, tz, cursor)
        state.next_due = self._next(state, cursor)  # if already past, _run settles it now
        logger.info(
            "%s: %s -> %s, %s; next at %s (%s)",
            self.name,
            entry.name,
            entry.task,
            entry.schedule.describe(),
            _local(state.next_due, tz),
            tz.key,
        )
        return state

    def _pause(self, name: str, now: datetime, why: str) -> None:
        """Mark the entry paused in the broker, so enabling it later does not catch up on
        the time it was off."""
        self._paused.add(name)
        record = self._progress.read(name)
        if record is None or not record.get("paused"):
            self._progress.write(name, {"due": iso(now), "task_id": None, "paused": True})
            logger.info("%s: %s is %s", self.name, name, why)

    # -- sending -------------------------------------------------------------------------
    def _next(self, state: _State, after: datetime) -> datetime | None:
        moment = state.entry.schedule.next_after(after.astimezone(state.tz))
        return None if moment is None else moment.astimezone(UTC)

    def _run(self, state: _State, now: datetime) -> None:
        for instant in list(state.unsent):
            state.unsent.remove(instant)
            if (now - instant).total_seconds() > self.claim_ttl:
                logger.error(
                    "%s: giving up on %s due %s (id %s): could not send it for %.0f s",
                    self.name,
                    state.entry.name,
                    _local(instant, state.tz),
                    run_id(state.entry.name, instant),
                    self.claim_ttl,
                )
            else:
                self._send(state, instant)
        if state.next_due is None or state.next_due > now:
            return
        entry = state.entry
        # Another beat may have sent (or skipped) runs since we last looked.
        record = self._progress.read(entry.name)
        if record and not record.get("paused") and record.get("due"):
            state.cursor = max(state.cursor, datetime.fromisoformat(record["due"]))
        alive_since = self._alive_since or now
        if state.cursor < alive_since:
            missed, more = due_between(
                entry.schedule, state.cursor, alive_since, state.tz, MAX_CATCH_UP
            )
            if missed:
                self._catch_up(state, missed, more)
            state.cursor = max(state.cursor, alive_since)
        moment = self._next(state, state.cursor)
        while moment is not None and moment <= now:
            self._claim_and_send(state, moment)
            state.cursor = moment
            moment = self._next(state, moment)
        state.cursor = max(state.cursor, now)
        state.next_due = moment

    def _catch_up(self, state: _State, missed: list[datetime], more: bool) -> None:
        entry = state.entry
        count = f"more than {len(missed)}" if more else str(len(missed))
        span = f"{_local(missed[0], state.tz)} to {_local(missed[-1], state.tz)}"
        # Runs another live beat saw fall due are sent by that beat whatever this one decides;
        # the policy only settles runs no beat was running for. Skipped runs are not recorded
        # as done, so that a live beat's late send of one of them is not blocked.
        if entry.catch_up == "skip":
            action = "not sending them"
        elif entry.catch_up == "latest":
            action = "sending the latest"
            missed = missed[-1:]
        else:
            action = f"sending the latest {len(missed)}" if more else "sending each"
        logger.warning(
            "%s: %s run(s) of %s fell due while this beat was not running (%s); catch_up=%s: %s",
            self.name,
            count,
            entry.name,
            span,
            entry.catch_up,
            action,
        )
        if entry.catch_up != "skip":
            for instant in missed:
                self._claim_and_send(state, instant)

    def _claim_and_send(self, state: _State, instant: datetime) -> None:
        if self.app.kv.claim(claim_key(state.entry.name, instant), self.claim_ttl):
            self._send(state, instant)

    def _send(self, state: _State, instant: datetime) -> None:
        entry = state.entry
        task_id = run_id(entry.name, instant)
        options = dict(entry.options)
        given = options.pop("headers", None) or {}
        if not isinstance(given, Mapping):
            raise TypeError(f"the headers of {entry.name} must be a dict, got {given!r}")
        headers = {
            **given,
            "periodic_entry": entry.name,
            "scheduled_at": iso(instant),
        }
        expires = options.get("expires")
        if isinstance(expires, int | float) and not isinstance(expires, bool):
            expires = timedelta(seconds=expires)
        if isinstance(expires, timedelta):
            options["expires"] = instant + expires  # from the due time, not from a late send
        try:
            self.app.send_call(
                entry.task,
                entry.args,
                entry.kwargs,
                {**options, "task_id": task_id, "headers": headers},
            )
        except (SerializationError, ConfigurationError) as exc:
            logger.error(
                "%s: cannot send %s due %s (id %s), dropping this run: %s",
                self.name,
                entry.name,
                _local(instant, state.tz),
                task_id,
                exc,
            )
            return
        except Exception:
            logger.exception(
                "%s: sending %s due %s (id %s) failed; retrying",
                self.name,
                entry.name,
                _local(instant, state.tz),
                task_id,
            )
            state.unsent.append(instant)
            return
        logger.info(
            "%s: sent %s (%s) due %s, id %s",
            self.name,
            entry.name,
            entry.task,
            _local(instant, state.tz),
            task_id,
        )
        self._progress.write(
            entry.name,
            {
                "due": iso(instant),
                "task_id": task_id,
                "beat": self.name,
                "sent_at": datetime.now(UTC).isoformat(),
            },
            newer_only=True,
        )
        try:
            self.on_sent(entry, instant, task_id)
        except Exception:
            logger.exception("%s: on_sent failed for %s due %s", self.name, entry.name, instant)

    def on_sent(self, entry: Entry, instant: datetime, task_id: str) -> None:
        """Called in the beat that sent ``entry``'s run due at ``instant`` (once per run
        across all beats). Override to record runs elsewhere, e.g. in a database."""


def _local(instant: datetime | None, tz: ZoneInfo) -> str:
    return "never" if instant is None else instant.astimezone(tz).isoformat(sep=" ")


class BeatRunOptions(TypedDict, total=False):
    """The keyword options of :func:`run_beat` (and of any :class:`BeatRunner`)."""

    name: str | None
    max_interval: float


class BeatRunner(Protocol):
    """Runs beat for an app until ``stop`` is set: :func:`run_beat`, or an integration's
    (``app.beat_runner``; Django's also reads schedules from the database)."""

    def __call__(
        self,
        app: Conveyor,
        stop: threading.Event | None = None,
        *,
        name: str | None = None,
        max_interval: float = 5.0,
    ) -> None: ...


def run_beat(
    app: Conveyor,
    stop: threading.Event | None = None,
    *,
    name: str | None = None,
    max_interval: float = 5.0,
) -> None:
    """Run a beat until ``stop`` is set (``conveyor beat``, ``conveyor worker -B``).

    Without ``stop``, SIGINT and SIGTERM stop it (when called from the main thread)."""
    if stop is None:
        stop = threading.Event()
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                signal.signal(signum, lambda *_: stop.set())
    Beat(app, name=name, max_interval=max_interval).run(stop)
