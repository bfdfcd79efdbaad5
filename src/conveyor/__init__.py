"""Conveyor: a distributed task queue for Python and Django.

>>> from conveyor import Conveyor
>>> app = Conveyor("proj")               # embedded SQLite broker, no server needed
>>> @app.task
... def add(x: int, y: int) -> int:
...     return x + y
>>> add.delay(2, 3).get(timeout=10)      # with a worker running: `conveyor worker -A proj`
5
"""

from . import signals, states
from .app import Conveyor, default_app
from .canvas import Signature, chain, chord, chunks, group, signature, xmap, xstarmap
from .exceptions import (
    ChordError,
    ConfigurationError,
    ConveyorError,
    MaxRetriesExceededError,
    NotRegistered,
    Reject,
    Retry,
    SerializationError,
    SoftTimeLimitExceeded,
    TaskFailed,
    TimeLimitExceeded,
    WorkerLostError,
)
from .middleware import Middleware
from .queues import Exchange, Queue
from .result import AsyncResult, GroupResult
from .schedules import clocked, crontab, every
from .signals import Signal
from .task import Request, Task, current_request, shared_task

__version__ = "0.1.0"

__all__ = [
    "AsyncResult",
    "ChordError",
    "ConfigurationError",
    "Conveyor",
    "ConveyorError",
    "Exchange",
    "GroupResult",
    "MaxRetriesExceededError",
    "Middleware",
    "NotRegistered",
    "Queue",
    "Reject",
    "Request",
    "Retry",
    "SerializationError",
    "Signal",
    "Signature",
    "SoftTimeLimitExceeded",
    "Task",
    "TaskFailed",
    "TimeLimitExceeded",
    "WorkerLostError",
    "chain",
    "chord",
    "chunks",
    "clocked",
    "crontab",
    "current_request",
    "default_app",
    "every",
    "group",
    "shared_task",
    "signals",
    "signature",
    "states",
    "xmap",
    "xstarmap",
]
