"""In-process result store (``memory://``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from ..kv.memory import MemoryKeyValue
from .base import ResultRecord, ResultStore


class MemoryResultStore(ResultStore):
    schemes = ("memory",)

    def __init__(
        self,
        url: str = "memory://",
        *,
        expires: float | None = 86400.0,
        key_prefix: str = "conveyor",
    ) -> None:
        super().__init__(url, expires=expires, key_prefix=key_prefix)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._records: dict[str, tuple[ResultRecord, float | None]] = {}
        self.kv: MemoryKeyValue = MemoryKeyValue()

    def _expiry(self, ttl: float | None) -> float | None:
        return None if ttl is None else time.time() + ttl

    def _live_record(self, task_id: str) -> ResultRecord | None:
        held = self._records.get(task_id)
        if held is None:
            return None
        if held[1] is not None and held[1] <= time.time():
            del self._records[task_id]
            return None
        return held[0]

    def store(self, records: Sequence[ResultRecord]) -> None:
        expiry = self._expiry(self.expires)
        with self._lock:
            for record in records:
                self._records[record.id] = (record, expiry)
            self._changed.notify_all()

    def get(self, task_id: str) -> ResultRecord | None:
        with self._lock:
            return self._live_record(task_id)

    def wait(self, task_id: str, timeout: float | None) -> ResultRecord | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while True:
                record = self._live_record(task_id)
                if record is not None and record.ready:
                    return record
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return record
                self._changed.wait(remaining)

    def forget(self, task_ids: Sequence[str]) -> None:
        with self._lock:
            for task_id in task_ids:
                self._records.pop(task_id, None)

    def cleanup(self) -> int:
        now = time.time()
        with self._lock:
            dead = [k for k, (_, exp) in self._records.items() if exp is not None and exp <= now]
            for key in dead:
                del self._records[key]
        return len(dead) + self.kv.delete_expired()
