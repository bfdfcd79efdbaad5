"""The log of messages a worker dead-letters before running them (malformed, unknown task,
impossible delivery count), without a line per message.

A flood of bad messages must not cost a log line each (a formatted record and a write per
message, even at ``-l warning``), yet the operator must hear of it. Per queue, the first
message of a burst is logged with its reason and detail (at WARNING, or the level its kind
asks for); the ones that follow are counted and summed up once per ``interval`` (at WARNING:
how many, which reasons); every message is logged at DEBUG. A burst ends with an interval
in which none came: the next bad message is logged in full again. The reasons and details of
every message stay in the dead-letter queue (``conveyor dlq list``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

#: Seconds between two summaries of one queue's burst.
SUMMARY_INTERVAL = 10.0

#: (queue, messages, count per reason, seconds) of one summary.
type Summary = tuple[str, int, Counter[str], float]


@dataclass(slots=True)
class _Burst:
    since: float
    reasons: Counter[str] = field(default_factory=Counter)


class DeadLetterLog:
    """Rate-limited logging of dead-lettered messages (see the module doc). Thread-safe;
    ``clock`` (monotonic seconds) is injectable for tests. :meth:`flush` is called now and
    then (the worker's heartbeat) so the summary of a burst that ended is not held back
    until the next bad message, and with ``final=True`` when the worker stops."""

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = SUMMARY_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._bursts: dict[str, _Burst] = {}

    def dead_lettered(
        self, message_id: str, queue: str, reason: str, detail: str, level: int = logging.WARNING
    ) -> None:
        """Log that the message ``message_id`` of ``queue`` is dead-lettered for ``reason``
        (``detail`` says why): in full if it starts a burst, else counted for the summary."""
        now = self._clock()
        with self._lock:
            summaries = self._due(now)
            burst = self._bursts.get(queue)
            if burst is None:
                self._bursts[queue] = _Burst(now)
            else:
                burst.reasons[reason] += 1
        self._emit(summaries)
        if burst is None:
            self.logger.log(
                level,
                "dead-lettered message %s from %s (%s): %s; more from this queue are summed "
                "up every %g s (each at DEBUG)",
                message_id,
                queue,
                reason,
                detail,
                self.interval,
            )
        elif self.logger.isEnabledFor(logging.DEBUG):
            self.logger.debug(
                "dead-lettered message %s from %s (%s): %s", message_id, queue, reason, detail
            )

    def flush(self, *, final: bool = False) -> None:
        """Log the summaries that are due (``final``: every count not logged yet)."""
        now = self._clock()
        with self._lock:
            if final:
                summaries = [
                    (queue, burst.reasons.total(), burst.reasons, now - burst.since)
                    for queue, burst in self._bursts.items()
                    if burst.reasons
                ]
                self._bursts.clear()
            else:
                summaries = self._due(now)
        self._emit(summaries)

    def _due(self, now: float) -> list[Summary]:
        """(Lock held.) The summaries of the bursts whose interval passed; a burst with
        nothing to sum up is over."""
        summaries: list[Summary] = []
        for queue, burst in list(self._bursts.items()):
            if now - burst.since < self.interval:
                continue
            if burst.reasons:
                summaries.append((queue, burst.reasons.total(), burst.reasons, now - burst.since))
                self._bursts[queue] = _Burst(now)
            else:
                del self._bursts[queue]
        return summaries

    def _emit(self, summaries: list[Summary]) -> None:
        for queue, count, reasons, seconds in summaries:
            self.logger.warning(
                "dead-lettered %d more message(s) from %s in the last %.0f s: %s "
                "(reasons and details kept in the dead-letter queue: conveyor dlq list)",
                count,
                queue,
                seconds,
                ", ".join(f"{reason} {n}" for reason, n in reasons.most_common()),
            )
