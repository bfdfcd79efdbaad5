"""Streams in process memory (``memory://`` brokers): a bounded deque per stream."""

from __future__ import annotations

import threading
import time
from collections import deque

from . import START, Entry, number_position


class MemoryStreams:
    """:class:`~conveyor.streams.Streams` in this process (positions are decimal counters)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._streams: dict[str, deque[tuple[int, float, bytes]]] = {}
        self._expires: dict[str, float] = {}
        self._seq = 0

    def append(self, stream: str, bodies: list[bytes], *, max_length: int, max_age: float) -> None:
        if not bodies:
            return
        with self._cond:
            now = time.time()
            entries = self._streams.get(stream)
            if entries is None or entries.maxlen != max_length:
                entries = deque(entries or (), maxlen=max_length)
                self._streams[stream] = entries
            for body in bodies:
                self._seq += 1
                entries.append((self._seq, now, bytes(body)))
            self._trim(entries, now - max_age)
            self._expires[stream] = now + max_age
            self._cond.notify_all()

    def read(
        self,
        stream: str,
        after: str | None = None,
        *,
        limit: int = 100,
        wait: float = 0.0,
        since: float | None = None,
    ) -> list[Entry]:
        start = number_position(after)
        deadline = time.monotonic() + wait
        with self._cond:
            while True:
                found = self._after(stream, start, limit, since)
                remaining = deadline - time.monotonic()
                if found or remaining <= 0:
                    return found
                self._cond.wait(remaining)

    def last(self, stream: str) -> str:
        with self._cond:
            entries = self._live(stream)
            return str(entries[-1][0]) if entries else START

    def delete(self, stream: str) -> None:
        with self._cond:
            self._streams.pop(stream, None)
            self._expires.pop(stream, None)

    # -- lock held -----------------------------------------------------------------------
    def _live(self, stream: str) -> deque[tuple[int, float, bytes]]:
        if self._expires.get(stream, 0.0) <= time.time():
            self._streams.pop(stream, None)
            self._expires.pop(stream, None)
        return self._streams.get(stream) or deque()

    def _after(self, stream: str, start: int, limit: int, since: float | None) -> list[Entry]:
        out: list[Entry] = []
        for seq, at, body in self._live(stream):
            if seq <= start or (since is not None and at < since):
                continue
            out.append(Entry(str(seq), at, body))
            if len(out) >= limit:
                break
        return out

    @staticmethod
    def _trim(entries: deque[tuple[int, float, bytes]], oldest: float) -> None:
        while entries and entries[0][1] < oldest:
            entries.popleft()
