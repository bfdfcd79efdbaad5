"""Task hooks as the worker calls them, and the worker's built-in middleware."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from .. import states
from ..middleware import Hooks, Middleware, call_each
from ..utils.log_direct import DirectLine
from .job import Action, Job, Outcome

if TYPE_CHECKING:
    from ..app import Conveyor

logger = logging.getLogger("conveyor.worker")
#: The per-task outcome lines (a logger of their own, so error trackers can skip the
#: failure lines they report with more context).
task_logger = logging.getLogger("conveyor.worker.tasks")
_succeeded = DirectLine(task_logger)
_SUCCEEDED = "%s[%s] succeeded in %.3fs: %.200r"


def worker_hooks(app: Conveyor, *internal: Middleware) -> Hooks:
    """The hooks a worker calls: its own middleware first, then the app's."""
    builtin: list[Middleware] = [TaskLog()] if app.conf.worker_log_tasks else []
    return Hooks([*builtin, *internal, *app.middleware])


def has_outcome_hooks(hooks: Hooks) -> bool:
    """Whether :func:`call_outcome_hooks` has anything to call."""
    return bool(hooks.on_retry or hooks.on_dead_letter or hooks.on_revoked or hooks.on_skip)


def call_outcome_hooks(hooks: Hooks, outcome: Outcome, job: Job | None = None) -> None:
    """Call the hook that describes what happens to ``outcome``'s message, if any:
    ``on_skip``, ``on_dead_letter``, ``on_revoked`` or (for a task that ran: ``job``)
    ``on_retry``. Called before the outcome is settled."""
    envelope = job.envelope if job is not None else outcome.envelope
    if outcome.skipped:
        if hooks.on_skip and envelope is not None:
            call_each(hooks.on_skip, envelope, outcome)
    elif outcome.action is Action.DEAD:
        if hooks.on_dead_letter:
            call_each(hooks.on_dead_letter, envelope, outcome)
    elif outcome.state == states.REVOKED:
        if hooks.on_revoked and envelope is not None:
            call_each(hooks.on_revoked, envelope, outcome)
    elif outcome.action is Action.RETRY and job is not None and hooks.on_retry:
        call_each(hooks.on_retry, job, outcome)


class TaskLog(Middleware):
    """One log line per task that ran to a success or a failure (``worker_log_tasks``)."""

    def after_process(self, job: Job, outcome: Outcome) -> None:
        log_outcome(job, outcome)


def _fields(job: Job) -> dict[str, object]:
    """The task fields of a task's log line (shown by the JSON log format)."""
    envelope = job.envelope
    return {
        "task_id": envelope.id,
        "task_name": envelope.task,
        "queue": envelope.queue,
        "retries": envelope.retries,
    }


def log_outcome(job: Job, outcome: Outcome) -> None:
    """The line :class:`TaskLog` logs (the supervisor logs it for the tasks it fails)."""
    if outcome.state == states.SUCCESS:
        if not task_logger.isEnabledFor(logging.INFO):
            return
        args = (job.label, job.envelope.id, outcome.runtime, outcome.retval)
        handler = _succeeded.handler()
        if handler is not None:  # the default text setup: written without a LogRecord
            _succeeded.write(handler, _SUCCEEDED, *args)
        else:
            task_logger.info(_SUCCEEDED, *args, extra=_fields(job))
    elif outcome.state == states.FAILURE and outcome.action is Action.ACK:
        task_logger.error(
            "%s[%s] failed in %.3fs: %r",
            job.label,
            job.envelope.id,
            outcome.runtime,
            outcome.error,
            extra=_fields(job),
        )
