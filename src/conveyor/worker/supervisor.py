"""The production worker: a supervisor process and N child processes.

Each child (:mod:`conveyor.worker.child`) runs the consumer on its own broker and result
connections and reports to the supervisor, over a pipe, the tasks it runs with their delivery
receipts: one by one when they start and end if the supervisor must act on them promptly (a
hard time limit, ``acks_late=False``), as a periodic snapshot otherwise. The supervisor is
single-threaded - it forks children, which is only safe from a process with one thread - and:

* restarts children that exit or die (with a backoff when they die at once);
* enforces **hard time limits**: the child is killed (SIGKILL) and replaced, the task is
  recorded as FAILURE ``TimeLimitExceeded`` and its message dead-lettered (``time_limit``);
* enforces **terminate**: ``revoke(id, terminate=True)`` first raises ``TaskRevokedError``
  in the task; if the task still runs after ``terminate_grace`` seconds its child is killed,
  the task recorded REVOKED and its message acked;
* handles a **lost child**: its ``acks_late`` messages come back when their lease expires
  (a delivery is charged, so a task that kills its process ends in the DLQ); tasks that were
  acked early (``acks_late=False``) are recorded FAILURE ``WorkerLostError`` at once;
  innocent tasks of a child killed for another task's limit, and the messages it prefetched
  and never started (:mod:`.ledger`), are released at once, uncharged;
* turns SIGTERM/SIGINT into a **warm shutdown** (children stop leasing and finish their tasks
  within ``shutdown_timeout``) and a second signal, or the timeout, into a **cold** one
  (children return their leases at once; stragglers are killed and their leases released).

Children are forked (after the app was imported, so they share its memory) where the platform
can fork; elsewhere they are spawned and import the app again from its ``-A`` spec.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING

from ..brokers import scheme_of
from ..brokers.base import DeadLetterReason, Delivery
from ..control.protocol import ControlError
from ..exceptions import (
    ConfigurationError,
    ConveyorError,
    TaskRevokedError,
    TimeLimitExceeded,
)
from ..limits.gate import refuse_concurrency_limits
from ..middleware import call_each
from .autoscale import Autoscaler
from .child import BeatProcess, ChildOptions, run_child
from .consumer import default_hostname
from .control import NodeControl
from .execution import TaskRunner
from .ledger import PrefetchLedger
from .lost import LostTasks, RunningTask
from .metrics_channel import SupervisorMetrics
from .process import Report
from .ratelimit import SharedRateLimiter
from .signals import SignalCounter

if TYPE_CHECKING:
    from ..app import Conveyor

logger = logging.getLogger("conveyor.supervisor")

#: Seconds between checks for ``revoke(..., terminate=True)`` of running tasks.
TERMINATE_POLL = 1.0
#: Seconds a child gets to obey a cold stop before it is killed.
COLD_GRACE = 5.0
#: A child that dies younger than this is restarted with a growing delay.
QUICK_DEATH = 2.0


@dataclass(slots=True, eq=False)
class _Child:
    slot: int
    process: BaseProcess
    conn: Connection
    hostname: str
    started: float
    #: What the child prefetched and never started, as far as it told.
    ledger: PrefetchLedger
    tasks: dict[str, RunningTask] = field(default_factory=dict)
    stop_sent: bool | None = None  # None: not asked; False: warm; True: cold


class Supervisor:
    """Run ``concurrency`` child processes consuming ``queues`` of ``app`` until stopped.

    :meth:`run` blocks until a shutdown completes and returns the exit code (0 for a
    requested stop). Must be called from the main thread (it installs signal handlers).
    """

    def __init__(
        self,
        app: Conveyor,
        *,
        concurrency: int | None = None,
        threads: int | None = None,
        queues: list[str] | None = None,
        prefetch_multiplier: int | None = None,
        max_tasks_per_child: int | None = None,
        max_memory_per_child: int | None = None,
        hostname: str | None = None,
        shutdown_timeout: float | None = None,
        terminate_grace: float = 5.0,
        app_spec: str | None = None,
        beat: bool = False,
        runner_class: type[TaskRunner] | None = None,
        autoscale: tuple[int, int] | None = None,
        metrics_port: int | None = None,
        metrics_host: str = "127.0.0.1",
    ) -> None:
        if scheme_of(app.broker_url) == "memory":
            raise ConfigurationError(
                "the memory:// broker lives in one process and cannot feed child processes: "
                "use --pool solo, or a sqlite:// or redis:// broker"
            )
        conf = app.conf
        self.app = app
        self.concurrency = concurrency or conf.worker_concurrency or os.cpu_count() or 1
        self.threads = threads or conf.worker_threads or 1
        self.queues = list(queues or [conf.task_default_queue])
        self.prefetch_multiplier = prefetch_multiplier or conf.worker_prefetch_multiplier
        self.max_tasks_per_child = max_tasks_per_child or conf.worker_max_tasks_per_child
        self.max_memory_per_child = max_memory_per_child or conf.worker_max_memory_per_child
        self.hostname = hostname or default_hostname()
        self.shutdown_timeout = float(shutdown_timeout or conf.worker_shutdown_timeout)
        self.terminate_grace = terminate_grace
        self.app_spec = app_spec
        self.beat = beat
        self.runner_class = runner_class
        self._context: BaseContext
        if "fork" in multiprocessing.get_all_start_methods():
            self._context = multiprocessing.get_context("fork")
        elif app_spec is not None:
            self._context = multiprocessing.get_context("spawn")
        else:
            raise ConfigurationError("this platform cannot fork: start the worker with -A")
        #: Rate limits are per worker: one table of start times for all children.
        self._rate_limiter = SharedRateLimiter.for_app(app, self._context)
        self._lost_tasks = LostTasks(app, TaskRunner(app, self.hostname))
        self._children: dict[int, _Child] = {}
        self._restart_at: dict[int, float] = {}
        self._quick_deaths: dict[int, int] = {}
        self._signals = SignalCounter()
        self._handled_signals = 0
        self._stopping = False
        self._cold = False
        self._stop_deadline = 0.0
        self._kill_deadline = 0.0
        self._next_terminate_poll = 0.0
        self._wake_r = -1
        self._wake_w = -1
        self._beat: BeatProcess | None = None
        #: Slots stopped on purpose (pool_shrink, autoscale): not restarted.
        self._retiring: set[int] = set()
        self._node_control = NodeControl(self)
        self._autoscaler: Autoscaler | None = None
        if autoscale is not None:
            high, low = autoscale
            self.concurrency = low
            self._autoscaler = Autoscaler(self, high, low, conf.worker_autoscale_keepalive)
        #: Serves /metrics from this loop (no thread: the supervisor forks).
        self._metrics = (
            SupervisorMetrics(app, self.hostname, metrics_host, metrics_port, self._slots)
            if metrics_port is not None
            else None
        )

    # -- main loop -----------------------------------------------------------------------
    def run(self, started: Callable[[], None] | None = None) -> int:
        """``started`` is called once the first children were forked."""
        self.app.broker.time()  # fail fast, with a clear error, if the broker is unreachable
        if self.app.broker.limits is None:  # before forking children that could not run
            refuse_concurrency_limits(self.app)
        if self._context.get_start_method() == "fork":
            # Built (not connected) once here, so the forked children share its modules and
            # objects instead of each importing and building a private copy on its first
            # lease.
            self.app.settlement  # noqa: B018 - the property builds it
        hooks = self.app.hooks
        if hooks.worker_start:
            call_each(hooks.worker_start, self)
        self._install_signals()
        self._node_control.start()
        try:
            for slot in range(1, self.concurrency + 1):
                self._spawn(slot)
            if self.beat:
                self._beat = BeatProcess(
                    self._context, self._target_app(), f"{self.hostname}/beat", self._inherited_fds
                )
                self._beat.spawn()
            if started is not None:
                try:
                    started()
                except Exception:  # a start-up check must not stop a worker whose children run
                    logger.exception("a start-up check failed")
            beat = self._beat
            while (
                self._children
                or self._restart_at
                or not self._stopping
                or (beat is not None and beat.process is not None)
            ):
                self._tick()
        finally:
            self._restore_signals()
            if self._metrics is not None:
                self._metrics.close()
        if hooks.worker_stop:
            call_each(hooks.worker_stop, self)
        logger.info("worker %s stopped", self.hostname)
        return 0

    def _tick(self) -> None:
        waitables: list[Connection | int] = [self._wake_r]
        for child in self._children.values():
            waitables += (child.conn, child.process.sentinel)
        if self._beat is not None and self._beat.process is not None:
            waitables.append(self._beat.process.sentinel)
        if self._metrics is not None:
            waitables.append(self._metrics.fileno())
        ready = wait(waitables, self._wait_timeout())
        if self._wake_r in ready:
            with contextlib.suppress(OSError):
                while os.read(self._wake_r, 512):
                    pass
        for child in list(self._children.values()):
            if child.conn in ready:
                self._read(child)
        if self._metrics is not None and self._metrics.fileno() in ready:
            self._metrics.handle()
        self._handle_signals()
        self._reap()
        now = time.monotonic()
        self._enforce_limits(now)
        self._poll_terminates(now)
        self._handle_deadlines(now)
        self._restart_due(now)
        if not self._stopping:
            self._node_control.poll(now)
            if self._autoscaler is not None:
                self._autoscaler.tick(now)
        if self._beat is not None:
            self._beat.check(now, stopping=self._stopping)

    def _wait_timeout(self) -> float:
        now = time.monotonic()
        due = [now + 1.0]
        for child in self._children.values():
            for task in child.tasks.values():
                if task.time_limit:
                    due.append(task.started + task.time_limit)
                if task.terminate_at is not None:
                    due.append(task.terminate_at)
            if child.tasks:
                due.append(self._next_terminate_poll)
        due += self._restart_at.values()
        if self._beat is not None and self._beat.restart_at is not None:
            due.append(self._beat.restart_at)
        if self._stopping:
            due.append(self._kill_deadline if self._cold else self._stop_deadline)
        return max(0.0, min(due) - now)

    # -- children ------------------------------------------------------------------------
    def _inherited_fds(self) -> list[int]:
        """Descriptors a forked child must close: it must not hold the supervisor's ends."""
        if self._context.get_start_method() != "fork":
            return []
        metrics = [self._metrics.fileno()] if self._metrics is not None else []
        children = (c.conn.fileno() for c in self._children.values())
        return [self._wake_r, self._wake_w, *metrics, *children]

    def _spawn(self, slot: int) -> None:
        parent_conn, child_conn = self._context.Pipe()
        close_fds = [*self._inherited_fds(), parent_conn.fileno()]
        ledger = PrefetchLedger(self._context)
        options = ChildOptions(
            slot=slot,
            hostname=f"{self.hostname}/{slot}",
            queues=self.queues,
            threads=self.threads,
            prefetch_multiplier=self.prefetch_multiplier,
            max_tasks=self.max_tasks_per_child,
            max_memory_kib=self.max_memory_per_child,
            shutdown_timeout=self.shutdown_timeout,
            close_fds=close_fds if self._context.get_start_method() == "fork" else [],
            log_level=logging.getLogger().getEffectiveLevel(),
            runner_class=self.runner_class,
            rate_limiter=self._rate_limiter,
            prefetch_ledger=ledger.memory,
        )
        process = self._context.Process(  # type: ignore[attr-defined]  # BaseContext stubs lack Process
            target=run_child,
            args=(self._target_app(), options, child_conn),
            name=f"worker-{slot}",
            daemon=False,
        )
        # What is alive now (the app, its modules) stays shared with a forked child: the
        # collector never visits frozen objects, and a full collection in the child would
        # otherwise write to every object's header, copying all their pages (~16 MiB).
        gc.freeze()
        process.start()
        child_conn.close()
        self._children[slot] = _Child(
            slot, process, parent_conn, options.hostname, time.monotonic(), ledger
        )
        logger.debug("started child %d (pid %s)", slot, process.pid)

    def _target_app(self) -> Conveyor | str:
        """The app for a child: the object when forking, its spec when spawning."""
        if self._context.get_start_method() == "fork":
            return self.app
        assert self.app_spec is not None
        return self.app_spec

    def _read(self, child: _Child) -> None:
        """Take in every report waiting in the child's pipe."""
        try:
            while child.conn.poll():
                self._on_report(child, child.conn.recv())
        except (EOFError, OSError):
            pass  # the child is gone; _reap deals with it

    def _on_report(self, child: _Child, report: Report) -> None:
        match report:
            case ("start", task_id, fields, acks_late, time_limit):
                child.tasks[task_id] = RunningTask(
                    task_id, Delivery(*fields), bool(acks_late), time_limit, time.monotonic()
                )
            case ("end", task_id):
                child.tasks.pop(task_id, None)
            case ("running", running):
                for task_id, task in list(child.tasks.items()):
                    if not task.one_by_one and task_id not in running:
                        del child.tasks[task_id]
                now = time.monotonic()
                for task_id, fields in running.items():
                    if task_id not in child.tasks:
                        child.tasks[task_id] = RunningTask(
                            task_id, Delivery(*fields), True, None, now, one_by_one=False
                        )
            case ("ready", pid):
                logger.debug("child %d (pid %s) ready", child.slot, pid)
            case ("figures", delta):
                if self._metrics is not None:
                    self._metrics.merge(delta)

    def _slots(self) -> tuple[int, int, int]:
        """Child processes, task slots and busy slots (for the metrics)."""
        busy = sum(len(child.tasks) for child in self._children.values())
        return len(self._children), self.concurrency * self.threads, busy

    def _reap(self) -> None:
        for child in list(self._children.values()):
            if child.process.is_alive():
                continue
            self._read(child)
            child.process.join()
            del self._children[child.slot]
            child.conn.close()
            self._lost(child, killed=False)
            self._schedule_restart(child)

    def _lost(self, child: _Child, *, killed: bool) -> None:
        """Account for the tasks of a child that exited, died, or was killed."""
        tasks, child.tasks = list(child.tasks.values()), {}
        self._lost_tasks.child_ended(
            child.slot,
            child.process,
            tasks,
            child.ledger.unstarted(),
            killed=killed,
            stopping=self._stopping,
            cold=self._cold,
        )

    def _schedule_restart(self, child: _Child) -> None:
        if self._stopping:
            return
        if child.slot in self._retiring:
            self._retiring.discard(child.slot)
            return
        if time.monotonic() - child.started < QUICK_DEATH:
            self._quick_deaths[child.slot] = self._quick_deaths.get(child.slot, 0) + 1
        else:
            self._quick_deaths.pop(child.slot, None)
        deaths = self._quick_deaths.get(child.slot, 0)
        delay = 0.0 if deaths == 0 else min(0.25 * 2 ** (deaths - 1), 10.0)
        self._restart_at[child.slot] = time.monotonic() + delay

    def _restart_due(self, now: float) -> None:
        if self._stopping:
            self._restart_at.clear()
            return
        for slot, due in list(self._restart_at.items()):
            if now >= due:
                del self._restart_at[slot]
                self._spawn(slot)

    def _kill(self, child: _Child) -> None:
        """SIGKILL a child and wait until it is gone, taking in its last reports."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.process.pid or 0, signal.SIGKILL)
        child.process.join(10)
        self._read(child)

    # -- limits --------------------------------------------------------------------------
    def _enforce_limits(self, now: float) -> None:
        for child in list(self._children.values()):
            for task in list(child.tasks.values()):
                if task.time_limit and now - task.started >= task.time_limit:
                    logger.error(
                        "task %s exceeded its hard time limit (%ss): killing child %d (pid %s)",
                        task.id,
                        task.time_limit,
                        child.slot,
                        child.process.pid,
                    )
                    error = TimeLimitExceeded(f"hard time limit ({task.time_limit}s) exceeded")
                    self._kill_for(child, task, error, DeadLetterReason.TIME_LIMIT)
                    break
                if task.terminate_at is not None and now >= task.terminate_at:
                    logger.warning(
                        "task %s still running %ss after terminate: killing child %d (pid %s)",
                        task.id,
                        self.terminate_grace,
                        child.slot,
                        child.process.pid,
                    )
                    self._kill_for(child, task, TaskRevokedError("terminated"), None)
                    break

    def _kill_for(
        self, child: _Child, task: RunningTask, error: BaseException, reason: str | None
    ) -> None:
        self._kill(child)
        if child.tasks.pop(task.id, None) is not None:  # it did not finish meanwhile
            self._fail(task, error, reason)
        self._children.pop(child.slot, None)
        child.conn.close()
        self._lost(child, killed=True)
        if not self._stopping and child.slot not in self._retiring:
            self._restart_at[child.slot] = time.monotonic()

    def _poll_terminates(self, now: float) -> None:
        if now < self._next_terminate_poll:
            return
        self._next_terminate_poll = now + TERMINATE_POLL
        running = {
            task.id: (child, task)
            for child in self._children.values()
            for task in child.tasks.values()
            if task.terminate_at is None
        }
        if not running:
            return
        keys = [f"terminate:{task_id}" for task_id in running]
        try:
            wanted = self.app.broker.revoked(keys)
        except ConveyorError as exc:
            logger.error("could not check revocations: %s", exc)
            return
        for key in wanted:
            child, task = running[key.removeprefix("terminate:")]
            task.terminate_at = now + self.terminate_grace
            logger.info("terminating task %s in child %d", task.id, child.slot)
            with contextlib.suppress(OSError, ValueError):
                child.conn.send(("terminate", task.id))

    def _fail(self, task: RunningTask, error: BaseException, reason: str | None = None) -> None:
        self._lost_tasks.fail(task, error, reason)

    def _broker_call(self, action: Callable[[], object], what: str) -> None:
        try:
            action()
        except ConveyorError as exc:
            logger.error("could not %s: %s", what, exc)

    # -- shutdown ------------------------------------------------------------------------
    def _install_signals(self) -> None:
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        self._signals.install()

    def _restore_signals(self) -> None:
        signal.set_wakeup_fd(-1)
        self._signals.restore()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _handle_signals(self) -> None:
        count = self._signals.count
        if count == self._handled_signals:
            return
        first = self._handled_signals == 0
        self._handled_signals = count
        if first:
            self._warm_stop()
        if count >= 2:
            self._cold_stop("second signal")

    def _warm_stop(self) -> None:
        self._stopping = True
        self._stop_deadline = time.monotonic() + self.shutdown_timeout
        logger.warning(
            "warm shutdown: children finish their running tasks within %ss (signal again for cold)",
            self.shutdown_timeout,
        )
        self._send_stop(cold=False)
        if self._beat is not None:
            self._beat.signal(signal.SIGTERM)

    def _cold_stop(self, why: str) -> None:
        if self._cold:
            return
        self._stopping = self._cold = True
        self._kill_deadline = time.monotonic() + COLD_GRACE
        logger.warning("cold shutdown (%s): returning unfinished messages", why)
        self._send_stop(cold=True)

    def _send_stop(self, *, cold: bool) -> None:
        for child in self._children.values():
            if child.stop_sent is cold or child.stop_sent is True:
                continue
            child.stop_sent = cold
            with contextlib.suppress(OSError, ValueError):
                child.conn.send(("stop", cold))

    def _handle_deadlines(self, now: float) -> None:
        if not self._stopping:
            return
        if not self._cold and now >= self._stop_deadline:
            self._cold_stop(f"shutdown timeout of {self.shutdown_timeout}s passed")
        elif self._cold and now >= self._kill_deadline:
            for child in list(self._children.values()):
                logger.error(
                    "child %d (pid %s) ignored the stop: killed", child.slot, child.process.pid
                )
                self._kill(child)
            self._reap()
            if self._beat is not None:
                self._beat.signal(signal.SIGKILL)

    # -- pool size (remote control, autoscale) ----------------------------------------------
    def size(self) -> int:
        """Children running or due to restart, not counting those being retired."""
        slots = set(self._children) | set(self._restart_at)
        return len(slots - self._retiring)

    def idle(self) -> int:
        """Children that run no task (as far as their reports tell)."""
        return sum(
            1 for c in self._children.values() if not c.tasks and c.slot not in self._retiring
        )

    def grow(self, n: int) -> int:
        """Start ``n`` more children; return the new size."""
        for _ in range(n):
            taken = set(self._children) | set(self._restart_at) | self._retiring
            slot = next(s for s in range(1, len(taken) + 2) if s not in taken)
            self._spawn(slot)
        self.concurrency = self.size()
        return self.concurrency

    def shrink(self, n: int) -> int:
        """Retire ``n`` children (idle ones first; each finishes its tasks); return the new
        size. Raises ControlError below one child."""
        size = self.size()
        if n >= size:
            raise ControlError(f"cannot shrink a pool of {size} by {n}: one child must remain")
        for slot in list(self._restart_at)[:n]:
            del self._restart_at[slot]
            n -= 1
        live = [c for c in self._children.values() if c.slot not in self._retiring]
        live.sort(key=lambda c: (len(c.tasks), -c.slot))
        for child in live[:n]:
            self._retiring.add(child.slot)
            child.stop_sent = False
            with contextlib.suppress(OSError, ValueError):
                child.conn.send(("stop", False))
        self.concurrency = self.size()
        return self.concurrency

    def set_autoscale(self, high: int, low: int) -> None:
        """Start autoscaling within [low, high], or change the bounds."""
        if self._autoscaler is None:
            keepalive = self.app.conf.worker_autoscale_keepalive
            self._autoscaler = Autoscaler(self, high, low, keepalive)
        else:
            self._autoscaler.set_bounds(high, low)

    def request_stop(self, *, cold: bool = False) -> None:
        """Ask for a warm (or cold) shutdown, as SIGTERM would (call from a signal handler
        or the main thread)."""
        self._signals.count += 2 if cold else 1
