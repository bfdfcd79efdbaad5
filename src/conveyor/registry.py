"""The worker registry: each worker process announces itself in ``app.kv`` under
``worker:<hostname>`` (written by :class:`conveyor.worker.heartbeat.Heartbeat`, expiring when
it stops); status, the doctor, remote control, metrics and the dashboard read it here."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, TypedDict, cast

if TYPE_CHECKING:
    from .kv import KeyValue


class ActiveTask(TypedDict):
    """A task running in a worker, as its announcement lists it."""

    id: str
    name: str
    started_at: float


#: Most running tasks an announcement lists.
ACTIVE_SHOWN = 50


class WorkerInfo(TypedDict, total=False):
    """A worker's announcement (``worker:<hostname>`` in the broker), read by
    ``conveyor status``. A worker writes every key; a reader must expect any to be missing."""

    hostname: str
    pid: int
    queues: list[str]
    concurrency: int
    processed: int
    #: Of ``processed``, the tasks that failed; the host's 1-minute load average; the tasks
    #: running now (at most :data:`ACTIVE_SHOWN`: id, task name, start time) - the dashboard.
    failed: int
    load: float
    active: list[ActiveTask]
    running: int
    started_at: float
    seen_at: float
    #: The broker's clock when ``seen_at`` was taken (``conveyor doctor``: clock skew).
    broker_time: float
    #: Task names registered in the worker, its ``timezone`` setting and the ids of its
    #: signing keys (``conveyor.signing.key_ids``; the first signs): for ``conveyor doctor``.
    tasks: list[str]
    timezone: str
    signing_keys: list[str]


#: Key prefix of the worker registry in ``app.kv`` (``worker:<hostname>``).
ANNOUNCEMENT_PREFIX = "worker:"


def read_announcements(kv: KeyValue) -> dict[str, WorkerInfo | None]:
    """Every live worker's announcement by hostname, sorted; None for one that is not a JSON
    object (a reader shows or skips it, never fails on it)."""
    found: dict[str, WorkerInfo | None] = {}
    for key, raw in sorted(kv.values(ANNOUNCEMENT_PREFIX).items()):
        try:
            info = json.loads(raw)
        except ValueError:
            info = None
        found[key.removeprefix(ANNOUNCEMENT_PREFIX)] = (
            cast(WorkerInfo, info) if isinstance(info, dict) else None
        )
    return found
