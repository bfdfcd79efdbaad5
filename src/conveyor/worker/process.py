"""One worker process: the in-process :class:`Worker` plus what a production process needs.

:class:`ProcessWorker` adds to the consumer:

* **one thread for the hot path** - with one thread per process, the main thread leases and
  runs sync tasks itself (lease, run, ack-and-lease: no hand-off between threads), and a soft
  time limit or a terminate request is delivered as a signal (``SIGUSR1`` to the main thread)
  that interrupts blocking calls such as ``time.sleep``; the consumer's fallback
  (``PyThreadState_SetAsyncExc``) waits for the call to return;
* **reports** to the supervisor of the tasks it runs, with their delivery receipts, so the
  supervisor can act on a task whose process it killed or lost. Tasks the supervisor must
  act on promptly - a hard time limit to enforce, or ``acks_late=False`` (acked early, so
  only the supervisor can record a loss) - are reported when they start and end. The others
  are reported as a snapshot of what runs, sent when it changed, at most every
  ``SNAPSHOT_INTERVAL`` seconds: a task of microseconds costs the pipe nothing, and a long one
  is still known in time for a terminate's grace kill or a release after a kill;
* **recycling** after ``max_tasks`` tasks or once the process uses more than
  ``max_memory_kib`` of memory (checked after each task): a warm stop, then exit;
* **exit on stop**: when a stop completes the process ends at once, even if a cold stop
  abandoned a task that is still running in the main thread.

It plugs into :class:`~conveyor.worker.Worker` through its public options: an executor
(:class:`MainThreadExecutor`), ``consume_in_thread=False``, ``on_task_start``/``on_task_end``
for the reports and middleware (:class:`MemoryLimit`) for the recycling.

:mod:`conveyor.worker.child` runs it in a supervisor's child; ``--pool solo`` runs a
``ProcessWorker`` in the CLI process itself.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Literal, Unpack

from ..metrics.tally import Delta
from ..middleware import Middleware, call_each
from .execution import TaskRunner
from .inflight import Running
from .job import Job, Outcome
from .pools import interrupt_thread
from .ratelimit import RateLimiter
from .worker import Worker, WorkerBasics

if TYPE_CHECKING:
    from ..app import Conveyor

logger = logging.getLogger("conveyor.worker")

#: Signal that carries a time limit or terminate request into the main thread (POSIX only).
INTERRUPT_SIGNAL: signal.Signals | None = getattr(signal, "SIGUSR1", None)
#: Seconds between snapshots of the running tasks that are not reported one by one.
SNAPSHOT_INTERVAL = 0.25
#: Exit status of a process whose worker lost a background loop (EX_SOFTWARE), and the
#: seconds its cold stop may take before the process exits regardless.
EXIT_LOOP_DIED = 70
LOOP_DIED_EXIT_AFTER = 30.0

#: A delivery as a report carries it: ``Delivery(*fields)`` rebuilds it.
type DeliveryFields = tuple[str, str, bytes, int, str, int]
#: What a child process reports to its supervisor over the pipe: a task started (task id,
#: delivery, acks_late, time limit) or ended, a snapshot of the tasks that are not reported
#: one by one, the child is ready (its pid), metrics gathered since the last report.
type Report = (
    tuple[Literal["start"], str, DeliveryFields, bool, float | None]
    | tuple[Literal["end"], str]
    | tuple[Literal["running"], dict[str, DeliveryFields]]
    | tuple[Literal["ready"], int]
    | tuple[Literal["figures"], Delta]
)


def reported_one_by_one(job: Job) -> bool:
    """Whether the supervisor hears of ``job`` when it starts and ends (see the module doc)."""
    return not job.envelope.acks_late or bool(job.envelope.time_limit)


def delivery_fields(job: Job) -> DeliveryFields:
    """What a report carries of a job's delivery (``Delivery(*fields)`` rebuilds it)."""
    d = job.delivery
    assert d is not None
    return (d.id, d.queue, d.body, d.priority, d.receipt, d.delivery_count)


