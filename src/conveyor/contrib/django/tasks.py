"""The Conveyor tasks that run ``django.tasks`` functions on a Conveyor worker.

Registered as shared tasks when Django loads ``conveyor.contrib.django`` (and found by
``autodiscover_tasks()``), so every worker of the project knows them.
"""

from __future__ import annotations

import asyncio

from django.tasks import TaskContext, TaskResultStatus, task_backends
from django.tasks.signals import task_finished, task_started
from django.utils import timezone
from django.utils.json import normalize_json

from conveyor.exceptions import Retry
from conveyor.message import JSONValue
from conveyor.task import Task, retry_delay, shared_task

from .backend import (
    ARUN_TASK,
    RUN_TASK,
    ConveyorBackend,
    record_attempt,
    record_error,
    resolve_task,
)


class _Run:
    """One attempt of a django task: its TaskResult, kept current for the signals."""

    def __init__(self, conveyor_task: Task[..., object], path: str, alias: str) -> None:
        request = conveyor_task.request
        self.app = conveyor_task.app
        self.task_id = request.id
        self.worker = request.hostname or "eager"
        backend = task_backends[alias]
        if not isinstance(backend, ConveyorBackend):
            raise TypeError(f"task backend {alias!r} is not a ConveyorBackend")
        self.backend = backend
        task = resolve_task(path, self.app)
        self.task = task.using(backend=alias) if task.backend != alias else task
        self.meta = record_attempt(self.app, self.task_id, self.worker)
        self.retries = request.retries
        self.result = backend.get_result(self.task_id)
        object.__setattr__(self.result, "status", TaskResultStatus.RUNNING)

    def arguments(self) -> tuple[list[object], dict[str, JSONValue]]:
        args: list[object] = list(self.meta.get("args", []))
        if self.task.takes_context:
            args.insert(0, TaskContext(task_result=self.result))
        return args, dict(self.meta.get("kwargs", {}))

    def succeeded(self, value: object) -> JSONValue:
        normalized: JSONValue = normalize_json(value)
        object.__setattr__(self.result, "status", TaskResultStatus.SUCCESSFUL)
        object.__setattr__(self.result, "finished_at", timezone.now())
        object.__setattr__(self.result, "_return_value", normalized)
        return normalized

    def failed(self, exc: Exception) -> BaseException:
        """Record the error; return the exception to raise (a Retry while retries remain)."""
        record_error(self.app, self.task_id, self.meta, exc)
        backend, task = self.backend, self.task
        policy = backend.retry_policy(task)
        if self.retries < policy.max_retries and isinstance(exc, policy.autoretry_for):
            delay = retry_delay(
                self.retries,
                backoff=policy.retry_backoff,
                backoff_max=policy.retry_backoff_max,
                jitter=policy.retry_jitter,
                default_delay=policy.default_retry_delay,
            )
            return Retry(f"Retry in {delay:.3g}s: {exc!r}", exc=exc, when=delay)
        self.result = self.backend.get_result(self.task_id)
        object.__setattr__(self.result, "status", TaskResultStatus.FAILED)
        object.__setattr__(self.result, "finished_at", timezone.now())
        return exc


@shared_task(name=RUN_TASK, bind=True, max_retries=None)
def run_django_task(self: Task[..., object], path: str, alias: str) -> JSONValue:
    """Run the ``django.tasks`` function at ``path`` (see ``ConveyorBackend``)."""
    run = _Run(self, path, alias)
    sender = type(run.backend)
    task_started.send(sender, task_result=run.result)
    args, kwargs = run.arguments()
    try:
        value = run.succeeded(run.task.call(*args, **kwargs))
    except Exception as exc:
        outcome = run.failed(exc)
        if not isinstance(outcome, Retry):
            task_finished.send(sender, task_result=run.result)
        if outcome is exc:
            raise
        raise outcome from exc
    task_finished.send(sender, task_result=run.result)
    return value


@shared_task(name=ARUN_TASK, bind=True, max_retries=None)
async def arun_django_task(self: Task[..., object], path: str, alias: str) -> JSONValue:
    """Run the ``async def`` django task at ``path`` on the worker's event loop."""
    run = await asyncio.to_thread(_Run, self, path, alias)
    sender = type(run.backend)
    await task_started.asend(sender, task_result=run.result)
    args, kwargs = run.arguments()
    try:
        value = run.succeeded(await run.task.acall(*args, **kwargs))
    except Exception as exc:
        outcome = await asyncio.to_thread(run.failed, exc)
        if not isinstance(outcome, Retry):
            await task_finished.asend(sender, task_result=run.result)
        if outcome is exc:
            raise
        raise outcome from exc
    await task_finished.asend(sender, task_result=run.result)
    return value
