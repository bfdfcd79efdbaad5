"""In-flight accounting: what a worker holds, runs and still has to settle.

Every count lives under one condition variable, which also wakes whoever waits for a change
(the lease loop for a free slot, a stop or ``drain`` for the worker to become idle):

* ``count`` - tasks admitted and not yet released (a slot each);
* ``held`` - leased messages not acked yet, renewed by the heartbeat;
* ``running`` - control blocks of admitted tasks, by task id;
* ``pending`` - outcomes submitted and not yet released (finisher or quick settle);
* ``quick`` - plain successes the lease loop settles with its next lease (and the dead
  letters of messages it could not admit: malformed, unknown task), and ``settling`` those it
  took and has not settled yet (their slots are free already); ``quick_slots`` - how many of
  ``quick`` hold a slot (the successes); ``dead_ride`` - whether such dead letters go to the
  lease loop (where the settlement writes them with the lease: ``dead_letters_ride``);
* ``in_lease`` - the lease loop is inside a lease: outcomes go to the finisher, so none
  waits for a lease that blocks;
* ``handing_over`` - from the start of a lease (or the take of prefetched messages) until
  what it leased is counted in ``count``: a stop waits for it, so what a lease returns is
  either run to the end (warm) or released (cold), never run after the finisher stopped;
* ``prefetched`` - messages leased beyond the free slots (adaptive prefetch,
  :mod:`conveyor.worker.prefetch`): held, not admitted, with the time they were leased.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..brokers.base import Delivery
from ..results.base import ResultRecord
from ..states import FAILURE
from .job import Action, Job, Outcome
from .ledger import ChildLedger


@dataclass(slots=True, eq=False)
class Running:
    """Control block of an admitted task (for time limits, terminate and STARTED records)."""

    job: Job
    lock: threading.Lock = field(default_factory=threading.Lock)
    thread_id: int | None = None
    active: bool = False
    loop_task: asyncio.Task[object] | None = None
    interrupted: type[BaseException] | None = None
    #: Monotonic time it was leased and admitted.
    admitted: float = field(default_factory=time.monotonic)
    #: Monotonic time it began running (valid while ``active``).
    since: float = 0.0
    #: Its STARTED record, until stored (see :mod:`conveyor.worker.started`).
    started: ResultRecord | None = None


#: An outcome and the control block of its task (None: it was never admitted).
type Finished = tuple[Outcome, Running | None]


class InFlight:
    """The worker's counters and holds under one condition variable (see the module doc)."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.count = 0
        self.processed = 0
        #: Tasks that ended in FAILURE (for the worker's announcement).
        self.failed = 0
        self.held: dict[str, Delivery] = {}  # receipt -> delivery
        self.running: dict[str, Running] = {}  # task id -> control block
        #: Outcomes for the finisher.
        self.done: queue.SimpleQueue[Finished] = queue.SimpleQueue()
        self.pending = 0
        self.quick: list[Finished] = []
        self.quick_slots = 0
        self.dead_ride = False
        self.settling = 0
        self.in_lease = False
        self.handing_over = False
        self.consumer_active = False
        self.prefetched: deque[tuple[float, Delivery]] = deque()
        #: Set while ``prefetched`` may hold messages (wakes the reclaim).
        self.prefetching = threading.Event()
        #: A supervisor's child tells it what waits prefetched (:mod:`.ledger`).
        self.ledger: ChildLedger | None = None

    # -- outcomes ------------------------------------------------------------------------
    def submit(self, outcome: Outcome, control: Running | None) -> None:
        """Hand an outcome over to be settled: a plain success, or the dead letter of a
        message that was not admitted, to the lease loop (when it is not inside a lease),
        everything else to the finisher."""
        with self.cond:
            self.pending += 1
            if self.consumer_active and not self.in_lease and not outcome.followups:
                if control is not None:
                    quick = outcome.error is None and outcome.action is Action.ACK
                else:  # a flood of malformed messages costs no transaction of its own
                    quick = (
                        self.dead_ride
                        and outcome.action is Action.DEAD
                        and outcome.delivery is not None
                    )
                if quick:
                    # The consumer stores, acks or dead-letters it with its next lease.
                    self.quick.append((outcome, control))
                    if control is not None:
                        self.quick_slots += 1
                    self.cond.notify_all()
                    return
        self.done.put((outcome, control))

    def release(self, batch: Sequence[Finished]) -> list[Job]:
        """Settled (or abandoned): free the slots and holds of ``batch``; return the jobs
        that held a slot."""
        jobs: list[Job] = []
        with self.cond:
            for outcome, control in batch:
                if control is not None:
                    delivery = control.job.delivery
                    self.running.pop(control.job.envelope.id, None)
                    self.count -= 1
                    jobs.append(control.job)
                else:
                    delivery = outcome.delivery
                if delivery is not None:
                    self.held.pop(delivery.receipt, None)
            self.processed += len(jobs)
            self.failed += sum(
                1 for outcome, c in batch if c is not None and outcome.state == FAILURE
            )
            self.pending -= len(batch)
            self.cond.notify_all()
        return jobs

    # -- the lease loop ------------------------------------------------------------------
    def wait_for_slot(
        self, capacity: int, leasing: threading.Event, timeout: float | None = None
    ) -> bool:
        """(Lock held.) Wait while every slot is taken (up to ``timeout``: False if it
        passed). Quickly settled outcomes hold no slot: their tasks have finished."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while leasing.is_set() and self.count - self.quick_slots >= capacity:
            if deadline is None:
                self.cond.wait(0.5)
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self.cond.wait(remaining)
        return True

    def next_step(self, free: int, leasing: bool) -> tuple[list[Finished], bool]:
        """(Lock held.) Take the outcomes to settle quickly, if any; else, if ``leasing``
        ``free`` slots, mark the lease as begun: from then on outcomes go to the finisher
        until it returns, so none waits for a lease that blocks."""
        more, self.quick = self.quick, []
        if more:
            self.quick_slots = 0
            self.settling += len(more)
            return more, False
        self.in_lease = self.handing_over = leasing
        return more, leasing

    def take_prefetched(self, free: int) -> tuple[list[Delivery], float]:
        """(Lock held.) Take up to ``free`` prefetched messages for the free slots, marking
        the hand-over as begun; return them and when the first was leased."""
        prefetched = self.prefetched
        since = prefetched[0][0]
        taken = [prefetched.popleft()[1] for _ in range(min(free, len(prefetched)))]
        self.handing_over = True
        if self.ledger is not None:
            self.ledger.left(len(taken))
        return taken, since

    def prefetched_now(self) -> list[Delivery]:
        """The messages prefetched now (a copy)."""
        with self.cond:
            return [delivery for _, delivery in self.prefetched]

    def prefetch(self, deliveries: Sequence[Delivery]) -> None:
        """Keep ``deliveries`` (held already) for the next free slots."""
        now = time.monotonic()
        with self.cond:
            for delivery in deliveries:
                self.held[delivery.receipt] = delivery
                self.prefetched.append((now, delivery))
            if self.ledger is not None:
                self.ledger.entered([d for _, d in self.prefetched], len(deliveries))
            self.prefetching.set()

    def reclaim(self, older_than: float) -> list[Delivery]:
        """Give up every prefetched message if the oldest waited more than ``older_than``
        seconds (its slots all run long tasks); return them."""
        with self.cond:
            prefetched = self.prefetched
            if prefetched and time.monotonic() - prefetched[0][0] > older_than:
                return self._drop_prefetched()
            if not prefetched:
                self.prefetching.clear()
            return []

    def take_all_prefetched(self) -> list[Delivery]:
        """Give up every prefetched message (a stop gives them back)."""
        with self.cond:
            return self._drop_prefetched()

    def _drop_prefetched(self) -> list[Delivery]:
        back = [delivery for _, delivery in self.prefetched]
        self.prefetched.clear()
        if self.ledger is not None:
            self.ledger.left(len(back))
        self.prefetching.clear()
        for delivery in back:
            self.held.pop(delivery.receipt, None)
        return back

    def lease_failed(self) -> None:
        with self.cond:
            self.in_lease = self.handing_over = False
            self.cond.notify_all()

    def leased(self, deliveries: Sequence[Delivery], settled: int) -> None:
        """A lease returned ``deliveries`` (renewed by the heartbeat from now on) and acked
        ``settled`` quickly settled outcomes."""
        with self.cond:
            self.in_lease = False
            for delivery in deliveries:
                self.held[delivery.receipt] = delivery
            if settled:
                self.settling -= settled
                self.cond.notify_all()

    def settled(self, count: int) -> None:
        with self.cond:
            self.settling -= count
            self.cond.notify_all()

    def handed_over(self) -> None:
        with self.cond:
            self.handing_over = False
            self.cond.notify_all()

    def wait_handed_over(self, timeout: float) -> None:
        """Wait until a lease in progress returned and what it leased is counted (call
        after leasing stopped: no lease starts after that)."""
        with self.cond:
            self.cond.wait_for(lambda: not self.handing_over, timeout)

    def consumer_started(self) -> None:
        with self.cond:
            self.consumer_active = True

    def consumer_ended(self) -> None:
        """The finisher settles what the lease loop no longer will."""
        with self.cond:
            self.consumer_active = False
            quick, self.quick = self.quick, []
            self.quick_slots = 0
            for item in quick:
                self.done.put(item)

    # -- admitting -----------------------------------------------------------------------
    def admit(self, controls: Sequence[Running]) -> None:
        with self.cond:
            self.count += len(controls)
            for control in controls:
                self.running[control.job.envelope.id] = control

    def hold(self, deliveries: Sequence[Delivery]) -> None:
        """Renew ``deliveries`` (until :meth:`unhold`)."""
        with self.cond:
            for delivery in deliveries:
                self.held[delivery.receipt] = delivery

    def unhold(self, deliveries: Sequence[Delivery]) -> None:
        """Stop renewing ``deliveries`` (acked early)."""
        with self.cond:
            for delivery in deliveries:
                self.held.pop(delivery.receipt, None)

    # -- looking ---------------------------------------------------------------------------
    def get(self, task_id: str) -> Running | None:
        return self.running.get(task_id)

    def controls(self) -> list[Running]:
        with self.cond:
            return list(self.running.values())

    def held_now(self) -> tuple[list[Delivery], list[str]]:
        """The held deliveries and the ids of the admitted tasks."""
        with self.cond:
            return list(self.held.values()), list(self.running)

    def take_held(self) -> list[Delivery]:
        """Give up every hold (a cold stop releases them)."""
        with self.cond:
            held = list(self.held.values())
            self.held.clear()
            return held

    def busy(self, *, holding: bool = False) -> bool:
        """(Lock held.) Whether a task is in flight or an outcome is not settled (or,
        with ``holding``, a message is held)."""
        return bool(self.count or self.pending or self.settling or (holding and self.held))

    def wait_idle(self, deadline: float | None) -> bool:
        """Wait until nothing is in flight or settling; False if ``deadline`` passed."""
        with self.cond:
            while self.busy():
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self.cond.wait(remaining if remaining is not None else 0.5)
        return True

    def notify(self) -> None:
        with self.cond:
            self.cond.notify_all()

    def wait(self, timeout: float) -> None:
        with self.cond:
            self.cond.wait(timeout)
