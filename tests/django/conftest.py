"""Django test setup: the test project's settings are applied when this directory is
collected (pytest-django needs no global configuration, so the rest of the suite runs with or
without it), and removed from the environment so that other tests' child processes do not
inherit them."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import django
import pytest

from conveyor.app import Conveyor
from conveyor.config import SETTINGS
from conveyor.contrib.django.worker import DjangoTaskRunner
from conveyor.task import shared_tasks
from conveyor.testing import TestWorker

os.environ["DJANGO_SETTINGS_MODULE"] = "tests.django.testproj.settings"
django.setup()
# Configured now; child processes of other tests must not inherit the test project.
del os.environ["DJANGO_SETTINGS_MODULE"]

from .testproj.conveyor import app as project_app  # noqa: E402 - needs the settings


class DjangoTestWorker(TestWorker):
    """The test worker with Django's per-task connection cleanup."""

    def __init__(self, app: Conveyor, **options: Any) -> None:
        super().__init__(app, **options)
        self.runner = DjangoTaskRunner(app, self.hostname)


@pytest.fixture
def app() -> Iterator[Conveyor]:
    """The test project's app on a fresh in-memory broker, results in the database."""
    saved = project_app.conf.explicit()
    # Other test modules create apps too: make the project's the default again, and its
    # shared tasks (bound to the default app at first use) its own.
    project_app.set_default()
    for task in shared_tasks():
        if task.__module__.startswith(("tests.django.", "conveyor.contrib.django")):
            task.bind_app(project_app)
            project_app.register(task)
    project_app.close()
    project_app.conf.broker_url = "memory://"
    project_app.conf.result_backend = "django://"
    yield project_app
    project_app.close()
    changed = set(project_app.conf.explicit()) - set(saved)
    project_app.conf.update({name: SETTINGS[name].default for name in changed}, **saved)


@pytest.fixture
def worker(app: Conveyor, transactional_db: None) -> Iterator[DjangoTestWorker]:
    """An in-process worker of the project app (tasks use the ORM: transactional_db)."""
    running = DjangoTestWorker(app)
    running.start()
    yield running
    running.stop(timeout=10)
