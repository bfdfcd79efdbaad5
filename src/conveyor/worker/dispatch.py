"""Starting admitted tasks: arm their time limits, run them (sync tasks on the executor,
async tasks on the event loop) between the ``before_process`` and ``after_process`` hooks,
and hand their outcomes over to be settled.

A sync task that waited for a free thread longer than ``RECHECK_REVOKED_AFTER`` (behind
others leased with it, ``--prefetch`` > 1) asks the broker again whether it was revoked
meanwhile, so a revoke also stops a message that was leased but had not started; a task
that starts at once costs nothing more.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

from ..exceptions import ConveyorError, TaskRevokedError
from ..middleware import Hooks, call_each
from .execution import TaskRunner
from .hooks import call_outcome_hooks, has_outcome_hooks
from .inflight import InFlight, Running
from .job import Job, Outcome
from .pools import STRAY, EventLoopThread, TaskExecutor
from .prefetch import RuntimeEstimate
from .timelimits import TimeLimits

if TYPE_CHECKING:
    from ..app import Conveyor

logger = logging.getLogger("conveyor.worker")

#: Seconds a leased sync task may wait for a thread before it re-checks its revocation.
RECHECK_REVOKED_AFTER = 0.01


class Dispatcher:
    """Runs admitted tasks and submits their outcomes to ``inflight``."""

    def __init__(
        self,
        app: Conveyor,
        inflight: InFlight,
        runner: TaskRunner,
        hooks: Hooks,
        executor: TaskExecutor,
        loop: EventLoopThread,
        timers: TimeLimits,
        on_task_start: Callable[[Job], None] | None = None,
        runtimes: RuntimeEstimate | None = None,
    ) -> None:
        self.app = app
        self.inflight = inflight
        self.runner = runner
        self.hooks = hooks
        self.executor = executor
        self.loop = loop
        self.timers = timers
        self.on_task_start = on_task_start
        #: Learns how long the tasks of each queue run (adaptive prefetch), if set.
        self.runtimes = runtimes
        #: Task name -> (soft, hard) time limits set by remote control (``time_limit``).
        self.time_limits: dict[str, tuple[float | None, float | None]] = {}

    def start(self, control: Running) -> None:
        job = control.job
        if self.time_limits:  # changed by remote control: they win over the message's
            limits = self.time_limits.get(job.task.name)
            if limits is not None:
                job.envelope.soft_time_limit, job.envelope.time_limit = limits
        self.timers.arm(control)
        if self.on_task_start is not None:
            self.on_task_start(job)
        if job.task.is_async:
            self.loop.submit(self.run_async(control))
        else:
            self.executor.submit(control, partial(self.run_sync, control))

    def interrupt(self, control: Running, exc_type: type[BaseException]) -> None:
        """Raise ``exc_type`` inside the running task (executor) or cancel it (async)."""
        if control.loop_task is not None:
            self.loop.interrupt(control, exc_type)
        else:
            self.executor.interrupt(control, exc_type)

    def submit(self, outcome: Outcome, control: Running | None) -> None:
        """Hand over the outcome of a message that did not run (after its hook)."""
        if control is not None and self.runner.flow is not None:
            self.runner.flow.finished(control.job.envelope.id)
        if has_outcome_hooks(self.hooks):  # read each time: signals can connect later
            call_outcome_hooks(self.hooks, outcome)
        self.inflight.submit(outcome, control)

    def run_sync(self, control: Running) -> None:
        job = control.job
        if self._revoked_while_waiting(control):
            self.submit(self.runner.revoked_outcome(job.envelope, job.delivery), control)
            return
        if self.hooks.before_process and job.once is None:
            call_each(self.hooks.before_process, job)
        outcome: Outcome | None = None
        try:
            try:
                with control.lock:
                    control.thread_id = threading.get_ident()
                    control.since = time.monotonic()
                    control.active = True
                outcome = self.runner.run(job)
            finally:
                with control.lock:
                    control.active = False
        except STRAY:
            pass  # a time limit or terminate that landed just after the task returned
        except BaseException as exc:
            outcome = self.runner.finish(job, None, exc, 0.0)
        if outcome is None:
            error = (control.interrupted or TaskRevokedError)(f"task {job.envelope.id} interrupted")
            outcome = self.runner.finish(job, None, error, 0.0)
        self._finished(control, outcome)

    def _revoked_while_waiting(self, control: Running) -> bool:
        if time.monotonic() - control.admitted < RECHECK_REVOKED_AFTER:
            return False
        task_id = control.job.envelope.id
        try:
            return task_id in self.app.broker.revoked([task_id])
        except ConveyorError as exc:  # run it: the lease-time check passed
            logger.error("could not re-check the revocation of %s: %s", task_id, exc)
            return False

    async def run_async(self, control: Running) -> None:
        job = control.job
        control.loop_task = asyncio.current_task()
        if self.hooks.before_process and job.once is None:
            call_each(self.hooks.before_process, job)
        with control.lock:
            control.since = time.monotonic()
            control.active = True
        try:
            outcome = await self.runner.arun(job)
        finally:
            with control.lock:  # not while its STARTED record is being stored
                control.active = False
        self._finished(control, outcome)

    def _finished(self, control: Running, outcome: Outcome) -> None:
        """Call the hooks of a task that ran (or was skipped), then hand its outcome over."""
        job = control.job
        if self.runtimes is not None and job.delivery is not None:
            self.runtimes.observe(job.delivery.queue, time.monotonic() - control.since)
            self.runtimes.ended.add(job.task.name)
        if self.runner.flow is not None:
            self.runner.flow.finished(job.envelope.id)
        if self.hooks.after_process and not outcome.skipped:
            call_each(self.hooks.after_process, job, outcome)
        if has_outcome_hooks(self.hooks):
            call_outcome_hooks(self.hooks, outcome, job)
        self.inflight.submit(outcome, control)
