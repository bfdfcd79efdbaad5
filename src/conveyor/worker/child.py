"""One worker process: the consumer :class:`Worker` plus what a production process needs.

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
* a **warm stop that misses nothing**: it waits for the consumer thread to hand over what
  it is leasing before waiting for running tasks;
* **exit on stop**: when a stop completes the process ends at once, even if a cold stop
  abandoned a task that is still running in the main thread.

It builds on the consumer's internals (``_start_sync``, ``_interrupt``, ``_release_controls``,
``_leasing``, ``_running``), so it lives next to it in this package.

``run_child`` is the entry point of a supervisor's child; ``--pool solo`` runs a
``ProcessWorker`` in the CLI process itself.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from ..exceptions import TaskRevokedError
from ..loading import find_app, setup_logging
from .consumer import Worker, _Running
from .execution import Job, Outcome, TaskRunner
from .signals import SignalCounter

if TYPE_CHECKING:
    from ..app import Conveyor

logger = logging.getLogger("conveyor.worker")

#: Signal that carries a time limit or terminate request into the main thread (POSIX only).
INTERRUPT_SIGNAL: signal.Signals | None = getattr(signal, "SIGUSR1", None)
#: Seconds between snapshots of the running tasks that are not reported one by one.
SNAPSHOT_INTERVAL = 0.25


def reported_one_by_one(job: Job) -> bool:
    """Whether the supervisor hears of ``job`` when it starts and ends (see the module doc)."""
    return not job.envelope.acks_late or bool(job.envelope.time_limit)


def delivery_fields(job: Job) -> tuple[Any, ...]:
    """What a report carries of a job's delivery (``Delivery(*fields)`` rebuilds it)."""
    d = job.delivery
    assert d is not None
    return (d.id, d.queue, d.body, d.priority, d.receipt, d.delivery_count)


@dataclass(frozen=True, slots=True)
class ChildOptions:
    """How a child process runs its worker (picklable, for the spawn start method)."""

    slot: int
    hostname: str
    queues: list[str]
    threads: int = 1
    prefetch_multiplier: int | None = None
    max_tasks: int | None = None
    max_memory_kib: int | None = None
    shutdown_timeout: float = 30.0
    #: Descriptors inherited from the supervisor that this child must close.
    close_fds: list[int] = field(default_factory=list)
    #: Root log level, for spawned children (forked ones inherit the logging setup).
    log_level: int = logging.INFO
    #: The TaskRunner subclass to run tasks with (e.g. Django's), None for the default.
    runner_class: type[TaskRunner] | None = None


