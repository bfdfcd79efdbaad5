"""Limits in this process (``memory://`` brokers): dictionaries under one lock."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from .store import Grant, book


class MemoryLimits:
    """:class:`~conveyor.limits.store.LimitStore` in this object's dictionaries."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tats: dict[str, float] = {}
        self._slots: dict[str, dict[str, float]] = {}

    def take(
        self, key: str, interval: float, tolerance: float, after: float = 0.0, horizon: float = 0.0
    ) -> Grant:
        with self._lock:
            tat, grant = book(self._tats.get(key), time.time(), interval, tolerance, after, horizon)
            if tat is not None:
                self._tats[key] = tat
            return grant

    def acquire(self, key: str, limit: int, holder: str, ttl: float) -> bool:
        now = time.time()
        with self._lock:
            slots = self._live(key, now)
            if holder not in slots and len(slots) >= limit:
                return False
            slots[holder] = now + ttl
            self._slots[key] = slots
            return True

    def release(self, key: str, holder: str) -> None:
        with self._lock:
            self._slots.get(key, {}).pop(holder, None)

    def renew(self, held: Sequence[tuple[str, str]], ttl: float) -> None:
        now = time.time()
        with self._lock:
            for key, holder in held:
                slots = self._live(key, now)
                if holder in slots:
                    slots[holder] = now + ttl

    def holders(self, key: str) -> list[str]:
        with self._lock:
            return sorted(self._live(key, time.time()))

    def _live(self, key: str, now: float) -> dict[str, float]:
        slots = {h: d for h, d in self._slots.get(key, {}).items() if d > now}
        self._slots[key] = slots
        return slots
