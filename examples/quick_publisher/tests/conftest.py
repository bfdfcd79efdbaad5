"""Unit tests of the QuickPublisher example: ``.venv/bin/pytest examples/quick_publisher/tests``.

Django is configured here (not in the repository's pytest settings), so the rest of the suite
never sees these settings. Tasks run on an in-process worker over the in-memory broker.
"""

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import django
import pytest

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))
os.environ["DJANGO_SETTINGS_MODULE"] = "quick_publisher.settings.test"
VAR_DIR = tempfile.mkdtemp(prefix="quick-publisher-tests-")  # database, uploads
os.environ["QUICK_PUBLISHER_VAR"] = VAR_DIR
for name in ("CONVEYOR_BROKER_URL", "CONVEYOR_RESULT_BACKEND"):
    os.environ.pop(name, None)  # the tests use the in-memory broker, whatever the shell says
django.setup()  # pytest-django only sets Django up by itself for settings it found at start


@pytest.fixture(scope="session", autouse=True)
def _remove_var_dir() -> Iterator[None]:
    yield
    shutil.rmtree(VAR_DIR, ignore_errors=True)


@pytest.fixture
def conveyor_app():  # overrides the fixture of conveyor's pytest plugin
    from quick_publisher.conveyor import app

    return app


@pytest.fixture(autouse=True)
def _empty_queue(conveyor_app):
    """Every test starts with an empty queue (the in-memory broker lives as long as the app)."""
    conveyor_app.broker.purge([conveyor_app.conf.task_default_queue])


@pytest.fixture
def worker(conveyor_app, transactional_db) -> Iterator[object]:
    """An in-process worker: ``worker.run_until_idle()`` starts it (the first time) and
    returns once everything queued has run; until then, tasks wait in the queue.

    Its threads see committed data only, so tests using it are marked
    ``@pytest.mark.django_db(transaction=True)``: no test-wide transaction, and
    ``delay_on_commit`` sends when each statement commits, as in production."""
    from conveyor.contrib.django.worker import DjangoTaskRunner
    from conveyor.testing import TestWorker
    from django.db import connections

    instance = TestWorker(conveyor_app)
    instance.runner = DjangoTaskRunner(conveyor_app, instance.hostname)  # closes connections
    yield instance
    instance.stop(timeout=10)
    connections.close_all()


@pytest.fixture
def password() -> str:
    return "correct-horse-battery"


@pytest.fixture
def make_user(password):
    from accounts.models import User

    def make(email: str = "ada@example.com", *, verified: bool = True, **extra: object) -> User:
        return User.objects.create_user(
            email,
            password,
            full_name=extra.pop("full_name", "Ada Lovelace"),
            is_verified=verified,
            **extra,
        )

    return make


@pytest.fixture
def author(make_user):
    return make_user("ada@example.com")


@pytest.fixture
def staff(make_user):
    return make_user("staff@example.com", full_name="Sam Staff", is_staff=True)