def memory_kib() -> int:
    """Resident memory of this process in KiB (peak RSS where /proc is missing)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            pages = int(statm.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") // 1024
    except (OSError, ValueError, IndexError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak // 1024 if sys.platform == "darwin" else peak


class ProcessWorker(Worker):
    """The consumer worker of one process (see the module docstring).

    Call :meth:`serve` from the main thread after :meth:`start`; it never returns: the
    process exits when a stop completes. With one thread, :meth:`serve` is the consumer.
    """

    def __init__(
        self,
        app: Conveyor,
        *,
        report: Callable[[tuple[Any, ...]], None] | None = None,
        max_memory_kib: int | None = None,
        hard_limit_in_process: bool = True,
        runner_class: type[TaskRunner] | None = None,
        **options: Any,
    ) -> None:
        self._report = report
        if not hard_limit_in_process:
            options["on_hard_time_limit"] = self._hard_limit_reached
        super().__init__(
            app, on_task_start=self._task_started, on_task_end=self._task_ended, **options
        )
        if runner_class is not None:
            self.runner = runner_class(app, self.hostname)
        self.max_memory_kib = max_memory_kib
        self.exit_code = 0
        self._main_ident = threading.main_thread().ident or 0
        self._in_main = self.concurrency == 1 and INTERRUPT_SIGNAL is not None
        self._main_control: _Running | None = None
        self._pending_interrupt: tuple[_Running, type[BaseException]] | None = None
        self._stop_lock = threading.Lock()
        self._stopping: set[bool] = set()  # the kinds of stop (cold or not) under way
        #: Called after the worker stopped, just before the process exits.
        self.before_exit: list[Callable[[], None]] = []

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
        # The consumer may be inside broker.lease(): wait until what it leases is dispatched
        # and counted, or the stop would miss it (run, never acked, redelivered).
        self._leasing.clear()
        self._wait_handed_over(self.lease_wait + 5.0)
        super().stop(cold=cold, timeout=timeout)
        logger.info("worker %s stopped (%d tasks processed)", self.hostname, self.processed)
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

    def terminate(self, task_id: str) -> None:
        """Raise TaskRevokedError in task ``task_id`` if it runs here."""
        control = self._running.get(task_id)
        if control is not None:
            self._interrupt(control, TaskRevokedError)

    # -- consuming and running sync tasks in the main thread -----------------------------
    def _background_loops(self) -> list[tuple[str, Callable[[], None]]]:
        loops = super()._background_loops()
        if self._in_main:  # serve() consumes, in the main thread
            loops = [(name, target) for name, target in loops if name != "consumer"]
        return loops

    def serve(self) -> None:
        """Run the worker in the main thread until the process exits: with one thread, lease
        and run sync tasks here; otherwise just wait (task threads run them)."""
        if self._in_main:
            assert INTERRUPT_SIGNAL is not None
            signal.signal(INTERRUPT_SIGNAL, self._on_interrupt_signal)
            self._consume()  # returns once the worker stops leasing
        while True:  # a completed stop ends the process
            threading.Event().wait()

    def _start_sync(self, control: _Running) -> None:
        if not self._in_main:
            super()._start_sync(control)
            return
        self._main_control = control
        try:
            self._run_sync(control)
        finally:
            self._main_control = None

    def _interrupt(self, control: _Running, exc_type: type[BaseException]) -> None:
        if control.loop_task is not None or control.thread_id != self._main_ident:
            super()._interrupt(control, exc_type)
            return
        with control.lock:
            if not control.active:
                return
            control.interrupted = exc_type
            self._pending_interrupt = (control, exc_type)
        assert INTERRUPT_SIGNAL is not None  # tasks run in the main thread only with it
        signal.pthread_kill(self._main_ident, INTERRUPT_SIGNAL)

    def _on_interrupt_signal(self, signum: int, frame: Any) -> None:
        pending, self._pending_interrupt = self._pending_interrupt, None
        if pending is None:
            return
        control, exc_type = pending
        # Only the task the interrupt was meant for, and only while it still runs.
        if control is self._main_control and control.active:
            raise exc_type(f"task {control.job.envelope.id} interrupted")

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

    def running_snapshot(self) -> dict[str, tuple[Any, ...]]:
        """Task id -> delivery fields of the running tasks not reported one by one."""
        with self._cond:
            jobs = [control.job for control in self._running.values()]
        return {
            job.envelope.id: delivery_fields(job)
            for job in jobs
            if job.delivery is not None and not reported_one_by_one(job)
        }

    def _release_controls(self, batch: list[tuple[Outcome, _Running | None]]) -> None:
        recycle = False
        if self.max_memory_kib is not None and any(control for _, control in batch):
            used = memory_kib()
            if used > self.max_memory_kib:
                logger.warning(
                    "worker %s uses %d KiB (> %d KiB): recycling",
                    self.hostname,
                    used,
                    self.max_memory_kib,
                )
                # Before the freed slot wakes the consumer, so nothing more is leased.
                self._leasing.clear()
                recycle = True
        super()._release_controls(batch)
        if recycle:
            self.request_stop()

    def _hard_limit_reached(self, job: Job) -> None:
        """The supervisor enforces hard limits by killing this process; nothing to do here."""
        logger.debug("%s[%s] hard time limit reached", job.task.name, job.envelope.id)


class _Reporter:
    """Sends reports to the supervisor from any thread; a gone supervisor is ignored."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.lock = threading.Lock()

    def __call__(self, message: tuple[Any, ...]) -> None:
        with self.lock, contextlib.suppress(OSError, ValueError):
            self.conn.send(message)


def run_child(app: Conveyor | str, options: ChildOptions, conn: Connection) -> None:
    """Entry point of a supervisor's child process."""
    with _logged_failure(f"worker process {options.slot}"):
        _run_child(app, options, conn)


@contextlib.contextmanager
def _logged_failure(what: str) -> Iterator[None]:
    """Log a crash through logging (where URL passwords are redacted), then exit with 1,
    instead of letting multiprocessing print a raw traceback."""
    try:
        yield
    except Exception:
        logger.exception("%s failed", what)
        raise SystemExit(1) from None