def memory_kib() -> int:
    """Resident memory of this process in KiB (peak RSS where /proc is missing)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            pages = int(statm.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") // 1024
    except (OSError, ValueError, IndexError):
        import resource  # POSIX only: deferred so the module still imports where it is missing

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak // 1024 if sys.platform == "darwin" else peak


class MainThreadExecutor:
    """Runs each sync task in the thread that leases - the main thread of a one-thread
    process: lease, run, ack-and-lease, no hand-off between threads.

    A soft time limit or a terminate request is delivered as a signal (``SIGUSR1`` to the
    main thread), which interrupts blocking calls such as ``time.sleep``; the thread pool's
    ``PyThreadState_SetAsyncExc`` waits for the call to return. Call :meth:`install` from
    the main thread first."""

    def __init__(self) -> None:
        self._main_ident = threading.main_thread().ident or 0
        self._control: Running | None = None
        self._pending: tuple[Running, type[BaseException]] | None = None

    def install(self) -> None:
        assert INTERRUPT_SIGNAL is not None
        signal.signal(INTERRUPT_SIGNAL, self._on_signal)

    def submit(self, control: Running, run: Callable[[], None]) -> None:
        self._control = control
        try:
            run()
        finally:
            self._control = None

    def interrupt(self, control: Running, exc_type: type[BaseException]) -> None:
        if control.thread_id != self._main_ident:
            interrupt_thread(control, exc_type)
            return
        with control.lock:
            if not control.active:
                return
            control.interrupted = exc_type
            self._pending = (control, exc_type)
        assert INTERRUPT_SIGNAL is not None  # tasks run in the main thread only with it
        signal.pthread_kill(self._main_ident, INTERRUPT_SIGNAL)

    def shutdown(self, *, wait: bool, cancel: bool) -> None:
        """Nothing to stop: a task still running in the main thread ends with the process."""

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        pending, self._pending = self._pending, None
        if pending is None:
            return
        control, exc_type = pending
        # Only the task the interrupt was meant for, and only while it still runs.
        if control is self._control and control.active:
            raise exc_type(f"task {control.job.envelope.id} interrupted")


class MemoryLimit(Middleware):
    """Recycles the process once it uses more than ``limit_kib`` of memory, checked after
    each task - before its slot is freed, so nothing more is leased."""

    def __init__(self, worker: ProcessWorker, limit_kib: int) -> None:
        self.worker = worker
        self.limit_kib = limit_kib
        self._tripped = False

    def after_process(self, job: Job, outcome: Outcome) -> None:
        if self._tripped:
            return
        used = memory_kib()
        if used > self.limit_kib:
            self._tripped = True
            worker = self.worker
            logger.warning(
                "worker %s uses %d KiB (> %d KiB): recycling", worker.hostname, used, self.limit_kib
            )
            worker.stop_leasing()
            worker.request_stop()


class ProcessWorkerOptions(WorkerBasics, total=False):
    """The keyword options of :class:`ProcessWorker` but ``solo``."""

    report: Callable[[Report], None] | None
    max_memory_kib: int | None
    hard_limit_in_process: bool
    runner_class: type[TaskRunner] | None


class ProcessWorker(Worker):
    """The worker of one process (see the module docstring).

    Call :meth:`serve` from the main thread after :meth:`start`; it never returns: the
    process exits when a stop completes. With one thread, :meth:`serve` is the consumer.
    ``solo``: this process is the whole worker (``--pool solo``), so it also calls the
    ``worker_start``/``worker_stop`` hooks.
    """

    def __init__(
        self,
        app: Conveyor,
        *,
        report: Callable[[Report], None] | None = None,
        max_memory_kib: int | None = None,
        hard_limit_in_process: bool = True,
        runner_class: type[TaskRunner] | None = None,
        rate_limiter: RateLimiter | None = None,
        solo: bool = False,
        **options: Unpack[WorkerBasics],
    ) -> None:
        self._report = report
        self.solo = solo
        threads = options.get("concurrency") or app.conf.worker_threads or 1
        in_main = threads == 1 and INTERRUPT_SIGNAL is not None
        self._main_executor = MainThreadExecutor() if in_main else None
        middleware = [MemoryLimit(self, max_memory_kib)] if max_memory_kib is not None else []
        super().__init__(
            app,
            on_task_start=self._task_started,
            on_task_end=self._task_ended,
            on_hard_time_limit=None if hard_limit_in_process else _hard_limit_reached,
            executor=self._main_executor,
            consume_in_thread=not in_main,
            middleware=middleware,
            lifecycle_hooks=False,  # called here, around the process's own hooks
            **options,
        )
        #: A supervisor's child leaves node commands (shutdown, pool size) to its supervisor.
        self.is_node = solo or report is None
        if runner_class is not None:
            self.runner = runner_class(app, self.hostname)
        if rate_limiter is not None:
            self.runner.rate_limiter = rate_limiter
        self.max_memory_kib = max_memory_kib
        self.exit_code = 0
        self._stop_lock = threading.Lock()
        self._stopping: set[bool] = set()  # the kinds of stop (cold or not) under way
        #: Called after the worker stopped, just before the process exits.
        self.before_exit: list[Callable[[], None]] = []

    def start(self) -> ProcessWorker:
        hooks = self.hooks
        if self.solo and hooks.worker_start:
            call_each(hooks.worker_start, self)
        if hooks.child_start:
            call_each(hooks.child_start, self)
        super().start()
        return self

    # -- stopping ------------------------------------------------------------------------
    def request_stop(self, *, cold: bool = False, timeout: float | None = None) -> None:
        """Start a warm (or cold) stop in the background; the process exits when it ends."""
        with self._stop_lock:
            if cold in self._stopping:
                return
            self._stopping.add(cold)
        kind = "cold" if cold else "warm"
        threading.Thread(
            target=self.stop,
            kwargs={"cold": cold, "timeout": timeout},
            name=f"conveyor-{kind}-stop",
            daemon=True,
        ).start()

    def stop(self, *, cold: bool = False, timeout: float | None = None) -> None:
        super().stop(cold=cold, timeout=timeout)
        logger.info("worker %s stopped (%d tasks processed)", self.hostname, self.processed)
        hooks = self.hooks
        if hooks.child_stop:
            call_each(hooks.child_stop, self)
        if self.solo and hooks.worker_stop:
            call_each(hooks.worker_stop, self)
        for hook in self.before_exit:
            try:
                hook()
            except Exception:
                logger.exception("exit hook %r failed", hook)
        for handler in logging.getLogger().handlers + logger.handlers:
            handler.flush()
        sys.stdout.flush()
        sys.stderr.flush()
        # A cold stop may leave a task running in the main thread: end the process now.
        os._exit(self.exit_code)

    def remote_stop(self) -> None:
        """A ``shutdown`` command: a warm stop; the process exits when it ends."""
        self.request_stop(timeout=self.app.conf.worker_shutdown_timeout)

    def loop_died(self, name: str, exc: BaseException) -> None:
        """Exit the process (code 70) after a cold stop, so the supervisor starts another;
        if the stop hangs, exit anyway after ``LOOP_DIED_EXIT_AFTER`` seconds."""
        logger.critical("worker %s: the %s loop died; exiting", self.hostname, name, exc_info=exc)
        self.exit_code = EXIT_LOOP_DIED
        watchdog = threading.Timer(LOOP_DIED_EXIT_AFTER, os._exit, (EXIT_LOOP_DIED,))
        watchdog.daemon = True
        watchdog.start()
        self.request_stop(cold=True)

    def serve(self) -> None:
        """Run the worker in the main thread until the process exits: with one thread, lease
        and run sync tasks here; otherwise just wait (task threads run them)."""
        if self._main_executor is not None:
            self._main_executor.install()
            self.consume()  # returns once the worker stops leasing
        while True:  # a completed stop ends the process
            threading.Event().wait()

    # -- reports -------------------------------------------------------------------------
    def _task_started(self, job: Job) -> None:
        if self._report is None or job.delivery is None or not reported_one_by_one(job):
            return
        envelope = job.envelope
        self._report(
            ("start", envelope.id, delivery_fields(job), envelope.acks_late, envelope.time_limit)
        )

    def _task_ended(self, job: Job) -> None:
        if self._report is not None and job.delivery is not None and reported_one_by_one(job):
            self._report(("end", job.envelope.id))

    def running_snapshot(self) -> dict[str, DeliveryFields]:
        """Task id -> delivery fields of the running tasks not reported one by one."""
        return {
            job.envelope.id: delivery_fields(job)
            for job in self.running_jobs()
            if job.delivery is not None and not reported_one_by_one(job)
        }


def _hard_limit_reached(job: Job) -> None:
    """The supervisor enforces hard limits by killing this process; nothing to do here."""
    logger.debug("%s[%s] hard time limit reached", job.task.name, job.envelope.id)
