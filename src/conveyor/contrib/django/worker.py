"""Running tasks of a Django project: ``django.setup()`` first (:func:`setup_worker`, which
lives in :mod:`.schedules` as beat needs it too), fresh database connections around every task.

A task inherits nothing from the task before it: stale (older than ``CONN_MAX_AGE``) and
broken connections are closed before and after each one, as Django does around each request.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Unpack

from conveyor.worker import Worker
from conveyor.worker.execution import TaskRunner
from conveyor.worker.job import Job, Outcome
from conveyor.worker.worker import WorkerOptions

from .connections import (
    aclose_old_connections,
    close_idle_connections,
    close_old_connections,
    track,
)
from .schedules import setup_worker

if TYPE_CHECKING:
    from conveyor.app import Conveyor

__all__ = [
    "DjangoTaskRunner",
    "DjangoWorker",
    "aclose_old_connections",
    "close_idle_connections",
    "close_old_connections",
    "setup_worker",
    "worker_setup",
]


class DjangoTaskRunner(TaskRunner):
    """A TaskRunner that closes stale and broken connections before and after each task."""

    def run(self, job: Job) -> Outcome:
        close_old_connections()
        try:
            return super().run(job)
        finally:
            close_old_connections()
            track()

    async def arun(self, job: Job) -> Outcome:
        await aclose_old_connections()
        try:
            return await super().arun(job)
        finally:
            await aclose_old_connections()


class DjangoWorker(Worker):
    """The in-process worker with Django set up and connections cleaned around each task."""

    def __init__(self, app: Conveyor, **options: Unpack[WorkerOptions]) -> None:
        setup_worker(app)
        super().__init__(app, **options)
        self.runner = DjangoTaskRunner(app, self.hostname)


def worker_setup(app: Conveyor) -> type[TaskRunner] | None:
    """The ``conveyor.worker_setup`` entry point (see :func:`conveyor.loading.prepare_app`):
    for a Django project - one whose app module set ``DJANGO_SETTINGS_MODULE``, as with
    Celery - :func:`setup_worker` and run tasks with :class:`DjangoTaskRunner`."""
    if not os.environ.get("DJANGO_SETTINGS_MODULE"):
        return None
    setup_worker(app)
    return DjangoTaskRunner
