"""Eager mode: running a task inline, as a worker would (``task_always_eager``, ``Task.apply``)."""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING

from ..message import Envelope, decode_envelope
from ..middleware import call_each
from .execution import TaskRunner
from .hooks import call_outcome_hooks, has_outcome_hooks
from .job import Action, Job, Outcome
from .settle import Settler

if TYPE_CHECKING:
    from ..app import Conveyor


def run_eager(app: Conveyor, envelope: Envelope, body: bytes) -> None:
    """Run a task inline as a worker would.

    The envelope was encoded (arguments serialized, size checked) before this is called.
    Retries run again at once, ignoring their delay; results are stored as usual.
    """
    runner = TaskRunner(app, hostname="eager")
    settler = Settler(app, propagate=True)  # no message: a follow-up's error is the caller's
    hooks = app.hooks  # the app's middleware and signals (task_prerun, ...), as in a worker
    while True:
        prepared = runner.prepare_envelope(decode_envelope(body, signer=runner.signer), None)
        if isinstance(prepared, Outcome):
            outcome = prepared
            if has_outcome_hooks(hooks):
                call_outcome_hooks(hooks, outcome)
        else:
            record = runner.started_record(prepared)
            if record is not None:
                app.results.store([record])
            if hooks.before_process and prepared.once is None:
                call_each(hooks.before_process, prepared)
            outcome = _run_inline(runner, prepared)
            if hooks.after_process and not outcome.skipped:
                call_each(hooks.after_process, prepared, outcome)
            if has_outcome_hooks(hooks):
                call_outcome_hooks(hooks, outcome, prepared)
        settler.settle([outcome])
        if outcome.action is Action.RETRY and outcome.retry_message is not None:
            body = outcome.retry_message.body
            continue
        if outcome.error is not None and app.conf.task_eager_propagates:
            raise outcome.error
        return


def _run_inline(runner: TaskRunner, job: Job) -> Outcome:
    if not job.task.is_async:
        return runner.run(job)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(runner.arun(job))
    # Called from inside an event loop: run the coroutine on a private loop in a thread.
    box: list[Outcome] = []
    thread = threading.Thread(target=lambda: box.append(asyncio.run(runner.arun(job))))
    thread.start()
    thread.join()
    return box[0]
