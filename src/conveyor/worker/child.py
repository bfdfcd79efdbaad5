"""Entry points of worker processes: a supervisor's child (:func:`run_child`), ``--pool solo``
(:func:`run_solo`) and the beat process of ``worker -B`` (:func:`run_beat_process`).

A child runs a :class:`~conveyor.worker.process.ProcessWorker`, obeys the supervisor's
commands (stop, terminate) and sends it snapshots of its running tasks every
``SNAPSHOT_INTERVAL`` seconds when they changed.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, Unpack

from ..loading import find_app, setup_logging
from .execution import TaskRunner
from .ledger import ChildLedger
from .metrics_channel import ChildFigures, ensure_metrics, serve_solo_metrics
from .process import SNAPSHOT_INTERVAL, ProcessWorker, ProcessWorkerOptions, Report
from .ratelimit import SharedRateLimiter
from .signals import SignalCounter

if TYPE_CHECKING:
    from ..app import Conveyor

logger = logging.getLogger("conveyor.worker")


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
    #: The worker's rate limits, shared by its children (None: none, or per process).
    rate_limiter: SharedRateLimiter | None = None
    #: Memory shared with the supervisor: what waits prefetched (:mod:`.ledger`).
    prefetch_ledger: ctypes.Array[ctypes.c_char] | None = None


class _Reporter:
    """Sends reports to the supervisor from any thread; a gone supervisor is ignored."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.lock = threading.Lock()

    def __call__(self, message: Report) -> None:
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
        rate_limiter=options.rate_limiter,
        queues=options.queues,
        concurrency=options.threads,
        hostname=options.hostname,
        prefetch_multiplier=options.prefetch_multiplier,
        max_tasks=options.max_tasks,
    )
    if worker.prefetch is not None and options.prefetch_ledger is not None:
        worker.inflight.ledger = ChildLedger(options.prefetch_ledger)
    figures = ChildFigures(app, report)
    worker.before_exit.append(figures.flush)
    parent = os.getppid()
    terminated = SignalCounter([signal.SIGTERM]).install()
    threading.Thread(
        target=_control_loop,
        args=(worker, conn, report, figures, parent, terminated, options.shutdown_timeout),
        name="conveyor-control",
        daemon=True,
    ).start()
    worker.start()
    report(("ready", os.getpid()))
    worker.serve()


def run_solo(
    app: Conveyor,
    *,
    shutdown_timeout: float,
    beat: bool = False,
    metrics: tuple[str, int] | None = None,
    **options: Unpack[ProcessWorkerOptions],
) -> None:
    """``--pool solo``: one :class:`ProcessWorker` in this process, stopped warm by SIGTERM
    or SIGINT and cold by a second one; ``beat=True`` also runs beat on a thread;
    ``metrics=(host, port)`` serves Prometheus metrics. Never returns: the process exits
    when it stops."""
    app.broker.time()  # fail fast, with a clear error, if the broker is unreachable
    if metrics is not None:
        ensure_metrics(app)  # before the worker: it takes the app's middleware when built
    worker = ProcessWorker(app, solo=True, **options)
    if metrics is not None:
        serve_solo_metrics(app, worker, *metrics)
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
    figures: ChildFigures,
    parent: int,
    terminated: SignalCounter,
    shutdown_timeout: float,
) -> None:
    """Obey the supervisor's commands, send snapshots of the running tasks and metrics;
    stop on SIGTERM or when the supervisor is gone."""
    sent: set[str] = set()
    while True:
        try:
            running = worker.running_snapshot()
            if running.keys() != sent:
                report(("running", running))
                sent = set(running)
            figures.flush()
            if conn.poll(SNAPSHOT_INTERVAL):
                command, argument = conn.recv()
                if command == "stop":
                    if not argument:
                        _log_warm_stop(worker, shutdown_timeout)
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


def _log_warm_stop(worker: ProcessWorker, shutdown_timeout: float) -> None:
    """Say how many tasks this child finishes before it stops (the supervisor only hears of
    some tasks in periodic snapshots, so only the child can count them exactly)."""
    running = sum(control.active for control in worker.inflight.controls())
    if running:
        logger.warning(
            "warm shutdown: finishing %d running task(s) within %ss", running, shutdown_timeout
        )
    else:
        logger.info("warm shutdown: no task running")


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


class BeatProcess:
    """The beat process a supervisor runs for ``worker -B``, restarted a second after it
    dies unless the supervisor is stopping."""

    def __init__(
        self,
        context: BaseContext,
        app: Conveyor | str,
        name: str,
        inherited_fds: Callable[[], list[int]],
    ) -> None:
        self._context = context
        self._app = app
        self.name = name
        self._inherited_fds = inherited_fds
        self.process: BaseProcess | None = None
        self.restart_at: float | None = None

    def spawn(self) -> None:
        self.restart_at = None
        process = self._context.Process(  # type: ignore[attr-defined]  # BaseContext stubs lack Process
            target=run_beat_process,
            args=(self._app, self.name, self._inherited_fds()),
            name="beat",
            daemon=False,
        )
        process.start()
        self.process = process
        logger.info("started beat (pid %s)", process.pid)

    def check(self, now: float, *, stopping: bool) -> None:
        beat = self.process
        if beat is not None and not beat.is_alive():
            beat.join()
            self.process = None
            if not stopping:
                logger.error(
                    "beat (pid %s) exited with code %s: restarting", beat.pid, beat.exitcode
                )
                self.restart_at = now + 1.0
        if stopping:
            self.restart_at = None
        elif self.restart_at is not None and now >= self.restart_at:
            self.spawn()

    def signal(self, signum: int) -> None:
        if self.process is not None and self.process.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signum)


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
