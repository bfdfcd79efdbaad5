"""Settling outcomes: store their records, run their follow-ups, then ack, retry or
dead-letter their messages - in that order, for the worker, the supervisor and eager mode.

Every record of a batch is stored first, together (in the same round trip) with the acks of
the outcomes that need nothing in between: no follow-ups. A follow-up (callback, chord join)
that fails leaves its message unacked: the lease then expires and the redelivery re-sends
the follow-ups (the run-once guard keeps the task itself from running again), so a transient
error never loses a workflow step.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING

from .inflight import Finished, InFlight
from .job import Action, Outcome
from .loops import LoopErrors

if TYPE_CHECKING:
    from ..app import Conveyor

logger = logging.getLogger("conveyor.worker")

#: How a settler makes each broker/result-store call: ``attempt(call, what)`` (retry it, log
#: it, or just call it).
type Attempt = Callable[[Callable[[], object], str], object]


def call_now(call: Callable[[], object], what: str) -> object:
    """The plain :data:`Attempt`: call once, let errors propagate."""
    return call()


class Settler:
    """Applies batches of outcomes for one app.

    ``attempt`` wraps each call to the broker or result store (the worker retries until it
    works or it is cold-stopped). ``propagate``: a failing follow-up raises instead of being
    logged (eager mode, where there is no message to redeliver).
    """

    def __init__(self, app: Conveyor, attempt: Attempt = call_now, *, propagate: bool = False):
        self.app = app
        self.attempt = attempt
        self.propagate = propagate

    def settle(self, outcomes: Sequence[Outcome]) -> list[Outcome]:
        """Apply ``outcomes``; return those whose follow-ups ran (the others stay unacked)."""
        settlement, attempt = self.app.settlement, self.attempt
        records = [record for outcome in outcomes for record in outcome.records]
        plain = [
            o.delivery
            for o in outcomes
            if o.action is Action.ACK and not o.followups and o.delivery is not None
        ]
        if plain:
            attempt(partial(settlement.ack, plain, records), "store results")
        elif records:
            attempt(partial(self.app.results.store, records), "store results")
        settled = [o for o in outcomes if not o.followups or self._run_followups(o)]
        acks = [
            o.delivery
            for o in settled
            if o.action is Action.ACK and o.followups and o.delivery is not None
        ]
        if acks:
            attempt(partial(settlement.ack, acks, ()), "ack")
        retries = [
            (o.delivery, o.retry_message)
            for o in settled
            if o.action is Action.RETRY and o.delivery is not None and o.retry_message is not None
        ]
        if retries:  # together: a rate-limited backlog puts many back at once
            attempt(partial(settlement.retry_later_many, retries), "retry")
        dead = [
            (o.delivery, o.reason, o.detail)
            for o in settled
            if o.action is Action.DEAD and o.delivery is not None
        ]
        if dead:  # one round trip for the batch (a flood of malformed messages)
            attempt(partial(settlement.dead_letter_many, dead), "dead-letter")
        return settled

    def _run_followups(self, outcome: Outcome) -> bool:
        for followup in outcome.followups:
            try:
                followup()
            except Exception:
                if self.propagate:
                    raise
                task_id = outcome.delivery.id if outcome.delivery else "?"
                logger.exception("follow-up of task %s failed; it will be redelivered", task_id)
                return False
        return True


class Finisher:
    """The worker's finisher: settles, in batches of up to 256, the outcomes the lease loop
    does not settle quickly, then releases their slots. Call :meth:`run` on a thread; it
    returns once ``stopped`` is set and nothing is left to settle. A batch whose settling
    fails unexpectedly is logged and released unsettled: its messages stay unacked, so their
    leases expire and they are delivered again (at least once, never lost)."""

    def __init__(
        self,
        inflight: InFlight,
        settler: Settler,
        stopped: threading.Event,
        *,
        cold: Callable[[], bool],
        release: Callable[[list[Finished]], None],
        before_settle: Callable[[list[Outcome]], None] | None = None,
    ) -> None:
        self._inflight = inflight
        self._settler = settler
        self._stopped = stopped
        self._cold = cold
        self._release = release
        self._before_settle = before_settle
        self._errors = LoopErrors("finisher")

    def run(self) -> None:
        done = self._inflight.done
        while not (self._stopped.is_set() and done.empty()):
            try:
                first = done.get(timeout=0.2)
            except queue.Empty:
                continue
            batch = [first]
            while len(batch) < 256:
                try:
                    batch.append(done.get_nowait())
                except queue.Empty:
                    break
            if self._cold():
                self._release(batch)  # their leases were returned
                continue
            try:
                self._settle(batch)
            except Exception as exc:
                self._errors.failed(exc)
            try:
                self._release(batch)
            except Exception as exc:
                self._errors.failed(exc)

    def apply(self, batch: list[Finished]) -> None:
        self._settle(batch)
        self._release(batch)

    def _settle(self, batch: list[Finished]) -> None:
        outcomes = [outcome for outcome, _ in batch]
        if self._before_settle is not None:
            self._before_settle(outcomes)
        self._settler.settle(outcomes)
