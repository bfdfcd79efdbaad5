"""Keeping the worker's background loops alive, and a process with a dead one from idling.

Each loop of a worker thread (consumer, finisher, heartbeat, timer, started records) handles
an unexpected exception in one iteration with :class:`LoopErrors`: logged - with its
traceback the first time, in one line after that - and the loop goes on. If a loop ends by an
exception all the same, :func:`guarded` hands it to the worker, which stops (and a worker
process exits, so its supervisor starts another): a worker never stays up with a dead loop.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

logger = logging.getLogger("conveyor.worker")


class LoopErrors:
    """Logs the unexpected errors of one loop: the first of each type with its traceback,
    the later ones in one line each (a loop that fails every iteration must not flood the
    log with tracebacks)."""

    def __init__(self, loop: str) -> None:
        self.loop = loop
        self.count = 0
        self._seen: set[type[BaseException]] = set()

    def failed(self, exc: BaseException) -> None:
        self.count += 1
        if type(exc) in self._seen:
            logger.error("%s: unexpected error (again): %r", self.loop, exc)
            return
        self._seen.add(type(exc))
        logger.error("%s: unexpected error; going on", self.loop, exc_info=exc)


def guarded(
    name: str, loop: Callable[[], None], died: Callable[[str, BaseException], None]
) -> Callable[[], None]:
    """``loop`` for a thread: an exception that ends it is passed to ``died(name, exc)``."""

    def run() -> None:
        try:
            loop()
        except BaseException as exc:
            died(name, exc)

    return run
