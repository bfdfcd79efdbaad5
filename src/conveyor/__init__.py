"""Conveyor: a distributed task queue for Python and Django.

>>> from conveyor import Conveyor
>>> app = Conveyor("proj")               # embedded SQLite broker, no server needed
>>> @app.task
... def add(x: int, y: int) -> int:
...     return x + y
>>> add.delay(2, 3).get(timeout=10)      # with a worker running: `conveyor worker -A proj`
5
"""

from typing import cast

from . import signals, states
from ._state import CurrentApp
from .app import Conveyor, default_app
from .canvas import Signature, chain, chord, chunks, group, signature, xmap, xstarmap
from .canvas.batch import BatchResult, batch, current_batch
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
from .ids import new_id as uuid
from .middleware import Middleware
from .queues import Exchange, Queue
from .result import (
    AsyncResult,
    GroupResult,
    ResultSet,
    ResultSnapshot,
    allow_join_result,
    result_from_tuple,
)
from .schedules import clocked, crontab, every
from .signals import Signal
from .task import Request, Task, current_request, shared_task

#: The default app at the time of each use (see :class:`conveyor._state.CurrentApp`); typed
#: as the app it stands for.
current_app = cast(Conveyor, CurrentApp())

#: Celery's ``from celery import task``: the same decorator as :func:`shared_task`. (This
#: name is the decorator, not the ``conveyor.task`` module: import that module's names
#: with ``from conveyor.task import ...``.)
task = shared_task

__version__ = "0.1.0"

__all__ = [
    "AsyncResult",
    "BatchResult",
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
    "ResultSet",
    "ResultSnapshot",
    "Retry",
    "SerializationError",
    "Signal",
    "Signature",
    "SoftTimeLimitExceeded",
    "Task",
    "TaskFailed",
    "TimeLimitExceeded",
    "WorkerLostError",
    "allow_join_result",
    "batch",
    "chain",
    "chord",
    "chunks",
    "clocked",
    "crontab",
    "current_app",
    "current_batch",
    "current_request",
    "default_app",
    "every",
    "group",
    "result_from_tuple",
    "shared_task",
    "signals",
    "signature",
    "states",
    "task",
    "uuid",
    "xmap",
    "xstarmap",
]
