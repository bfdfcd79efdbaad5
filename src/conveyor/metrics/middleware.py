"""The middleware that counts: :class:`MetricsMiddleware`."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from .. import states
from ..middleware import Middleware
from .names import QUEUE_WAIT, RUNTIME
from .tally import Tally

if TYPE_CHECKING:
    from ..app import Conveyor
    from ..message import Envelope
    from ..worker.job import Job, Outcome

#: The task name of a message that could not be decoded.
UNKNOWN_TASK = "unknown"


class MetricsMiddleware(Middleware):
    """Counts sent, received, started, succeeded, failed, retried, revoked and dead-lettered
    messages per task name and queue, and observes each task's runtime and queue wait (from
    its ``created_at`` or ``eta``, whichever is later, to its start), into :attr:`tally`.

    ``conveyor worker --metrics-port`` adds one to the app; in a producer (a web process) add
    one yourself to count what it sends, and register :class:`~conveyor.metrics.
    TallyCollector` with your Prometheus registry. In a worker's child process the figures go
    to the supervisor (:mod:`conveyor.worker.metrics_channel`), which serves them."""

    def __init__(self, tally: Tally | None = None) -> None:
        self.tally = tally if tally is not None else Tally()
        # Tasks that ran here and are being dead-lettered (rejected): on_dead_letter follows
        # after_process for them. A dead letter of a task that ran elsewhere - the
        # supervisor's, for a child it killed at the hard time limit - is counted as the
        # failure the child could not count.
        self._ran_dead: set[str] = set()
        self._lock = threading.Lock()

    def after_publish(self, app: Conveyor, envelope: Envelope) -> None:
        self.tally.count("sent", envelope.task, envelope.queue)

    def before_process(self, job: Job) -> None:
        envelope = job.envelope
        name, queue = envelope.task, envelope.queue
        tally = self.tally
        tally.count("received", name, queue)
        tally.count("started", name, queue)
        since = max(envelope.created_at, envelope.eta or 0.0)
        if since > 0.0:
            tally.observe(QUEUE_WAIT, name, queue, max(0.0, time.time() - since))

    def after_process(self, job: Job, outcome: Outcome) -> None:
        envelope = job.envelope
        state = outcome.state
        if state == states.SUCCESS:
            self.tally.count("succeeded", envelope.task, envelope.queue)
        elif state == states.FAILURE:
            self.tally.count("failed", envelope.task, envelope.queue)
        if state in (states.SUCCESS, states.FAILURE, states.RETRY):
            self.tally.observe(RUNTIME, envelope.task, envelope.queue, outcome.runtime)
        if outcome.reason:  # to be dead-lettered (only such outcomes have a reason)
            with self._lock:
                self._ran_dead.add(envelope.id)

    def on_retry(self, job: Job, outcome: Outcome) -> None:
        self.tally.count("retried", job.envelope.task, job.envelope.queue)

    def on_revoked(self, envelope: Envelope, outcome: Outcome) -> None:
        if outcome.envelope is not None:  # revoked before it ran: received, never started
            self.tally.count("received", envelope.task, envelope.queue)
        self.tally.count("revoked", envelope.task, envelope.queue)

    def on_dead_letter(self, envelope: Envelope | None, outcome: Outcome) -> None:
        if envelope is None:
            delivery = outcome.delivery
            name, queue = UNKNOWN_TASK, delivery.queue if delivery is not None else ""
        else:
            name, queue = envelope.task, envelope.queue
        if envelope is None or outcome.envelope is not None:  # not run: received here
            self.tally.count("received", name, queue)
        elif outcome.state == states.FAILURE:
            with self._lock:
                counted = envelope.id in self._ran_dead
                self._ran_dead.discard(envelope.id)
            if not counted:  # its process was killed (hard time limit): count it here
                self.tally.count("failed", name, queue)
                self.tally.observe(RUNTIME, name, queue, outcome.runtime)
        self.tally.count("dead_lettered", name, queue)

    def on_skip(self, envelope: Envelope, outcome: Outcome) -> None:
        self.tally.count("received", envelope.task, envelope.queue)


def find_metrics(middleware: list[Middleware]) -> MetricsMiddleware | None:
    """The app's :class:`MetricsMiddleware`, if it has one."""
    for m in middleware:
        if isinstance(m, MetricsMiddleware):
            return m
    return None
