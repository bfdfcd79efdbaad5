"""Events: what happens to tasks and workers, kept in the broker in a bounded stream.

Every app has ``app.events`` (:class:`Events`): workers and producers *emit* through it (see
:mod:`.writer`: buffered, written in batches by a background thread) and anyone can *read*
history or *follow* new events, from any position or time, filtered::

    for event in app.events.follow(where=EventFilter.of(states=["FAILURE"])):
        print(event.name, event.task_id, event["exception"])

Events are kept in ``broker.streams`` (stream ``events``) up to ``events_max_length`` entries
and ``events_max_age`` seconds, so history survives restarts of workers and readers. Emitted
by :class:`~.middleware.EventsMiddleware` from the middleware hooks; the names follow Celery
(``task-sent`` ... ``worker-heartbeat``). See ``docs/events.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .model import EVENT_TYPES, STATES, TASK_EVENTS, WORKER_EVENTS, Event, MalformedEvent
from .reader import EventFilter, EventReader
from .writer import EventWriter

if TYPE_CHECKING:
    from ..app import Conveyor

__all__ = [
    "EVENT_TYPES",
    "STATES",
    "TASK_EVENTS",
    "WORKER_EVENTS",
    "Event",
    "EventFilter",
    "EventReader",
    "EventWriter",
    "Events",
    "MalformedEvent",
]


class Events(EventReader):
    """``app.events``: read and follow events (:class:`EventReader`), and the writer of this
    process (:attr:`writer`)."""

    def __init__(self, app: Conveyor) -> None:
        super().__init__(lambda: app.broker.streams)
        self.writer = EventWriter(app)

    def flush(self) -> None:
        """Write the events buffered in this process now."""
        self.writer.flush()
