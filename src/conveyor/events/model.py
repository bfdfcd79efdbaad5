"""What an event is: its type names, the task states they stand for, encoding and decoding."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Final

import msgspec

#: The stream of ``broker.streams`` events are kept in.
STREAM: Final = "events"

TASK_EVENTS: Final = (
    "task-sent",
    "task-received",
    "task-started",
    "task-succeeded",
    "task-failed",
    "task-retried",
    "task-revoked",
    "task-dead-lettered",
    "task-expired",
)
WORKER_EVENTS: Final = ("worker-online", "worker-heartbeat", "worker-offline")
EVENT_TYPES: Final = TASK_EVENTS + WORKER_EVENTS

#: The task state each task event stands for (``--state`` takes either name).
STATES: Final[dict[str, str]] = {
    "task-sent": "QUEUED",
    "task-received": "RECEIVED",
    "task-started": "STARTED",
    "task-succeeded": "SUCCESS",
    "task-failed": "FAILURE",
    "task-retried": "RETRY",
    "task-revoked": "REVOKED",
    "task-dead-lettered": "DEAD",
    "task-expired": "EXPIRED",
}

type Fields = dict[str, object]


class MalformedEvent(ValueError):
    """Stored bytes that are not an event (skipped by readers, with a warning)."""


@dataclass(frozen=True, slots=True)
class Event:
    """One event as read from the stream. ``fields`` holds everything else the event
    carries (``uuid``, ``name``, ``queue``, ``runtime``, ``exception``, ``running``, ...);
    ``event["runtime"]`` reads a field as in Celery's event dicts."""

    type: str
    timestamp: float
    hostname: str
    position: str = ""
    fields: Fields = field(default_factory=dict)

    def __getitem__(self, key: str) -> object:
        return self.as_dict()[key]

    def get(self, key: str, default: object = None) -> object:
        return self.as_dict().get(key, default)

    @property
    def task_id(self) -> str | None:
        value = self.fields.get("uuid")
        return value if isinstance(value, str) else None

    @property
    def name(self) -> str | None:
        value = self.fields.get("name")
        return value if isinstance(value, str) else None

    @property
    def queue(self) -> str | None:
        value = self.fields.get("queue")
        return value if isinstance(value, str) else None

    @property
    def state(self) -> str | None:
        return STATES.get(self.type)

    def as_dict(self) -> Fields:
        """The event as Celery's receivers see one: a flat dict (with ``position``)."""
        return {
            **self.fields,
            "type": self.type,
            "timestamp": self.timestamp,
            "hostname": self.hostname,
            "position": self.position,
        }


def encode(event: Fields) -> bytes:
    """JSON bytes of an event dict (values that are not JSON become their ``str``)."""
    return _encoder.encode(event)


_encoder = msgspec.json.Encoder(enc_hook=str)


def decode(body: bytes, position: str = "") -> Event:
    """The event in ``body``; :class:`MalformedEvent` if it is not one."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedEvent(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise MalformedEvent("not a JSON object")
    kind, timestamp, hostname = (
        data.pop("type", None),
        data.pop("timestamp", None),
        data.pop("hostname", ""),
    )
    data.pop("position", None)
    if not isinstance(kind, str) or not kind:
        raise MalformedEvent("no 'type'")
    if isinstance(timestamp, bool) or not isinstance(timestamp, int | float):
        raise MalformedEvent("no numeric 'timestamp'")
    if not isinstance(hostname, str):
        raise MalformedEvent("'hostname' is not a string")
    return Event(kind, float(timestamp), hostname, position, data)
