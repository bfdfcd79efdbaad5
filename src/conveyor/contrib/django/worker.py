"""Running tasks of a Django project: ``django.setup()`` first, fresh database connections
around every task.

A task inherits nothing from the task before it: stale (older than ``CONN_MAX_AGE``) and
broken connections are closed before and after each one, as Django does around each request.
"""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING, Any

from conveyor.worker import Worker
from conveyor.worker.execution import TaskRunner
from conveyor.worker.job import Job, Outcome

from .connections import track

if TYPE_CHECKING:
    from conveyor.app import Conveyor

_fork_hook_registered = False


def close_old_connections() -> None:
    """Close this thread's connections that are broken or past ``CONN_MAX_AGE``.

    Skipped on a thread running an event loop: Django forbids it there, and async tasks
    reach the database through ``sync_to_async``, whose thread :func:`aclose_old_connections`
    takes care of."""
    if _in_event_loop():
        return
    from django.db import close_old_connections as close

    close()


async def aclose_old_connections() -> None:
    """:func:`close_old_connections` on the thread ``sync_to_async`` runs the ORM on."""
    from asgiref.sync import sync_to_async
    from django.db import close_old_connections as close

    await sync_to_async(close, thread_sensitive=True)()


def _in_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def setup_worker(app: Conveyor | None = None) -> None:
    """Prepare this process to run a Django project's tasks. Call it before ``app.finalize()``
    (which imports the tasks modules) in workers, beat and any process running tasks.

    It calls ``django.setup()`` if needed (``DJANGO_SETTINGS_MODULE`` must be set), installs
    the transaction hooks on ``app`` (or on every app) and closes this process's connections,
    so that child processes forked later never share a socket with it. Tasks then run with
    :class:`DjangoTaskRunner` (which ``conveyor worker`` uses for Django projects).
    """
    import django.apps

    from conveyor.app import registered_apps

    from .transactions import install

    if not django.apps.apps.ready:
        django.setup()
    for each in [app] if app is not None else registered_apps():
        install(each)
    close_idle_connections()
    global _fork_hook_registered
    if not _fork_hook_registered and hasattr(os, "register_at_fork"):
        _fork_hook_registered = True
        os.register_at_fork(before=close_idle_connections)


def close_idle_connections() -> None:
    """Close this thread's open connections that are not inside an atomic block."""
    from django.db import connections

    for conn in connections.all(initialized_only=True):
        if conn.connection is not None and not conn.in_atomic_block:
            conn.close()


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

    def __init__(self, app: Conveyor, **options: Any) -> None:
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
