"""Outcomes the supervisor records for tasks whose child process cannot: it was killed for a
hard time limit or a terminate past its grace, or it died running an ``acks_late=False``
task (acked early, so no redelivery will record anything)."""

from __future__ import annotations

import logging
import signal
import time
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING

from .. import states
from ..brokers.base import Delivery
from ..exceptions import ConveyorError, WorkerLostError
from .execution import TaskRunner
from .hooks import call_outcome_hooks, has_outcome_hooks, log_outcome
from .job import Action, Job, Outcome
from .settle import Settler

if TYPE_CHECKING:
    from ..app import Conveyor

logger = logging.getLogger("conveyor.supervisor")


@dataclass(slots=True)
class RunningTask:
    """A task a child reported as started (``one_by_one``) or as running in a snapshot."""

    id: str
    delivery: Delivery
    acks_late: bool
    time_limit: float | None
    started: float
    one_by_one: bool = True
    terminate_at: float | None = None


class LostTasks:
    """Records ``error`` as the end of a task and settles its message, unless the child
    finished it after all. Errors are logged: the supervisor must go on."""

    def __init__(self, app: Conveyor, runner: TaskRunner) -> None:
        self.app = app
        self.runner = runner
        self.settler = Settler(app)

    def child_ended(
        self,
        slot: int,
        process: BaseProcess,
        tasks: list[RunningTask],
        unstarted: list[Delivery],
        *,
        killed: bool,
        stopping: bool,
        cold: bool,
    ) -> None:
        """Account for the tasks of a child that exited, died, or was killed, and give
        back the messages it prefetched and never started."""
        code = process.exitcode
        if killed:
            pass  # the reason was logged when it was killed
        elif code and code < 0:
            name = signal.Signals(-code).name
            logger.error("child %d (pid %s) died: %s", slot, process.pid, name)
        elif code:
            logger.error("child %d (pid %s) exited with code %d", slot, process.pid, code)
        elif not stopping:
            logger.info("child %d (pid %s) exited (recycled)", slot, process.pid)
        innocent = [t.delivery for t in tasks if t.acks_late and (killed or cold)]
        if innocent or unstarted:
            try:
                self.app.broker.release(innocent + unstarted)
            except ConveyorError as exc:
                logger.error("could not release leases: %s", exc)
            if unstarted:
                logger.info(
                    "gave back %d message(s) child %d prefetched and never started",
                    len(unstarted),
                    slot,
                )
        for task in tasks:
            if not task.acks_late:
                self.fail(
                    task, WorkerLostError(f"worker process ended mid-task (exit code {code})")
                )
            elif not innocent:
                logger.warning(
                    "task %s was running in child %d: redelivered once its lease expires%s",
                    task.id,
                    slot,
                    "" if task.one_by_one else " (unless it finished since the last report)",
                )

    def fail(self, task: RunningTask, error: BaseException, reason: str | None = None) -> None:
        """Record ``error`` as the end of ``task`` and settle its message (``reason``:
        dead-letter it)."""
        prepared = self.runner.prepare(task.delivery)
        job: Job | None = None
        if isinstance(prepared, Job):
            job = prepared
            job.started_at = time.time()
            outcome = self.runner.finish(job, None, error, time.monotonic() - task.started)
            if self.app.conf.worker_log_tasks:
                log_outcome(job, outcome)
        else:
            outcome = prepared
        if not task.acks_late:
            outcome.delivery = None  # acked when it started (at-most-once)
        elif reason is not None and outcome.action is Action.ACK:
            outcome.action, outcome.reason, outcome.detail = Action.DEAD, reason, str(error)
        try:
            self._settle(task.id, outcome, job)
        except ConveyorError as exc:
            logger.error("could not record the outcome: %s", exc)

    def _settle(self, task_id: str, outcome: Outcome, job: Job | None) -> None:
        existing = self.app.results.get(task_id)
        if existing is not None and existing.state in states.READY_STATES:
            return  # the child finished it after all
        hooks = self.app.hooks
        if has_outcome_hooks(hooks):
            call_outcome_hooks(hooks, outcome, job)
        self.settler.settle([outcome])
