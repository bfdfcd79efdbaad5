"""Shutdown signals, counted without doing work inside the handler.

A Python signal handler runs in the main thread between two bytecodes, possibly while that
thread holds a lock (or inside another handler); taking a lock or starting a thread there can
deadlock. The handler therefore only increments a counter, and a loop elsewhere acts on it:
the first signal asks for a warm shutdown, the second for a cold one.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterable
from types import FrameType

SHUTDOWN_SIGNALS = (signal.SIGTERM, signal.SIGINT)

_Handler = Callable[[int, FrameType | None], object] | int | signal.Handlers | None


class SignalCounter:
    """Count deliveries of ``signums`` from :meth:`install` until :meth:`restore`."""

    def __init__(self, signums: Iterable[signal.Signals] = SHUTDOWN_SIGNALS) -> None:
        self.signums = tuple(signums)
        self.count = 0
        self._previous: dict[signal.Signals, _Handler] = {}

    def install(self) -> SignalCounter:
        for signum in self.signums:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
