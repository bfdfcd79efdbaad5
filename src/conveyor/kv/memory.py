"""In-process key/value storage (``memory://`` brokers and result stores)."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence


class MemoryKeyValue:
    """:class:`~conveyor.kv.KeyValue` in this object's dictionaries."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, tuple[bytes, float | None]] = {}
        self._sets: dict[str, tuple[set[str], float | None]] = {}

    def _live(self, key: str, now: float) -> bytes | None:
        held = self._values.get(key)
        if held is None:
            return None
        value, expiry = held
        if expiry is not None and expiry <= now:
            del self._values[key]
            return None
        return value

    def claim(self, key: str, ttl: float | None = None) -> bool:
        now = time.time()
        with self._lock:
            if self._live(key, now) is not None:
                return False
            self._values[key] = (b"1", _expiry(now, ttl))
            return True

    def get_value(self, key: str) -> bytes | None:
        with self._lock:
            return self._live(key, time.time())

    def get_values(self, keys: Sequence[str]) -> dict[str, bytes]:
        now = time.time()
        with self._lock:
            found = {key: self._live(key, now) for key in keys}
        return {key: value for key, value in found.items() if value is not None}

    def set_value(self, key: str, value: bytes, ttl: float | None = None) -> None:
        with self._lock:
            self._values[key] = (value, _expiry(time.time(), ttl))

    def delete_value(self, key: str) -> None:
        with self._lock:
            self._values.pop(key, None)
            self._sets.pop(key, None)

    def join(self, key: str, member: str, ttl: float | None = None) -> int:
        now = time.time()
        with self._lock:
            members, expiry = self._sets.get(key, (set(), None))
            if expiry is not None and expiry <= now:
                members = set()  # an expired set starts over
            members.add(member)
            self._sets[key] = (members, _expiry(now, ttl))
            return len(members)

    def values(self, prefix: str) -> dict[str, bytes]:
        now = time.time()
        with self._lock:
            keys = [k for k in self._values if k.startswith(prefix)]
            return {k: v for k in keys if (v := self._live(k, now)) is not None}

    # -- owned locks (conveyor.kv.locks) ------------------------------------------------
    def put_new(self, key: str, value: bytes, ttl: float | None = None) -> bytes | None:
        now = time.time()
        with self._lock:
            held = self._live(key, now)
            if held is None:
                self._values[key] = (value, _expiry(now, ttl))
            return held

    def swap(self, key: str, expected: bytes, value: bytes, ttl: float | None = None) -> bool:
        now = time.time()
        with self._lock:
            if self._live(key, now) != expected:
                return False
            self._values[key] = (value, _expiry(now, ttl))
            return True

    def delete_if(self, key: str, expected: bytes) -> bool:
        with self._lock:
            if self._live(key, time.time()) != expected:
                return False
            del self._values[key]
            return True

    def delete_expired(self) -> int:
        """Drop expired values and sets (reads skip them anyway); return how many."""
        now = time.time()
        removed = 0
        with self._lock:
            for table in (self._values, self._sets):
                dead = [k for k, (_, exp) in table.items() if exp is not None and exp <= now]
                for key in dead:
                    del table[key]
                removed += len(dead)
        return removed


def _expiry(now: float, ttl: float | None) -> float | None:
    return None if ttl is None else now + ttl
