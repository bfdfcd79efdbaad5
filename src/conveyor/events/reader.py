"""Reading events: from any position or time, filtered, once or following new ones."""

from __future__ import annotations

import fnmatch
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..streams import START, Entry
from .model import EVENT_TYPES, STATES, STREAM, Event, MalformedEvent, decode

if TYPE_CHECKING:
    from ..streams import Streams

logger = logging.getLogger("conveyor.events")

#: Entries fetched per stream read.
PAGE = 500


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which events to keep: any of ``types`` (``task-failed`` or a glob ``task-*``), any of
    ``names`` (task name globs), ``states`` (``FAILURE`` or ``failed``), ``queues``, and
    ``hostnames`` (globs). An empty criterion keeps everything."""

    types: tuple[str, ...] = ()
    names: tuple[str, ...] = ()
    states: tuple[str, ...] = ()
    queues: tuple[str, ...] = ()
    hostnames: tuple[str, ...] = ()

    @classmethod
    def of(
        cls,
        *,
        types: Iterable[str] = (),
        names: Iterable[str] = (),
        states: Iterable[str] = (),
        queues: Iterable[str] = (),
        hostnames: Iterable[str] = (),
    ) -> EventFilter:
        """A filter; raises ValueError for an event type or state that does not exist."""
        types, states = tuple(types), tuple(_state(s) for s in states)
        for kind in types:
            if not fnmatch.filter(EVENT_TYPES, kind):
                raise ValueError(
                    f"unknown event type {kind!r}: expected one of {', '.join(EVENT_TYPES)}"
                )
        return cls(types, tuple(names), states, tuple(queues), tuple(hostnames))

    def __call__(self, event: Event) -> bool:
        if self.types and not _matches(self.types, event.type):
            return False
        if self.names and not (event.name and _matches(self.names, event.name)):
            return False
        if self.states and event.state not in self.states:
            return False
        if self.queues and event.queue not in self.queues:
            return False
        return not self.hostnames or _matches(self.hostnames, event.hostname)


def _matches(patterns: tuple[str, ...], value: str) -> bool:
    return any(fnmatch.fnmatchcase(value, pattern) for pattern in patterns)


def _state(name: str) -> str:
    """``FAILURE``, ``failure``, ``failed`` or ``task-failed`` -> ``FAILURE``."""
    upper = name.upper()
    if upper in STATES.values():
        return upper
    kind = name.lower() if name.lower().startswith("task-") else f"task-{name.lower()}"
    if kind in STATES:
        return STATES[kind]
    known = ", ".join(sorted(set(STATES.values())))
    raise ValueError(f"unknown task state {name!r}: expected one of {known}")


class EventReader:
    """Reads the events stream of a broker (``app.events`` is one)."""

    def __init__(self, streams: Callable[[], Streams]) -> None:
        self._streams = streams

    def last_position(self) -> str:
        """The position of the newest event: follow from here to see only new ones."""
        return self._streams().last(STREAM)

    def read(
        self,
        after: str | None = None,
        *,
        since: float | None = None,
        limit: int = 1000,
        where: EventFilter | None = None,
    ) -> list[Event]:
        """Up to ``limit`` events after position ``after`` (None: the oldest kept), or from
        POSIX time ``since``, that pass ``where``. Malformed entries are skipped (logged)."""
        out: list[Event] = []
        position = after or START
        streams = self._streams()
        while len(out) < limit:
            entries = streams.read(STREAM, position, limit=PAGE, since=since)
            if not entries:
                break
            position = entries[-1].position
            out += _decoded(entries, where)
        return out[:limit]

    def follow(
        self,
        after: str | None = None,
        *,
        since: float | None = None,
        where: EventFilter | None = None,
        stop: threading.Event | None = None,
        wait: float = 1.0,
    ) -> Iterator[Event]:
        """Yield events as they come, forever (or until ``stop`` is set): from position
        ``after``, or time ``since``, or (neither) the events written from now on."""
        streams = self._streams()
        if after is None and since is None:
            after = streams.last(STREAM)
        position = after or START
        while stop is None or not stop.is_set():
            entries = streams.read(STREAM, position, limit=PAGE, wait=wait, since=since)
            if entries:
                position = entries[-1].position
                yield from _decoded(entries, where)


def _decoded(entries: Iterable[Entry], where: EventFilter | None) -> Iterator[Event]:
    for entry in entries:
        try:
            event = decode(entry.body, entry.position)
        except MalformedEvent as exc:
            logger.warning("skipping a malformed event at position %s: %s", entry.position, exc)
            continue
        if where is None or where(event):
            yield event
