"""The in-process worker: lease a batch, run tasks on threads or an event loop, settle in
batches.

``Worker`` is used directly by tests (``app.Worker()``, ``conveyor.testing``) and ``--pool
solo``, and is what each child process of the production supervisor runs
(:mod:`conveyor.worker.child`). It composes one part per concern:

* the *consumer* (:mod:`~conveyor.worker.consumer`) leases, admits and settles plain
  successes with its next lease, on a thread of its own (or, with
  ``consume_in_thread=False``, in the thread that calls :meth:`Worker.consume`);
* the *dispatcher* (:mod:`~conveyor.worker.dispatch`) runs tasks - sync ones on a
  :class:`~conveyor.worker.pools.TaskExecutor` (task threads by default), async ones on one
  event-loop thread - between the middleware's task hooks;
* the *finisher* (:mod:`~conveyor.worker.settle`) settles everything else in batches;
* the *heartbeat* (:mod:`~conveyor.worker.heartbeat`) renews leases, obeys terminate
  requests, sweeps, announces the worker and deletes expired results;
* the *timer* (:mod:`~conveyor.worker.timelimits`) enforces soft and hard time limits;
* the *started* thread (:mod:`~conveyor.worker.started`) records STARTED for tasks that run
  longer than ``worker_started_delay``.

They share :class:`~conveyor.worker.inflight.InFlight`, the counts under one condition
variable.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING, TypedDict

from ..exceptions import BrokerError, ConveyorError, ResultStoreError, TaskRevokedError
from ..limits.gate import FlowGate
from ..middleware import Middleware, call_each
from ..results.base import ResultRecord
from .consumer import Consumer, default_hostname
from .control import ControlListener
from .dispatch import Dispatcher
from .execution import TaskRunner
from .heartbeat import Heartbeat
from .hooks import worker_hooks
from .inflight import Finished, InFlight, Running
from .job import Job, Outcome
from .loops import guarded
from .pools import EventLoopThread, TaskExecutor, ThreadExecutor
from .prefetch import AdaptivePrefetch, RuntimeEstimate
from .retry import retrying
from .settle import Finisher, Settler
from .started import StartedRecords
from .timelimits import TimeLimits

if TYPE_CHECKING:
    from ..app import Conveyor

logger = logging.getLogger("conveyor.worker")


class WorkerBasics(TypedDict, total=False):
    """The keyword options of :class:`Worker` that are not plug-ins (for wrappers, such as
    :class:`~conveyor.worker.process.ProcessWorker`, that plug in themselves)."""

    queues: Sequence[str] | None
    concurrency: int | None
    hostname: str | None
    prefetch_multiplier: int | None
    max_tasks: int | None
    lease_wait: float
    sweep_interval: float | None
    cleanup_interval: float


class WorkerOptions(WorkerBasics, total=False):
    """The keyword options of :class:`Worker` (for wrappers that pass them on)."""

    on_task_start: Callable[[Job], None] | None
    on_task_end: Callable[[Job], None] | None
    on_hard_time_limit: Callable[[Job], None] | None
    executor: TaskExecutor | None
    consume_in_thread: bool
    middleware: Sequence[Middleware]
    before_settle: Callable[[list[Outcome]], None] | None
    lifecycle_hooks: bool
    runner: TaskRunner | None


class Worker:
    """Consume tasks of ``app`` from ``queues`` in this process.

    ``concurrency`` is the number of tasks run at once (task threads; async tasks share the
    same slots). ``prefetch_multiplier`` fixes the messages leased per free slot; unset
    (and ``worker_prefetch_multiplier`` unset) it adapts (:mod:`conveyor.worker.prefetch`).
    Use :meth:`start` / :meth:`stop`, :meth:`run` (blocks), or as a context manager.
    :meth:`drain` waits until the queues are empty and nothing runs.

    Plug-in points: ``executor`` runs sync tasks (default: ``concurrency`` threads);
    ``consume_in_thread=False`` leaves the lease loop to the caller (:meth:`consume`);
    ``middleware`` is called before the app's; ``on_task_start`` / ``on_task_end`` see each
    admitted task when it is dispatched and once it is settled; ``on_hard_time_limit``
    replaces the in-process hard limit; ``before_settle`` sees each batch of outcomes the
    finisher settles, and the dead letters the lease loop settles (and may change them);
    ``lifecycle_hooks=False`` leaves the ``worker_start``/``worker_stop`` hooks to the caller.
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
        executor: TaskExecutor | None = None,
        consume_in_thread: bool = True,
        middleware: Sequence[Middleware] = (),
        before_settle: Callable[[list[Outcome]], None] | None = None,
        lifecycle_hooks: bool = True,
        runner: TaskRunner | None = None,
    ) -> None:
        app.finalize()
        conf = app.conf
        self.app = app
        self.queues = list(queues or [conf.task_default_queue])
        self.concurrency = concurrency or conf.worker_threads or 1
        self.hostname = hostname or default_hostname()
        self.prefetch_multiplier = prefetch_multiplier or conf.worker_prefetch_multiplier
        self.max_tasks = max_tasks
        self.lease_wait = lease_wait
        self.sweep_interval = sweep_interval or conf.broker_sweep_interval
        #: Seconds between deletions of expired results (result stores without own TTLs).
        self.cleanup_interval = cleanup_interval
        self.heartbeat_interval = max(0.05, min(conf.broker_lease_timeout / 3, 5.0))
        self.started_delay = 0.0 if conf.task_track_started else conf.worker_started_delay
        self.on_task_start = on_task_start
        self.on_task_end = on_task_end
        self._before_settle = before_settle
        self.consume_in_thread = consume_in_thread
        self.lifecycle_hooks = lifecycle_hooks
        #: Runs the tasks (replace it before :meth:`start`, e.g. with Django's).
        self.runner = runner or TaskRunner(app, self.hostname)
        self.hooks = worker_hooks(app, *middleware)
        self.started_at = 0.0
        self.inflight = InFlight()
        self._executor = executor
        self._leasing = threading.Event()
        self._stopped = threading.Event()
        self._cold = False
        self._threads: list[threading.Thread] = []
        self._loop = EventLoopThread()
        self._timers = TimeLimits(self.inflight, self._stopped, self.interrupt, on_hard_time_limit)
        self._dispatcher: Dispatcher | None = None
        #: Adaptive prefetch (None: a fixed ``prefetch_multiplier``).
        self.prefetch: AdaptivePrefetch | None = None
        if self.prefetch_multiplier is None:
            self.prefetch = AdaptivePrefetch(
                self.inflight,
                short=conf.worker_prefetch_short,
                most=conf.worker_prefetch_max,
                release=lambda deliveries: app.broker.release(deliveries),
                stopped=self._stopped,
                runtimes=RuntimeEstimate(),
            )
        self._consumer: Consumer | None = None
        self._heartbeat: Heartbeat | None = None
        #: Whether this worker is a whole node (not a supervisor's child): it then obeys
        #: remote-control commands about the node (shutdown, ...) itself.
        self.is_node = True
        self._control: ControlListener | None = None

    @property
    def processed(self) -> int:
        """Tasks finished (settled) so far."""
        return self.inflight.processed

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> Worker:
        self.started_at = time.time()
        if self.lifecycle_hooks and self.hooks.worker_start:
            call_each(self.hooks.worker_start, self)
        executor = self._executor or ThreadExecutor(self.concurrency)
        self._executor = executor
        app, inflight, stopped = self.app, self.inflight, self._stopped
        if self.runner.flow is None:
            self.runner.flow = FlowGate(app, app.broker.limits)
        inflight.dead_ride = app.settlement.dead_letters_ride
        prefetch = self.prefetch
        dispatcher = Dispatcher(
            app, inflight, self.runner, self.hooks, executor, self._loop, self._timers,
            self.on_task_start, prefetch.runtimes if prefetch is not None else None,
        )  # fmt: skip
        started = None
        if self.started_delay:
            started = StartedRecords(inflight, stopped, self.started_delay, self._store)
        self._consumer = Consumer(
            app,
            inflight,
            self.runner,
            dispatcher,
            queues=self.queues,
            capacity=self.concurrency * (self.prefetch_multiplier or 1),
            lease_wait=self.lease_wait,
            max_tasks=self.max_tasks,
            leasing=self._leasing,
            stopped=stopped,
            attempt=self._retrying,
            cold=lambda: self._cold,
            release=self.release,
            on_max_tasks=self._max_tasks_reached,
            started=started,
            prefetch=prefetch,
            before_settle=self._before_settle,
        )
        self._heartbeat = heartbeat = Heartbeat(
            app,
            inflight,
            stopped,
            hostname=self.hostname,
            queues=self.queues,
            concurrency=self.concurrency,
            started_at=self.started_at,
            interval=self.heartbeat_interval,
            sweep_interval=self.sweep_interval,
            cleanup_interval=self.cleanup_interval,
            terminate=self.terminate,
            renew=self.runner.flow.renew,
            on_beat=self.runner.dead_letters.flush,
        )
        finisher = Finisher(
            inflight,
            Settler(app, self._retrying),
            stopped,
            cold=lambda: self._cold,
            release=self.release,
            before_settle=self._before_settle,
        )
        self._dispatcher = dispatcher
        self._control = ControlListener(
            self, stopped, node=self.is_node, stop=self.remote_stop
        )  # fmt: skip
        self._control.start_position()  # paused queues are known before the first lease
        self._leasing.set()
        loops: list[tuple[str, Callable[[], None]]] = [
            ("finisher", finisher.run),
            ("heartbeat", heartbeat.run),
            ("timer", self._timers.run),
            ("control", self._control.run),
        ]
        if self.consume_in_thread:
            loops.insert(0, ("consumer", self._consumer.run))
        if started is not None:
            loops.append(("started", started.run))
        if prefetch is not None:
            loops.append(("prefetch", prefetch.run))
        for name, target in loops:
            run = guarded(name, target, self.loop_died)
            thread = threading.Thread(target=run, name=f"conveyor-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        with contextlib.suppress(ConveyorError):
            heartbeat.announce()  # visible to `conveyor status` at once, not after a beat
        logger.info(
            "worker %s consuming %s with %d slots",
            self.hostname,
            ",".join(self.queues),
            self.concurrency,
        )
        return self

    def consume(self) -> None:
        """Run the lease loop in this thread until leasing stops (for a worker created with
        ``consume_in_thread=False``, after :meth:`start`)."""
        assert self._consumer is not None, "start() first"
        self._consumer.run()

    def stop_leasing(self) -> None:
        """Lease nothing more (a stop follows; tasks leased so far still run)."""
        self._leasing.clear()
        self.inflight.notify()  # a consumer waiting for a free slot hands over at once

    def stop(self, *, cold: bool = False, timeout: float | None = None) -> None:
        """Warm stop: lease nothing more, let running tasks finish (up to ``timeout``), store
        and ack. Cold stop (or timeout passed): return unfinished leases to the broker now."""
        self.stop_leasing()
        # Let a lease in progress return and dispatch first: what it leased is then either
        # finished (warm) or released (cold), never run after the finisher stopped.
        self.inflight.wait_handed_over(self.lease_wait + 10)
        self._give_back_prefetched()
        if not cold:
            deadline = None if timeout is None else time.monotonic() + timeout
            cold = not self.inflight.wait_idle(deadline)
        if cold:
            self._cold = True
            unfinished = self.inflight.take_held()
            if unfinished:
                try:
                    self.app.broker.release(unfinished)
                    logger.warning(
                        "cold shutdown: returned %d unfinished message(s)", len(unfinished)
                    )
                except ConveyorError as exc:
                    logger.error("cold shutdown: could not release leases: %s", exc)
        self._stopped.set()
        self._timers.wake()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout=5)
        self._threads.clear()
        if self._executor is not None:
            self._executor.shutdown(wait=not cold, cancel=cold)
        self._loop.stop()
        self.runner.dead_letters.flush(final=True)
        if self._heartbeat is not None:
            with contextlib.suppress(ConveyorError):
                self._heartbeat.retire()
        if self.lifecycle_hooks and self.hooks.worker_stop:
            call_each(self.hooks.worker_stop, self)

    def _give_back_prefetched(self) -> None:
        """Return the prefetched messages, which will not start now, uncharged."""
        prefetched = self.inflight.take_all_prefetched()
        if not prefetched:
            return
        try:
            self.app.broker.release(prefetched)
            logger.info("returned %d prefetched message(s)", len(prefetched))
        except ConveyorError as exc:
            logger.error("could not return prefetched messages (they are redelivered): %s", exc)

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
    def started(self) -> bool:
        """Whether :meth:`start` ran and :meth:`stop` did not end it yet."""
        return bool(self._threads)

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()

    def drain(self, timeout: float = 30.0, *, include_delayed: bool = True) -> None:
        """Block until the worker's queues are empty and no task is running or finishing.

        Raises TimeoutError (the builtin) if that does not happen within ``timeout``."""
        deadline = time.monotonic() + timeout
        inflight = self.inflight
        while True:
            with inflight.cond:
                busy = inflight.busy(holding=True)
            if not busy:
                stats = self.app.broker.stats(self.queues)
                waiting = sum(
                    s.ready + s.leased + (s.delayed if include_delayed else 0)
                    for s in stats.values()
                )
                if not waiting:
                    with inflight.cond:
                        if not inflight.busy(holding=True):
                            return
            if time.monotonic() >= deadline:
                raise TimeoutError(f"worker did not become idle within {timeout} s")
            inflight.wait(0.01)

    # -- remote control ------------------------------------------------------------------
    @property
    def time_limits(self) -> dict[str, tuple[float | None, float | None]]:
        """Task name -> (soft, hard) time limits set by remote control."""
        assert self._dispatcher is not None, "start() first"
        return self._dispatcher.time_limits

    def set_paused(self, paused: set[str]) -> None:
        """Lease only from the queues not in ``paused`` (queue pause, conveyor.control)."""
        if self._consumer is not None:
            self._consumer.queues = [q for q in self.queues if q not in paused]
        if paused:
            logger.info("worker %s: paused queue(s) %s", self.hostname, ", ".join(sorted(paused)))
        self.inflight.notify()

    def remote_stop(self) -> None:
        """A ``shutdown`` command: a warm stop, in the background."""
        threading.Thread(target=self.stop, name="conveyor-remote-stop", daemon=True).start()

    # -- running tasks -------------------------------------------------------------------
    def running_jobs(self) -> list[Job]:
        """The jobs admitted and not settled yet."""
        return [control.job for control in self.inflight.controls()]

    def interrupt(self, control: Running, exc_type: type[BaseException]) -> None:
        """Raise ``exc_type`` inside ``control``'s running task (or cancel it, if async)."""
        if self._dispatcher is not None:
            self._dispatcher.interrupt(control, exc_type)

    def terminate(self, task_id: str) -> None:
        """Raise TaskRevokedError in task ``task_id`` if it runs here."""
        control = self.inflight.get(task_id)
        if control is not None:
            job = control.job
            logger.warning("terminating %s[%s] (revoked)", job.task.name, job.envelope.id)
            self.interrupt(control, TaskRevokedError)

    def release(self, batch: list[Finished]) -> None:
        """Free the slots and holds of settled outcomes (then ``on_task_end``)."""
        jobs = self.inflight.release(batch)
        if self.on_task_end is not None:
            for job in jobs:
                self.on_task_end(job)

    def loop_died(self, name: str, exc: BaseException) -> None:
        """A background loop (consumer, finisher, heartbeat, timer, started) ended by an
        exception its own handling let through: the worker cannot go on, so it stops (cold:
        its leases return now) rather than stay up doing nothing. A worker process exits
        (:class:`~conveyor.worker.process.ProcessWorker`), so its supervisor replaces it."""
        logger.critical("worker %s: the %s loop died; stopping", self.hostname, name, exc_info=exc)
        threading.Thread(target=self.stop, kwargs={"cold": True}, daemon=True).start()

    def _max_tasks_reached(self) -> None:
        logger.info("worker %s reached max_tasks=%d", self.hostname, self.max_tasks)
        threading.Thread(target=self.stop, daemon=True).start()

    def _retrying(self, action: Callable[[], object], what: str) -> None:
        """Retry ``action`` until it works or the worker is cold-stopped (the lease then
        expires and the message is redelivered, which keeps the at-least-once promise)."""
        with contextlib.suppress(BrokerError, ResultStoreError):
            retrying(action, what, give_up=lambda: self._cold)

    def _store(self, records: list[ResultRecord]) -> None:
        self._retrying(partial(self.app.results.store, records), "store results")