def _run_child(app: Conveyor | str, options: ChildOptions, conn: Connection) -> None:
    for fd in options.close_fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the supervisor, which decides
    if isinstance(app, str):
        setup_logging(logging.getLevelName(options.log_level))
        app = find_app(app)
    report = _Reporter(conn)
    worker = ProcessWorker(
        app,
        report=report,
        max_memory_kib=options.max_memory_kib,
        hard_limit_in_process=False,
        runner_class=options.runner_class,
        queues=options.queues,
        concurrency=options.threads,
        hostname=options.hostname,
        prefetch_multiplier=options.prefetch_multiplier,
        max_tasks=options.max_tasks,
    )
    parent = os.getppid()
    terminated = SignalCounter([signal.SIGTERM]).install()
    threading.Thread(
        target=_control_loop,
        args=(worker, conn, report, parent, terminated, options.shutdown_timeout),
        name="conveyor-control",
        daemon=True,
    ).start()
    worker.start()
    report(("ready", os.getpid()))
    worker.serve()


def run_solo(app: Conveyor, *, shutdown_timeout: float, beat: bool = False, **options: Any) -> None:
    """``--pool solo``: one :class:`ProcessWorker` in this process, stopped warm by SIGTERM
    or SIGINT and cold by a second one; ``beat=True`` also runs beat on a thread. Never
    returns: the process exits when it stops."""
    app.broker.time()  # fail fast, with a clear error, if the broker is unreachable
    worker = ProcessWorker(app, **options)
    if beat:
        _beat_thread(app, worker)
    signals = SignalCounter().install()
    threading.Thread(
        target=_watch_signals,
        args=(worker, signals, shutdown_timeout),
        name="conveyor-signals",
        daemon=True,
    ).start()
    worker.start()
    worker.serve()


def _watch_signals(worker: ProcessWorker, signals: SignalCounter, shutdown_timeout: float) -> None:
    pause, seen = threading.Event(), 0
    while not pause.wait(0.1):
        count = signals.count
        if count >= 1 and seen < 1:
            logger.warning(
                "warm shutdown: finishing running tasks within %ss (signal again for cold)",
                shutdown_timeout,
            )
            worker.request_stop(timeout=shutdown_timeout)
        if count >= 2 and seen < 2:
            logger.warning("cold shutdown: returning unfinished messages")
            worker.request_stop(cold=True)
        seen = count


def _control_loop(
    worker: ProcessWorker,
    conn: Connection,
    report: _Reporter,
    parent: int,
    terminated: SignalCounter,
    shutdown_timeout: float,
) -> None:
    """Obey the supervisor's commands, send snapshots of the running tasks; stop on SIGTERM
    or when the supervisor is gone."""
    sent: set[str] = set()
    while True:
        try:
            running = worker.running_snapshot()
            if running.keys() != sent:
                report(("running", running))
                sent = set(running)
            if conn.poll(SNAPSHOT_INTERVAL):
                command, argument = conn.recv()
                if command == "stop":
                    worker.request_stop(cold=bool(argument))
                elif command == "terminate":
                    worker.terminate(str(argument))
        except (EOFError, OSError):
            worker.request_stop(timeout=shutdown_timeout)
            return
        if terminated.count:
            worker.request_stop(timeout=shutdown_timeout)
        if os.getppid() != parent:
            logger.warning("supervisor %d is gone: stopping", parent)
            worker.request_stop(timeout=shutdown_timeout)
            return


def _beat_thread(app: Conveyor, worker: ProcessWorker) -> None:
    stop = threading.Event()
    thread = threading.Thread(
        target=app.run_beat,
        args=(stop,),
        kwargs={"name": f"{worker.hostname}/beat"},
        name="conveyor-beat",
        daemon=True,
    )

    def stop_beat() -> None:
        stop.set()
        thread.join(10)

    worker.before_exit.append(stop_beat)
    thread.start()


def run_beat_process(app: Conveyor | str, name: str, close_fds: list[int]) -> None:
    """Entry point of the beat process a supervisor runs for ``worker -B``: stops on SIGTERM
    or when the supervisor is gone (Ctrl-C reaches the supervisor, which sends SIGTERM)."""
    with _logged_failure("beat process"):
        _run_beat_process(app, name, close_fds)


def _run_beat_process(app: Conveyor | str, name: str, close_fds: list[int]) -> None:
    for fd in close_fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if isinstance(app, str):
        app = find_app(app)
    stop = threading.Event()
    terminated = SignalCounter([signal.SIGTERM]).install()
    parent = os.getppid()

    def watch() -> None:
        while not stop.wait(0.25):
            if terminated.count or os.getppid() != parent:
                stop.set()

    threading.Thread(target=watch, name="conveyor-beat-watch", daemon=True).start()
    app.run_beat(stop, name=name)
