"""The bookkeeping of messages that left the broker without a worker settling them.

A broker records, in the same atomic step that moves them, the messages its sweep
dead-lettered (``worker_lost``: their workers died ``task_max_deliveries`` times) and the ones
``purge()`` deleted (:meth:`~conveyor.brokers.base.Broker.take_departures`). After each sweep
the heartbeat takes them and does what a worker settling them would have done:

* ``worker_lost`` - the dead-letter path of a task that ran and died: a FAILURE record
  (:class:`WorkerLostError`) unless the task has a final state already, the
  ``on_dead_letter`` middleware hooks (the unique key is freed; a batch member counts as
  dead: ``on_death``), the canvas follow-ups (errbacks, chord join; the batch counts it as
  ended and failed) and its concurrency slot is given back.
* ``purged`` - the task will never run: its unique key is freed and a batch member counts as
  ended and failed. Nothing is recorded (the task's state stays as it was).

Then the broker forgets them. A worker that dies in between leaves them claimed; they are
taken again once the claim lapses, and every effect is idempotent (a key is freed only from
its holder, a batch counts a member once and sends each callback once). None of it needs the
task's arguments to decode.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from .. import states
from .._exceptions_registry import exception_info
from ..brokers.base import PURGED, DeadLetterReason, Departure
from ..canvas import on_task_finished
from ..canvas.batch import BATCH_HEADER, member_finished
from ..exceptions import MalformedMessage, WorkerLostError
from ..limits.options import CONCURRENCY_KEY_HEADER
from ..message import Envelope, decode_arguments, decode_envelope
from ..results.base import ResultRecord
from ..signing import signer_for
from ..unique.middleware import release_not_run
from .hooks import call_outcome_hooks
from .job import Action, Outcome
from .records import RecordBuilder
from .settle import Settler

if TYPE_CHECKING:
    from ..app import Conveyor

logger = logging.getLogger("conveyor.worker")

#: Departures taken at once.
PAGE = 100
#: Seconds one pass works at most (the heartbeat has leases to renew); the rest waits for
#: the next sweep.
BUDGET = 2.0


class Departures:
    """Takes a broker's departures and does their bookkeeping (see the module)."""

    def __init__(self, app: Conveyor, hostname: str) -> None:
        self.app = app
        self.records = RecordBuilder(hostname, bool(app.conf.result_extended))
        self.signer = signer_for(app.conf.message_signing_keys)
        self.max_body_bytes = 2 * int(app.conf.message_max_bytes)
        self.settler = Settler(app)

    def drain(self) -> int:
        """Do the bookkeeping of the departures recorded so far (for up to :data:`BUDGET`
        seconds); return how many are done. One that fails stays for a later pass."""
        broker = self.app.broker
        deadline = time.monotonic() + BUDGET
        done = 0
        while True:
            taken = broker.take_departures(PAGE)
            finished = [d for d in taken if self._account(d)]
            if finished:
                broker.forget_departures(finished)
            done += len(finished)
            if len(taken) < PAGE or len(finished) < len(taken) or time.monotonic() > deadline:
                return done

    def _account(self, departure: Departure) -> bool:
        try:
            envelope: Envelope | None = decode_envelope(
                departure.body, self.max_body_bytes, self.signer
            )
        except MalformedMessage:
            envelope = None  # nothing to free or count: only the hooks see it
        try:
            if departure.reason == PURGED:
                if envelope is not None:
                    self._purged(envelope)
                return True
            return self._lost(departure, envelope)
        except Exception:
            logger.exception("bookkeeping of %s message %s failed", departure.reason, departure.id)
            return False

    def _purged(self, envelope: Envelope) -> None:
        release_not_run(self.app, envelope)
        batch_id = envelope.headers.get(BATCH_HEADER)
        if isinstance(batch_id, str):
            member_finished(self.app, batch_id, envelope.id, states.FAILURE)

    def _lost(self, departure: Departure, envelope: Envelope | None) -> bool:
        reason = DeadLetterReason.WORKER_LOST
        detail = f"lease expired after {self.app.conf.task_max_deliveries} deliveries"
        if envelope is None:
            call_outcome_hooks(self.app.hooks, Outcome(None, Action.DEAD, reason=reason))
            return True
        error = WorkerLostError(
            f"{envelope.task}[{envelope.id}]: its worker was lost on each of its deliveries"
        )
        existing = self.app.results.get(envelope.id)
        if existing is not None and existing.state in states.READY_STATES:
            # It ended after all (its ack was lost), or an earlier pass recorded it.
            state, info, records = existing.state, existing.result, list[ResultRecord]()
        else:
            state, info = states.FAILURE, exception_info(error)
            records = list[ResultRecord]()
            if not envelope.ignore_result:
                records.append(self.records.failure(envelope, error, None))
        outcome = Outcome(
            None,
            Action.DEAD,
            records,
            reason=reason,
            detail=detail,
            followups=self._followups(envelope, state, info),
            state=state,
            error=error,
            envelope=envelope,
        )
        self._give_back_slot(envelope)
        call_outcome_hooks(self.app.hooks, outcome)
        return bool(self.settler.settle([outcome]))

    def _followups(self, envelope: Envelope, state: str, info: object) -> list[Callable[[], None]]:
        app = self.app
        try:
            decode_arguments(envelope)
        except (ValueError, TypeError, AttributeError, ArithmeticError):
            # Errbacks need the arguments: only the batch is told.
            batch_id = envelope.headers.get(BATCH_HEADER)
            if not isinstance(batch_id, str):
                return []
            return [lambda: member_finished(app, batch_id, envelope.id, state)]
        if (
            envelope.callbacks
            or envelope.errbacks
            or envelope.chord
            or BATCH_HEADER in (envelope.headers)
        ):
            return [lambda: on_task_finished(app, envelope, state, info)]
        return []

    def _give_back_slot(self, envelope: Envelope) -> None:
        """Free the task's concurrency slot now (it would lapse at its deadline anyway, as
        its worker stopped renewing it; the key is the one ``FlowGate`` takes)."""
        task = self.app.tasks.get(envelope.task)
        store = self.app.broker.limits
        if task is None or task.concurrency_limit is None or store is None:
            return
        key = envelope.headers.get(CONCURRENCY_KEY_HEADER)
        slot = f"task:{task.name}:{key}" if isinstance(key, str) else f"task:{task.name}"
        store.release(slot, envelope.id)
