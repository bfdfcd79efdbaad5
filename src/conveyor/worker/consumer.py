"""The in-process worker: lease a batch, run tasks on threads or an event loop, finish in batches.

``Worker`` is used directly by tests (``app.Worker()``, ``conveyor.testing``) and ``--pool
solo``, and is what each child process of the production supervisor runs.

Threads: one *consumer* leases (only as many messages as there are free slots times the
prefetch multiplier) and dispatches; a pool of *task threads* runs sync tasks; one *event
loop* thread runs async tasks; a *finisher* stores results, sends follow-ups and acks in
batches; a *heartbeat* renews leases, watches for terminate requests, sweeps the broker and
announces the worker; a *timer* enforces soft and hard time limits.

Round trips. The hot path is lease → run → store result → ack; the consumer keeps it short:

* revocations come with the lease where the broker can check them there
  (``Broker.lease_checks_revoked``), so dispatching needs no extra call;
* a task that succeeded and has nothing to follow (no callbacks, no chord) is *settled
  quickly*: while the consumer is not inside a lease, its outcome goes to the consumer, which
  stores the result and acks it in the same round trip as its next lease
  (``Broker.ack_and_lease``: records first, acks before the lease waits, so an idle queue
  never delays them). Everything else - failures, retries, dead letters, canvas follow-ups,
  outcomes that arrive while the consumer waits in a lease - goes to the finisher, which
  stores all records of a batch and acks what needs nothing in between in one round trip
  (``Broker.ack_recorded``);
* a sync task that waited for a free thread longer than ``RECHECK_REVOKED_AFTER`` (behind
  others leased with it, ``--prefetch`` > 1) asks the broker again whether it was revoked
  meanwhile, so a revoke also stops a message that was leased but had not started; a task
  that starts at once costs nothing more;
* STARTED is recorded once a task has run for ``worker_started_delay`` (0.1 s): a *started*
  thread stores, in one call, the records of the tasks that ran that long, holding their
  control locks so that none can end (and store its outcome) before its STARTED record landed.
  A task that ends sooner goes from QUEUED straight to its outcome, whose record carries the
  start time: no round trip for a state nobody could have seen. ``acks_late=False`` tasks
  record STARTED at once, in the round trip of their early ack.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import heapq
import itertools
import json
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

from ..brokers.base import Delivery
from ..exceptions import (
    BrokerError,
    ConveyorError,
    ResultStoreError,
    SoftTimeLimitExceeded,
    TaskRevokedError,
    TimeLimitExceeded,
)
from ..results.base import ResultRecord
from .execution import Job, Outcome, TaskRunner

if TYPE_CHECKING:
    from ..app import Conveyor

logger = logging.getLogger("conveyor.worker")

_STRAY = (SoftTimeLimitExceeded, TimeLimitExceeded, TaskRevokedError)
#: Seconds a leased sync task may wait for a thread before it re-checks its revocation.
RECHECK_REVOKED_AFTER = 0.01


def default_hostname() -> str:
    return f"{socket.gethostname()}.{os.getpid()}"


class _TaskThreads:
    """A fixed number of threads running submitted calls in order: what the worker needs of
    ``ThreadPoolExecutor`` without its per-call future, locks and idle-thread semaphore.
    Threads start on demand, one per call, up to ``count``."""

    def __init__(self, count: int, name: str) -> None:
        self._count = count
        self._name = name
        self._calls: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def submit(self, call: Callable[[], None]) -> None:
        self._calls.put(call)
        if len(self._threads) < self._count:
            with self._lock:
                if len(self._threads) < self._count:
                    thread = threading.Thread(
                        target=self._serve,
                        name=f"{self._name}_{len(self._threads)}",
                        daemon=True,
                    )
                    self._threads.append(thread)
                    thread.start()

    def _serve(self) -> None:
        calls = self._calls
        while True:
            try:
                call = calls.get()
                if call is None:
                    return
                call()
            except _STRAY:
                pass  # a time limit or terminate that landed just after its task ended
            except Exception:
                logger.exception("task thread: unexpected error")

    def shutdown(self, *, wait: bool, cancel: bool) -> None:
        """Stop the threads once the calls submitted so far ran (``cancel``: drop those that
        did not start); ``wait`` for them."""
        if cancel:
            with contextlib.suppress(queue.Empty):
                while True:
                    self._calls.get_nowait()
        with self._lock:
            threads = list(self._threads)
            self._count = 0  # no new threads
        for _ in threads:
            self._calls.put(None)
        if wait:
            for thread in threads:
                if thread is not threading.current_thread():
                    thread.join()


@dataclass(slots=True, eq=False)
class _Running:
    """Control block of a running task (for time limits and terminate)."""

    job: Job
    lock: threading.Lock = field(default_factory=threading.Lock)
    thread_id: int | None = None
    active: bool = False
    loop_task: asyncio.Task[Any] | None = None
    interrupted: type[BaseException] | None = None
    #: Monotonic time it was leased and admitted.
    admitted: float = field(default_factory=time.monotonic)
    #: Monotonic time it began running (valid while ``active``).
    since: float = 0.0
    #: Its STARTED record, until stored (see the module docstring).
    started: ResultRecord | None = None


class Worker:
    """Consume tasks of ``app`` from ``queues`` in this process.

    ``concurrency`` is the number of tasks run at once (task threads; async tasks share the
    same slots). Use :meth:`start` / :meth:`stop`, :meth:`run` (blocks), or as a context
    manager. :meth:`drain` waits until the queues are empty and nothing runs.
    """

    def __init__(
        self,
        app: Conveyor,
        *,
        queues: Sequence[str] | None = None,
        concurrency: int | None = None,
        hostname: str | None = None,
        prefetch_multiplier: int | None = None,
        max_tasks: int | None = None,
        lease_wait: float = 1.0,
        sweep_interval: float | None = None,
        cleanup_interval: float = 60.0,
        on_task_start: Callable[[Job], None] | None = None,
        on_task_end: Callable[[Job], None] | None = None,
        on_hard_time_limit: Callable[[Job], None] | None = None,
    ) -> None:
        app.finalize()
        self.app = app
        self.queues = list(queues or [app.conf.task_default_queue])
        self.concurrency = concurrency or app.conf.worker_threads or 1
        self.hostname = hostname or default_hostname()
        self.prefetch_multiplier = prefetch_multiplier or app.conf.worker_prefetch_multiplier
        self.max_tasks = max_tasks
        self.lease_wait = lease_wait
        self.sweep_interval = sweep_interval or app.conf.broker_sweep_interval
        #: Seconds between deletions of expired results (result stores without own TTLs).
        self.cleanup_interval = cleanup_interval
        self.heartbeat_interval = max(0.05, min(app.conf.broker_lease_timeout / 3, 5.0))
        conf = app.conf
        self.started_delay = 0.0 if conf.task_track_started else conf.worker_started_delay
        self.on_task_start = on_task_start
        self.on_task_end = on_task_end
        self.on_hard_time_limit = on_hard_time_limit
        self.runner = TaskRunner(app, self.hostname)
        self.processed = 0
        self.started_at = 0.0

        self._cond = threading.Condition()
        self._in_flight = 0
        self._held: dict[str, Delivery] = {}  # receipt -> delivery, renewed by heartbeat
        self._running: dict[str, _Running] = {}  # task id -> control block
        self._done: queue.SimpleQueue[tuple[Outcome, _Running | None]] = queue.SimpleQueue()
        self._pending_finish = 0
        #: Outcomes the consumer settles with its next lease (see the module docstring).
        self._quick: list[tuple[Outcome, _Running | None]] = []
        #: Outcomes released from their slots but not acked yet (by the consumer).
        self._settling = 0
        self._in_lease = False
        #: From the start of a lease until what it leased is counted in ``_in_flight``.
        self._handing_over = False
        self._consumer_active = False
        self._leasing = threading.Event()
        self._stopped = threading.Event()
        self._cold = False
        self._threads: list[threading.Thread] = []
        self._pool: _TaskThreads | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        self._timers: list[tuple[float, int, str, _Running]] = []
        self._timer_seq = itertools.count()
        self._timer_cond = threading.Condition()

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> Worker:
        self.started_at = time.time()
        self._pool = _TaskThreads(self.concurrency, "conveyor-task")
        self._leasing.set()
        self._consumer_active = True
        for name, target in self._background_loops():
            thread = threading.Thread(target=target, name=f"conveyor-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        with contextlib.suppress(ConveyorError):
            self._announce()  # visible to `conveyor status` at once, not after a heartbeat
        logger.info(
            "worker %s consuming %s with %d slots",
            self.hostname,
            ",".join(self.queues),
            self.concurrency,
        )
        return self

    def _background_loops(self) -> list[tuple[str, Callable[[], None]]]:
        """The threads :meth:`start` runs: (name, target)."""
        loops = [
            ("consumer", self._consume),
            ("finisher", self._finish_loop),
            ("heartbeat", self._heartbeat_loop),
            ("timer", self._timer_loop),
        ]
        if self.started_delay:
            loops.append(("started", self._started_loop))
        return loops

    def _wait_handed_over(self, timeout: float) -> None:
        """Wait until a lease in progress returned and what it leased is counted as in
        flight (call after clearing ``_leasing``: no lease starts after that)."""
        with self._cond:
            self._cond.wait_for(lambda: not self._handing_over, timeout)

    def stop(self, *, cold: bool = False, timeout: float | None = None) -> None:
        """Warm stop: lease nothing more, let running tasks finish (up to ``timeout``), store
        and ack. Cold stop (or timeout passed): return unfinished leases to the broker now."""
        self._leasing.clear()
        with self._cond:
            self._cond.notify_all()  # a consumer waiting for a free slot hands over at once
        # Let a lease in progress return and dispatch first: what it leased is then either
        # finished (warm) or released (cold), never run after the finisher stopped.
        self._wait_handed_over(self.lease_wait + 10)
        if not cold:
            deadline = None if timeout is None else time.monotonic() + timeout
            with self._cond:
                while self._in_flight or self._pending_finish or self._settling:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        cold = True
                        break
                    self._cond.wait(remaining if remaining is not None else 0.5)
        if cold:
            self._cold = True
            with self._cond:
                unfinished = list(self._held.values())
                self._held.clear()
            if unfinished:
                try:
                    self.app.broker.release(unfinished)
                    logger.warning(
                        "cold shutdown: returned %d unfinished message(s)", len(unfinished)
                    )
                except ConveyorError as exc:
                    logger.error("cold shutdown: could not release leases: %s", exc)
        self._stopped.set()
        with self._timer_cond:
            self._timer_cond.notify_all()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout=5)
        self._threads.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=not cold, cancel=cold)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            if self._loop_thread is not None:
                self._loop_thread.join(timeout=5)
            if not self._loop.is_running():
                self._loop.close()
            self._loop = None
        with contextlib.suppress(ConveyorError):
            self.app.kv.delete_value(f"worker:{self.hostname}")

    def run(self) -> None:
        """Start and block until :meth:`stop` is called from another thread or a signal."""
        self.start()
        self._stopped.wait()

    def __enter__(self) -> Worker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if not self._stopped.is_set():
            self.stop(timeout=self.app.conf.worker_shutdown_timeout)

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()

    def drain(self, timeout: float = 30.0, *, include_delayed: bool = True) -> None:
        """Block until the worker's queues are empty and no task is running or finishing.

        Raises TimeoutError (the builtin) if that does not happen within ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            with self._cond:
                busy = self._in_flight or self._pending_finish or self._held or self._settling
            if not busy:
                stats = self.app.broker.stats(self.queues)
                waiting = sum(
                    s.ready + s.leased + (s.delayed if include_delayed else 0)
                    for s in stats.values()
                )
                if not waiting:
                    with self._cond:
                        if not (
                            self._in_flight or self._pending_finish or self._held or self._settling
                        ):
                            return
            if time.monotonic() >= deadline:
                raise TimeoutError(f"worker did not become idle within {timeout} s")
            with self._cond:
                self._cond.wait(0.01)

    # -- consuming -----------------------------------------------------------------------
    def _consume(self) -> None:
        try:
            self._consume_loop()
        finally:
            with self._cond:
                self._consumer_active = False
                quick, self._quick = self._quick, []
                for item in quick:  # the finisher settles what the consumer no longer will
                    self._done.put(item)

    def _consume_loop(self) -> None:
        backoff = 0.0
        capacity = self.concurrency * self.prefetch_multiplier
        broker, settlement = self.app.broker, self.app.settlement
        while self._leasing.is_set():
            quick: list[tuple[Outcome, _Running | None]] = []
            with self._cond:
                # Quickly settled outcomes hold no slot: their tasks have finished.
                while self._leasing.is_set() and self._in_flight - len(self._quick) >= capacity:
                    self._cond.wait(0.5)
                more, free, leasing = self._next_step(capacity)
            while more:
                # Frees the slots (and lets a subclass stop leasing, e.g. to recycle the
                # process) before the next lease; the acks go with that lease.
                self._release_controls(more)
                quick += more
                with self._cond:
                    more, free, leasing = self._next_step(capacity)
            try:
                if not leasing:
                    if quick:
                        self._settle(quick)
                    if not self._leasing.is_set():
                        break
                    if self.max_tasks is not None and self.processed >= self.max_tasks:
                        logger.info("worker %s reached max_tasks=%d", self.hostname, self.max_tasks)
                        threading.Thread(target=self.stop, daemon=True).start()
                        return
                    with self._cond:
                        self._cond.wait(0.1)
                    continue
                try:
                    if quick:
                        acks = [o.delivery for o, _ in quick if o.delivery is not None]
                        records = [record for o, _ in quick for record in o.records]
                        deliveries = settlement.ack_and_lease(
                            acks, records, self.queues, free, self.lease_wait
                        )
                    else:
                        deliveries = broker.lease(self.queues, free, self.lease_wait)
                except BaseException:
                    with self._cond:
                        self._in_lease = self._handing_over = False
                        self._cond.notify_all()
                    raise
                with self._cond:
                    self._in_lease = False
                    for delivery in deliveries:  # renewed by the heartbeat from now on
                        self._held[delivery.receipt] = delivery
                    if quick:
                        self._settling -= len(quick)
                        self._cond.notify_all()
                quick = []
                self._dispatch(deliveries)
                backoff = 0.0
            except (BrokerError, ResultStoreError) as exc:
                if quick:  # the records and acks may or may not have happened: again
                    self._settle(quick)
                backoff = min(max(backoff * 2, 0.1), 5.0)
                logger.error("broker error (retrying in %.1fs): %s", backoff, exc)
                self._stopped.wait(backoff)

    def _next_step(self, capacity: int) -> tuple[list[tuple[Outcome, _Running | None]], int, bool]:
        """(Lock held.) Take the outcomes to settle quickly, if any; else decide how many to
        lease and, if any, mark the lease as begun: from then on outcomes go to the finisher
        until it returns, so none waits for a lease that blocks."""
        more, self._quick = self._quick, []
        if more:
            self._settling += len(more)
            return more, 0, False
        free = capacity - self._in_flight
        if self.max_tasks is not None:
            free = min(free, self.max_tasks - self.processed - self._in_flight)
        leasing = free > 0 and self._leasing.is_set()
        self._in_lease = self._handing_over = leasing
        return more, free, leasing

    def _settle(self, quick: list[tuple[Outcome, _Running | None]]) -> None:
        """Store and ack quickly settled outcomes without leasing (retried until it works)."""
        settlement = self.app.settlement
        acks = [outcome.delivery for outcome, _ in quick if outcome.delivery is not None]
        records = [record for outcome, _ in quick for record in outcome.records]
        try:
            self._retrying(lambda: settlement.ack(acks, records), "ack")
        finally:
            self._settled(len(quick))

    def _settled(self, count: int) -> None:
        with self._cond:
            self._settling -= count
            self._cond.notify_all()

    def _dispatch(self, deliveries: list[Delivery]) -> None:
        """Prepare and start what was leased (already in ``_held``), ending the hand-over."""
        try:
            controls = self._admit(deliveries) if deliveries else []
        finally:
            with self._cond:
                self._handing_over = False
                self._cond.notify_all()
        for control in controls:
            self._start(control)

    def _admit(self, deliveries: list[Delivery]) -> list[_Running]:
        """Settle what must not run (revoked, expired, malformed), record STARTED, and count
        the rest as in flight."""
        broker = self.app.broker
        if broker.lease_checks_revoked:
            revoked = {d.id for d in deliveries if d.revoked}
        else:
            revoked = self._call(lambda: broker.revoked([d.id for d in deliveries]), "revoked")
        jobs: list[Job] = []
        for delivery in deliveries:
            prepared = self.runner.prepare(delivery, revoked)
            if isinstance(prepared, Outcome):
                self._submit_outcome(prepared, None)
            else:
                jobs.append(prepared)
        if not jobs:
            return []
        controls = [_Running(job) for job in jobs]
        started: list[ResultRecord] = []
        for control in controls:
            record = self.runner.started_record(control.job)
            if record is None:
                continue
            if self.started_delay and control.job.envelope.acks_late:
                control.started = record  # stored if it runs long enough
                control.job.request.before_state_update = partial(self._drop_started, control)
            else:
                started.append(record)
        early = [j.delivery for j in jobs if j.delivery is not None and not j.envelope.acks_late]
        if early:
            # STARTED first, then the early acks (acks_late=False: at-most-once), in one go.
            settlement = self.app.settlement
            self._retrying(lambda: settlement.ack(early, started), "ack")
            with self._cond:
                for delivery in early:
                    self._held.pop(delivery.receipt, None)
        elif started:
            self._retrying(lambda: self.app.results.store(started), "store results")
        with self._cond:
            self._in_flight += len(controls)
            for control in controls:
                self._running[control.job.envelope.id] = control
        return controls

    def _start(self, control: _Running) -> None:
        job = control.job
        self._arm_timers(control)
        if self.on_task_start is not None:
            self.on_task_start(job)
        if job.task.is_async:
            asyncio.run_coroutine_threadsafe(self._run_async(control), self._event_loop())
        else:
            self._start_sync(control)

    def _start_sync(self, control: _Running) -> None:
        """Run a sync task on a task thread."""
        assert self._pool is not None
        self._pool.submit(partial(self._run_sync, control))

    def _call[T](self, action: Callable[[], T], what: str) -> T:
        box: list[T] = []
        self._retrying(lambda: box.append(action()), what)
        if not box:  # cold-stopped while the broker was unreachable
            raise BrokerError(f"could not ask the broker for {what}")
        return box[0]

    def _run_sync(self, control: _Running) -> None:
        if self._revoked_while_waiting(control):
            job = control.job
            self._submit_outcome(self.runner.revoked_outcome(job.envelope, job.delivery), control)
            return
        outcome: Outcome | None = None
        try:
            try:
                with control.lock:
                    control.thread_id = threading.get_ident()
                    control.since = time.monotonic()
                    control.active = True
                outcome = self.runner.run(control.job)
            finally:
                with control.lock:
                    control.active = False
        except _STRAY:
            pass  # a time limit or terminate that landed just after the task returned
        except BaseException as exc:
            outcome = self.runner.finish(control.job, None, exc, 0.0)
        if outcome is None:
            error = (control.interrupted or TaskRevokedError)(
                f"task {control.job.envelope.id} interrupted"
            )
            outcome = self.runner.finish(control.job, None, error, 0.0)
        self._submit_outcome(outcome, control)

    def _revoked_while_waiting(self, control: _Running) -> bool:
        if time.monotonic() - control.admitted < RECHECK_REVOKED_AFTER:
            return False
        task_id = control.job.envelope.id
        try:
            return task_id in self.app.broker.revoked([task_id])
        except ConveyorError as exc:  # run it: the lease-time check passed
            logger.error("could not re-check the revocation of %s: %s", task_id, exc)
            return False

    async def _run_async(self, control: _Running) -> None:
        control.loop_task = asyncio.current_task()
        with control.lock:
            control.since = time.monotonic()
            control.active = True
        try:
            outcome = await self.runner.arun(control.job)
        finally:
            with control.lock:  # not while its STARTED record is being stored
                control.active = False
        self._submit_outcome(outcome, control)

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            loop = asyncio.new_event_loop()
            ready = threading.Event()

            def serve() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                loop.run_forever()

            thread = threading.Thread(target=serve, name="conveyor-loop", daemon=True)
            thread.start()
            ready.wait(5)
            self._loop, self._loop_thread = loop, thread
        return self._loop

    # -- finishing -----------------------------------------------------------------------
    def _submit_outcome(self, outcome: Outcome, control: _Running | None) -> None:
        with self._cond:
            self._pending_finish += 1
            if (
                control is not None
                and outcome.error is None
                and outcome.action == "ack"
                and not outcome.followups
                and self._consumer_active
                and not self._in_lease
            ):
                # A plain success: the consumer stores and acks it with its next lease.
                self._quick.append((outcome, control))
                self._cond.notify_all()
                return
        self._done.put((outcome, control))

    def _finish_loop(self) -> None:
        while not (self._stopped.is_set() and self._done.empty()):
            try:
                first = self._done.get(timeout=0.2)
            except queue.Empty:
                continue
            batch = [first]
            while len(batch) < 256:
                try:
                    batch.append(self._done.get_nowait())
                except queue.Empty:
                    break
            if self._cold:
                self._release_controls(batch)
                continue
            self._apply(batch)

    def _apply(self, batch: list[tuple[Outcome, _Running | None]]) -> None:
        outcomes = [outcome for outcome, _ in batch]
        records = [record for outcome in outcomes for record in outcome.records]
        settlement = self.app.settlement
        # Every record first; in the same round trip the acks of outcomes that need nothing
        # in between (no follow-ups).
        plain = [
            o.delivery
            for o in outcomes
            if o.action == "ack" and not o.followups and o.delivery is not None
        ]
        if plain or records:
            self._retrying(lambda: settlement.ack(plain, records), "store results")
        # A follow-up (callback, chord join) that fails leaves its message unacked: the lease
        # then expires and the redelivery re-sends the follow-ups (the run-once guard keeps the
        # task itself from running again), so a transient error never loses a workflow step.
        settled = [o for o in outcomes if self._run_followups(o)]
        acks = [
            o.delivery
            for o in settled
            if o.action == "ack" and o.followups and o.delivery is not None
        ]
        if acks:
            self._retrying(lambda: settlement.ack(acks, ()), "ack")
        for outcome in settled:
            delivery = outcome.delivery
            if delivery is None:
                continue
            if outcome.action == "retry" and outcome.retry_message is not None:
                self._retrying(
                    partial(settlement.retry_later, delivery, outcome.retry_message), "retry"
                )
            elif outcome.action == "dead":
                dead = partial(settlement.dead_letter, delivery, outcome.reason, outcome.detail)
                self._retrying(dead, "dead-letter")
        self._release_controls(batch)

    def _run_followups(self, outcome: Outcome) -> bool:
        for followup in outcome.followups:
            try:
                followup()
            except Exception:
                task_id = outcome.delivery.id if outcome.delivery else "?"
                logger.exception("follow-up of task %s failed; it will be redelivered", task_id)
                return False
        return True

    def _release_controls(self, batch: list[tuple[Outcome, _Running | None]]) -> None:
        finished = 0
        with self._cond:
            for outcome, control in batch:
                if outcome.delivery is not None:
                    self._held.pop(outcome.delivery.receipt, None)
                if control is not None:
                    self._running.pop(control.job.envelope.id, None)
                    self._in_flight -= 1
                    finished += 1
            self.processed += finished
            self._pending_finish -= len(batch)
            self._cond.notify_all()
        if self.on_task_end is not None:
            for _, control in batch:
                if control is not None:
                    self.on_task_end(control.job)

    def _retrying(self, action: Callable[[], Any], what: str) -> None:
        """Results and acks must not be dropped on a transient error: retry with backoff
        until it works or the worker is cold-stopped (the lease then expires and the
        message is redelivered, which keeps the at-least-once promise)."""
        delay = 0.05
        while True:
            try:
                action()
                return
            except (BrokerError, ResultStoreError) as exc:
                if self._cold:
                    return
                logger.error("could not %s (retrying in %.1fs): %s", what, delay, exc)
                time.sleep(delay)  # backoff between reconnect attempts
                delay = min(delay * 2, 5.0)

    # -- STARTED records -----------------------------------------------------------------
    def _started_loop(self) -> None:
        delay = self.started_delay
        while not self._stopped.wait(delay / 2):
            began = time.monotonic() - delay
            with self._cond:
                due = [
                    control
                    for control in self._running.values()
                    if control.started is not None and control.active and control.since <= began
                ]
            if due:
                self._record_started(due)

    @staticmethod
    def _drop_started(control: _Running) -> None:
        """The task records its own state: its STARTED record must not follow (or be
        stored after) it."""
        with control.lock:  # waits for a STARTED record being stored right now
            control.started = None

    def _record_started(self, due: list[_Running]) -> None:
        with contextlib.ExitStack() as locked:
            records: list[ResultRecord] = []
            for control in due:
                # Held until stored: the task cannot end and store its outcome before.
                locked.enter_context(control.lock)
                if control.active and control.started is not None:
                    records.append(control.started)
                    control.started = None
            if records:
                self._retrying(lambda: self.app.results.store(records), "store results")

    # -- heartbeat -----------------------------------------------------------------------
    def _heartbeat_loop(self) -> None:
        last_sweep = 0.0
        last_announce = 0.0
        last_cleanup = time.monotonic()
        while not self._stopped.wait(self.heartbeat_interval):
            try:
                with self._cond:
                    held = list(self._held.values())
                    running = list(self._running)
                if held:
                    self.app.broker.extend(held)
                if running:
                    self._check_terminate(running)
                now = time.monotonic()
                if now - last_sweep >= self.sweep_interval:
                    last_sweep = now
                    self.app.broker.sweep()
                if now - last_announce >= max(self.heartbeat_interval, 2.0):
                    last_announce = now
                    self._announce()
                if now - last_cleanup >= self.cleanup_interval:
                    last_cleanup = now
                    self.app.results.cleanup()
            except ConveyorError as exc:
                logger.error("heartbeat failed: %s", exc)

    def _announce(self) -> None:
        info = {
            "hostname": self.hostname,
            "pid": os.getpid(),
            "queues": self.queues,
            "concurrency": self.concurrency,
            "processed": self.processed,
            "running": len(self._running),
            "started_at": self.started_at,
            "seen_at": time.time(),
        }
        ttl = max(10.0, self.heartbeat_interval * 4)
        self.app.kv.set_value(f"worker:{self.hostname}", json.dumps(info).encode(), ttl)

    def _check_terminate(self, running: list[str]) -> None:
        wanted = self.app.broker.revoked([f"terminate:{task_id}" for task_id in running])
        for key in wanted:
            control = self._running.get(key.removeprefix("terminate:"))
            if control is not None:
                logger.warning(
                    "terminating %s[%s] (revoked)", control.job.task.name, control.job.envelope.id
                )
                self._interrupt(control, TaskRevokedError)

    # -- time limits ---------------------------------------------------------------------
    def _arm_timers(self, control: _Running) -> None:
        envelope = control.job.envelope
        if not (envelope.soft_time_limit or envelope.time_limit):
            return  # most tasks: nothing to arm, no need to wake the timer thread
        now = time.monotonic()
        with self._timer_cond:
            first = self._timers[0][0] if self._timers else None
            if envelope.soft_time_limit:
                heapq.heappush(
                    self._timers,
                    (now + envelope.soft_time_limit, next(self._timer_seq), "soft", control),
                )
            if envelope.time_limit:
                heapq.heappush(
                    self._timers,
                    (now + envelope.time_limit, next(self._timer_seq), "hard", control),
                )
            if first is None or self._timers[0][0] < first:
                self._timer_cond.notify()  # it sleeps until the earliest deadline: a new one

    def _timer_loop(self) -> None:
        while not self._stopped.is_set():
            with self._timer_cond:
                while not self._timers and not self._stopped.is_set():
                    self._timer_cond.wait()
                if self._stopped.is_set():
                    return
                due, _, kind, control = self._timers[0]
                delay = due - time.monotonic()
                if delay > 0:
                    self._timer_cond.wait(delay)
                    continue
                heapq.heappop(self._timers)
            if control.job.envelope.id not in self._running or not control.active:
                continue
            if kind == "soft":
                logger.warning(
                    "%s[%s] soft time limit exceeded",
                    control.job.task.name,
                    control.job.envelope.id,
                )
                self._interrupt(control, SoftTimeLimitExceeded)
            elif self.on_hard_time_limit is not None:
                self.on_hard_time_limit(control.job)
            else:
                logger.error(
                    "%s[%s] hard time limit exceeded",
                    control.job.task.name,
                    control.job.envelope.id,
                )
                self._interrupt(control, TimeLimitExceeded)

    def _interrupt(self, control: _Running, exc_type: type[BaseException]) -> None:
        """Raise ``exc_type`` inside the running task (thread) or cancel it (async)."""
        if control.loop_task is not None:
            task, loop = control.loop_task, self._loop
            if loop is not None:
                loop.call_soon_threadsafe(
                    task.cancel, exc_type(f"task {control.job.envelope.id} interrupted")
                )
            return
        with control.lock:
            if not control.active or control.thread_id is None:
                return
            control.interrupted = exc_type
            ctypes.pythonapi.PyThreadState_SetAsyncExc(
                ctypes.c_ulong(control.thread_id), ctypes.py_object(exc_type)
            )
