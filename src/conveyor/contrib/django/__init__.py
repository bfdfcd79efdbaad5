"""Conveyor for Django.

Add ``"conveyor.contrib.django"`` to ``INSTALLED_APPS`` and create the project's app in
``proj/conveyor.py``::

    app = Conveyor("proj")
    app.config_from_object("django.conf:settings", namespace="CONVEYOR")
    app.autodiscover_tasks()

What the app brings: tasks sent when the transaction commits (``delay_on_commit()``,
``CONVEYOR_TASK_ENQUEUE_ON_COMMIT``), the ORM result store (``CONVEYOR_RESULT_BACKEND =
"django://"``) with an admin, periodic tasks in the database, a ``django.tasks`` backend
(``conveyor.contrib.django.backend.ConveyorBackend``), system checks and the
``conveyor_worker`` / ``conveyor_beat`` management commands. See docs/django.md.
"""

from __future__ import annotations

from .connections import close_old_connections
from .schedules import install, setup_worker
from .transactions import commit_hook, in_transaction
from .worker import DjangoWorker

__all__ = [
    "DjangoWorker",
    "close_old_connections",
    "commit_hook",
    "in_transaction",
    "install",
    "setup_worker",
]
