"""The lease loop: lease a batch, admit it, start its tasks, settle plain successes quickly.

The hot path is lease → run → store result → ack; the consumer keeps it short:

* it leases only as many messages as there are free slots times the prefetch multiplier -
  fixed (``worker_prefetch_multiplier``: admitted at once, they wait for a thread in the
  executor) or adaptive (the default: the messages beyond the free slots wait, prefetched
  and not admitted, for the next free slot; see :mod:`conveyor.worker.prefetch`); after a
  lease part of which took no slot (malformed messages), an adaptive lease takes as many more
  as keep its runnable share, at most twice as many (:func:`more_for_slotless`);
* revocations come with the lease where the broker can check them there
  (``Broker.lease_checks_revoked``), so admitting needs no extra call;
* a task that succeeded and has nothing to follow (no callbacks, no chord) is *settled
  quickly*: while the consumer is not inside a lease, its outcome goes to the consumer, which
  stores the result and acks it in the same round trip as its next lease
  (``Settlement.ack_and_lease``: records first, acks before the lease waits, so an idle queue
  never delays them). So does the dead letter of a message the consumer could not admit
  (malformed, unknown task) where the settlement writes it in the lease's transaction or
  round trip (SQLite, Redis: ``Settlement.dead_letters_ride``): a flood of them costs no
  transaction or round trip of its own.
  Everything else - failures, retries, rejections, canvas follow-ups, outcomes that arrive
  while the consumer waits in a lease - goes to the finisher (:mod:`conveyor.worker.settle`);
* ``acks_late=False`` tasks record STARTED at once, in the round trip of their early ack;
  the others record it only once they ran ``worker_started_delay`` (see
  :mod:`conveyor.worker.started`).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

from ..brokers.base import Delivery
from ..exceptions import BrokerError, ConveyorError, ResultStoreError
from ..results.base import ResultRecord
from .dispatch import Dispatcher
from .execution import TaskRunner
from .inflight import Finished, InFlight, Running
from .job import Action, Job, Outcome
from .loops import LoopErrors
from .prefetch import AdaptivePrefetch, waited
from .retry import retrying
from .started import StartedRecords

if TYPE_CHECKING:
    from ..app import Conveyor

logger = logging.getLogger("conveyor.worker")


def default_hostname() -> str:
    # Here rather than in worker.py because the CLI imports it from this module.
    return f"{socket.gethostname()}.{os.getpid()}"


class Consumer:
    """Leases for one worker while ``leasing`` is set: call :meth:`run` on the thread that
    should lease (a thread of its own, or the main thread of a one-thread process).

    A broker or store error backs off and tries again; so does an unexpected error in one
    round (logged): leased messages that were not admitted are no longer renewed, so their
    leases expire and they are delivered again (counted: a message that keeps failing ends
    as a dead letter)."""

    def __init__(
        self,
        app: Conveyor,
        inflight: InFlight,
        runner: TaskRunner,
        dispatcher: Dispatcher,
        *,
        queues: list[str],
        capacity: int,
        lease_wait: float,
        max_tasks: int | None,
        leasing: threading.Event,
        stopped: threading.Event,
        attempt: Callable[[Callable[[], object], str], None],
        cold: Callable[[], bool],
        release: Callable[[list[Finished]], None],
        on_max_tasks: Callable[[], None],
        started: StartedRecords | None,
        prefetch: AdaptivePrefetch | None = None,
        before_settle: Callable[[list[Outcome]], None] | None = None,
    ) -> None:
        self.app = app
        self.inflight = inflight
        self.runner = runner
        self.dispatcher = dispatcher
        self.queues = queues
        self.capacity = capacity
        self.lease_wait = lease_wait
        self.max_tasks = max_tasks
        self._leasing = leasing
        self._stopped = stopped
        self._attempt = attempt
        self._cold = cold
        self._release = release
        self._on_max_tasks = on_max_tasks
        self._started = started
        self._prefetch = prefetch
        #: Sees the dead letters it settles, as the finisher's batches are seen.
        self._before_settle = before_settle
        #: Seconds quickly settled outcomes may wait for a free slot (and the lease that
        #: acks them) after prefetched messages took the slots.
        self._hold = prefetch.short if prefetch is not None else 0.0
        self._errors = LoopErrors("consumer")
        #: Free slots at the last lease (more leased than that: prefetched).
        self._slots = 0
        #: When the revocations of every message then prefetched were last re-checked, and
        #: the ids found revoked among those not yet started (one call for the batch, not
        #: one per message that waited).
        self._checked_at = 0.0
        self._revoked_ahead: set[str] = set()
        #: Messages admitted since the last lease, and how many of them took no slot
        #: (settled at once: malformed, unknown task, revoked, expired).
        self._seen = 0
        self._slotless = 0

    def run(self) -> None:
        """Lease until leasing stops (or ``max_tasks`` is reached)."""
        self.inflight.consumer_started()
        try:
            self._loop()
        finally:
            self.inflight.consumer_ended()

    def _loop(self) -> None:
        backoff = 0.0
        inflight, cond = self.inflight, self.inflight.cond
        broker, settlement = self.app.broker, self.app.settlement
        # Quickly settled outcomes wait for the next lease, past the prefetched messages
        # run before it, so their acks go with it.
        quick: list[Finished] = []
        while self._leasing.is_set():
            with cond:
                hold = self._hold if quick else None
                if inflight.wait_for_slot(self.capacity, self._leasing, hold):
                    more, free, leasing, taken = self._next_step()
                else:
                    more = None
            if more is None:  # no slot freed soon: ack what waits now
                settling, quick = quick, []
                self._settle(settling)
                continue
            fresh: list[Finished] = []  # released in this round: not renewed any more
            while more:
                # Frees the slots (and lets a stop or a recycling stop leasing) before the
                # next lease; the acks go with that lease.
                self._release(more)
                more = self._checked(more)
                quick += more
                fresh += more
                with cond:
                    more, free, leasing, taken = self._next_step()
            try:
                if taken is not None:
                    # Renewed until acked: a prefetched task may run long. (Those of earlier
                    # rounds are held already: holding all of quick each time made a batch's
                    # cost grow with the square of its size.)
                    if fresh:
                        inflight.hold([o.delivery for o, _ in fresh if o.delivery is not None])
                    if self._dispatch(*taken, finished=quick):
                        quick = []
                    continue
                if not leasing:
                    if quick:
                        settling, quick = quick, []  # settled (or given up) once
                        self._settle(settling)
                    if not self._leasing.is_set():
                        break
                    if self.max_tasks is not None and inflight.processed >= self.max_tasks:
                        self._on_max_tasks()
                        return
                    inflight.wait(0.1)
                    continue
                queues = self.queues
                try:
                    if quick:
                        acks, records, dead = _settling(quick)
                        deliveries = settlement.ack_and_lease(
                            acks, records, queues, free, self.lease_wait, dead
                        )
                    else:
                        deliveries = broker.lease(queues, free, self.lease_wait)
                    if self.queues is not queues and deliveries:
                        deliveries = self._unpaused(deliveries)
                except BaseException:
                    inflight.lease_failed()
                    raise
                inflight.leased(deliveries, len(quick))
                if self._prefetch is not None and quick:
                    inflight.unhold([o.delivery for o, _ in quick if o.delivery is not None])
                quick = []
                if len(deliveries) > self._slots:
                    # Adaptive prefetch: one per free slot now, the rest when slots free.
                    inflight.prefetch(deliveries[self._slots :])
                    deliveries = deliveries[: self._slots]
                self._dispatch(deliveries)
                backoff = 0.0
            except (BrokerError, ResultStoreError) as exc:
                if quick:  # the records and acks may or may not have happened: again
                    settling, quick = quick, []
                    self._settle(settling)
                backoff = min(max(backoff * 2, 0.1), 5.0)
                logger.error("broker error (retrying in %.1fs): %s", backoff, exc)
                self._stopped.wait(backoff)
            except Exception as exc:
                self._errors.failed(exc)
                if quick:
                    settling, quick = quick, []
                    self._settle(settling)
                backoff = min(max(backoff * 2, 0.1), 5.0)
                self._stopped.wait(backoff)
        if quick:  # leasing stopped just after prefetched messages ran
            self._settle(quick)

    def _unpaused(self, deliveries: list[Delivery]) -> list[Delivery]:
        """A queue was paused during the lease: give back what came from it (uncharged)."""
        queues = self.queues
        back = [d for d in deliveries if d.queue not in queues]
        if back:
            self.app.broker.release(back)
        return [d for d in deliveries if d.queue in queues]

    def _next_step(
        self,
    ) -> tuple[list[Finished], int, bool, tuple[list[Delivery], bool] | None]:
        """(Lock held.) Outcomes to settle quickly; else prefetched messages to start
        (and whether to re-check their revocation); else how many to lease and whether to."""
        inflight = self.inflight
        free = self.capacity - inflight.count
        remaining = None
        if self.max_tasks is not None:
            remaining = self.max_tasks - inflight.processed - inflight.count
            free = min(free, remaining)
        # No queue to lease from: every queue of this worker is paused (conveyor.control).
        wanted = free > 0 and self._leasing.is_set() and bool(self.queues)
        if wanted and inflight.prefetched and not inflight.quick:
            taken, since = inflight.take_prefetched(free)
            return [], 0, False, (taken, waited(max(since, self._checked_at)))
        more, leasing = inflight.next_step(free, wanted)
        self._slots = free
        if more or not leasing:
            return more, 0, leasing, None
        if self._prefetch is not None:
            per_slot = self._prefetch.per_slot(self.queues)
            free *= per_slot
            if per_slot > 1:
                free += more_for_slotless(free, self._seen, self._slotless)
            if remaining is not None:
                free = min(free, remaining)
        self._seen = self._slotless = 0
        return more, free, leasing, None

    def _checked(self, more: list[Finished]) -> list[Finished]:
        """``more`` after ``before_settle`` saw its dead letters; if it raised, they are
        left unsettled (logged): their leases expire and they are delivered again."""
        if self._before_settle is None:
            return more
        dead = [outcome for outcome, _ in more if outcome.action is Action.DEAD]
        if not dead:
            return more
        try:
            self._before_settle(dead)
        except Exception as exc:
            self._errors.failed(exc)
            self.inflight.settled(len(dead))
            return [item for item in more if item[0].action is not Action.DEAD]
        return more

    def _settle(self, quick: list[Finished]) -> None:
        """Store, ack and dead-letter quickly settled outcomes without leasing (retried until
        it works)."""
        settlement = self.app.settlement
        acks, records, dead = _settling(quick)
        call: Callable[[], object]
        if dead:
            call = partial(settlement.ack_and_lease, acks, records, (), 0, 0.0, dead)
        else:
            call = partial(settlement.ack, acks, records)
        try:
            self._attempt(call, "ack")
        finally:
            self.inflight.settled(len(quick))
            if self._prefetch is not None:
                self.inflight.unhold([o.delivery for o, _ in quick if o.delivery is not None])

    def _dispatch(
        self,
        deliveries: list[Delivery],
        recheck: bool = False,
        finished: list[Finished] | None = None,
    ) -> bool:
        """Admit and start what was leased (already held), ending the hand-over;
        ``recheck``: ask the broker about revocations again (prefetched messages that
        waited). ``finished``: quick outcomes whose acks wait for the next lease, settled
        first if a task about to start never ran to its end in this process
        (:meth:`_before_untried`). Returns whether they were settled."""
        try:
            controls = self._admit(deliveries, recheck) if deliveries else []
        finally:
            self.inflight.handed_over()
        settled = False
        if self._prefetch is not None and controls:
            ended = self._prefetch.runtimes.ended
            fresh = [c.job for c in controls if c.job.task.name not in ended]
            if fresh:
                untried = [job.delivery for job in fresh if job.delivery is not None]
                settled = self._before_untried(untried, finished)
        for control in controls:
            self.dispatcher.start(control)
        return settled

    def _before_untried(self, untried: list[Delivery], finished: list[Finished] | None) -> bool:
        """Tasks that never ran to their end in this process (``untried``) are about to
        start, and may kill it: settle ``finished`` (returns whether there were any) and have
        the broker give back what it pushed ahead of the leases, so neither runs again nor
        is charged. On a broker that returns a dead connection's leases itself, charged,
        the prefetched messages go back too (the supervisor's uncharged release would come
        too late), and the broker records the attempts (``Broker.record_attempts``)."""
        if finished:
            self._settle(finished)
        broker = self.app.broker
        if broker.leases_end_with_connection and self._prefetch is not None:
            self._prefetch.give_back_all()
        try:
            broker.give_back_unleased()
        except BrokerError as exc:  # they come back charged if the process dies: no loss
            logger.warning("could not give back messages pushed ahead of leases: %s", exc)
        try:
            broker.record_attempts(untried)
        except ConveyorError as exc:  # the broker's own count applies: no loss
            logger.warning("could not record the delivery counts of tasks to start: %s", exc)
        return bool(finished)

    def _admit(self, deliveries: list[Delivery], recheck: bool) -> list[Running]:
        """Settle what must not run (revoked, expired, malformed), record STARTED, and count
        the rest as in flight. If this fails half-way, what was not admitted is unheld (its
        lease then expires: delivered again) and the error goes on to the lease loop."""
        settling: set[str] = set()  # receipts of the outcomes handed to the finisher
        try:
            return self._admit_all(deliveries, settling, recheck)
        except BaseException:
            self.inflight.unhold([d for d in deliveries if d.receipt not in settling])
            raise

    def _admit_all(
        self, deliveries: list[Delivery], settling: set[str], recheck: bool
    ) -> list[Running]:
        broker = self.app.broker
        revoked = {d.id for d in deliveries if d.revoked}
        if self._revoked_ahead:
            revoked |= self._revoked_ahead & {d.id for d in deliveries}
        if recheck:  # with those still prefetched, which then need no call of their own
            checked_at = time.monotonic()
            ahead = [d.id for d in self.inflight.prefetched_now()]
            ids = [d.id for d in deliveries] + ahead
            found = retrying(partial(broker.revoked, ids), "revoked", give_up=self._cold)
            revoked |= found
            self._checked_at, self._revoked_ahead = checked_at, found.intersection(ahead)
        elif not broker.lease_checks_revoked:
            ids = [d.id for d in deliveries]
            revoked |= retrying(partial(broker.revoked, ids), "revoked", give_up=self._cold)
        jobs: list[Job] = []
        for delivery in deliveries:
            prepared = self.runner.prepare(delivery, revoked)
            if isinstance(prepared, Outcome):
                self.dispatcher.submit(prepared, None)
                settling.add(delivery.receipt)
            else:
                jobs.append(prepared)
        self._seen += len(deliveries)
        self._slotless += len(deliveries) - len(jobs)
        if not jobs:
            return []
        controls = [Running(job) for job in jobs]
        started: list[ResultRecord] = []
        for control in controls:
            record = self.runner.started_record(control.job)
            if record is None:
                continue
            if self._started is not None and control.job.envelope.acks_late:
                self._started.defer(control, record)
            else:
                started.append(record)
        early = [j.delivery for j in jobs if j.delivery is not None and not j.envelope.acks_late]
        if early:
            # STARTED first, then the early acks (acks_late=False: at-most-once), in one go.
            self._attempt(partial(self.app.settlement.ack, early, started), "ack")
            self.inflight.unhold(early)
        elif started:
            self._attempt(partial(self.app.results.store, started), "store results")
        self.inflight.admit(controls)
        return controls


def _settling(
    quick: list[Finished],
) -> tuple[list[Delivery], list[ResultRecord], list[tuple[Delivery, str, str]]]:
    """The acks, records (all stored first) and dead letters of quickly settled outcomes."""
    acks: list[Delivery] = []
    dead: list[tuple[Delivery, str, str]] = []
    for outcome, _ in quick:
        delivery = outcome.delivery
        if delivery is None:
            continue
        if outcome.action is Action.DEAD:
            dead.append((delivery, outcome.reason, outcome.detail))
        else:
            acks.append(delivery)
    return acks, [record for outcome, _ in quick for record in outcome.records], dead


def more_for_slotless(limit: int, seen: int, slotless: int) -> int:
    """Extra messages for a lease of ``limit`` when ``slotless`` of the ``seen`` messages of
    the last one took no slot (settled at once: a flood of malformed messages): as many as
    keep its runnable share at ``limit``, at most ``limit`` more. Each lease is a transaction
    (SQLite) or a round trip; a lease half full of bad messages would otherwise cost two per
    ``limit`` good ones."""
    if not slotless:
        return 0
    return min(limit, limit * slotless // max(seen - slotless, 1))
