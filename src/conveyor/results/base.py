"""The ResultStore interface: where task states and results live.

Records are small JSON documents (:class:`ResultRecord`). A store must let ``wait()`` return
promptly when a task becomes ready without busy polling where the backend allows it
(condition variables in memory, blocking pops or pub/sub in Redis, short backoff in SQL).
Beside the records, ``kv`` (a :class:`~conveyor.kv.KeyValue` in the same storage) holds what
the canvas builds on: group records, chord joins (an idempotent set-add whose answer is the
set's size, for exactly-once joins under redelivery), claims and run-once guards.
"""

from __future__ import annotations

import abc
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import msgspec

from ..states import READY_STATES

if TYPE_CHECKING:
    from ..kv import KeyValue


class ResultRecord(msgspec.Struct, omit_defaults=True):
    """What is known about one task. ``result`` holds tagged JSON (see ``message.to_json_value``):
    the return value on SUCCESS, the ``meta`` of custom states such as PROGRESS, or the
    exception info ``{"type", "message"}`` on FAILURE."""

    id: str
    state: str
    result: Any = None
    traceback: str | None = None
    date_done: float | None = None
    retries: int = 0
    name: str | None = None
    args: list[Any] | None = None
    kwargs: dict[str, Any] | None = None
    worker: str | None = None
    queue: str | None = None
    created_at: float | None = None
    started_at: float | None = None
    parent_id: str | None = None
    root_id: str | None = None
    group_id: str | None = None
    children: list[str] | None = None
    periodic_entry: str | None = None

    @property
    def ready(self) -> bool:
        return self.state in READY_STATES


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(ResultRecord)


def encode_record(record: ResultRecord) -> bytes:
    return _encoder.encode(record)


def decode_record(data: bytes | str) -> ResultRecord:
    return _decoder.decode(data)


class ResultStore(abc.ABC):
    """Abstract result store. Implementations must be safe to use from several threads."""

    schemes: ClassVar[tuple[str, ...]] = ()
    #: Small values, claims and join sets beside the records (groups, chords, run-once
    #: guards), set by each implementation.
    kv: KeyValue

    def __init__(
        self, url: str, *, expires: float | None = 86400.0, key_prefix: str = "conveyor"
    ) -> None:
        self.url = url
        #: Seconds a record lives after it is written (None = forever).
        self.expires = expires
        self.key_prefix = key_prefix

    @abc.abstractmethod
    def store(self, records: Sequence[ResultRecord]) -> None:
        """Write records (replacing earlier ones of the same id); wake waiters of ready ones."""

    @abc.abstractmethod
    def get(self, task_id: str) -> ResultRecord | None:
        """The record of ``task_id``, or None (PENDING)."""

    def get_many(self, task_ids: Sequence[str]) -> list[ResultRecord | None]:
        return [self.get(task_id) for task_id in task_ids]

    @abc.abstractmethod
    def wait(self, task_id: str, timeout: float | None) -> ResultRecord | None:
        """Block until ``task_id`` is ready or ``timeout`` passes; return the latest record."""

    @abc.abstractmethod
    def forget(self, task_ids: Sequence[str]) -> None:
        """Delete records."""

    @abc.abstractmethod
    def cleanup(self) -> int:
        """Delete expired records and ``kv`` entries; return how many. (Stores with native
        TTLs may return 0.)"""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


class PollingResultStore(ResultStore):
    """A store whose server cannot notify waiters (SQL databases): ``wait()`` polls with a
    backoff from ``first_pause`` doubling up to ``poll_interval``, and is woken at once by
    stores made through this object (call :meth:`_notify_local` after writing)."""

    poll_interval: float = 0.02
    first_pause: float = 0.001

    def __init__(
        self, url: str, *, expires: float | None = 86400.0, key_prefix: str = "conveyor"
    ) -> None:
        super().__init__(url, expires=expires, key_prefix=key_prefix)
        self._changed = threading.Condition()
        self._changes = 0

    def _notify_local(self) -> None:
        with self._changed:
            self._changes += 1
            self._changed.notify_all()

    def wait(self, task_id: str, timeout: float | None) -> ResultRecord | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = self.first_pause
        while True:
            with self._changed:
                seen = self._changes
            record = self.get(task_id)
            if record is not None and record.ready:
                return record
            remaining = self.poll_interval if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                return record
            with self._changed:
                if self._changes == seen:
                    self._changed.wait(min(pause, remaining))
            pause = min(pause * 2, self.poll_interval)
