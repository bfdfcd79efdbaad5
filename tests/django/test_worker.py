"""Workers of a Django project: setup, and fresh connections around every task."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from conveyor import Conveyor, states
from conveyor.contrib.django import setup_worker
from conveyor.contrib.django.transactions import commit_hook
from conveyor.contrib.django.worker import DjangoWorker
from conveyor.testing import TestWorker

from .conftest import DjangoTestWorker
from .testproj.shop.models import Order
from .testproj.shop.tasks import break_connection, count_orders

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def one_thread(app: Conveyor) -> Iterator[Any]:
    """Start a one-thread worker of the given class (so both tasks share a connection)."""
    started: list[TestWorker] = []

    def start(cls: type[TestWorker]) -> TestWorker:
        worker = cls(app, concurrency=1)
        worker.start()
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop(timeout=10)


def test_connection_broken_between_tasks_is_replaced(app: Conveyor, one_thread: Any) -> None:
    one_thread(DjangoTestWorker)
    Order.objects.create(item="a")
    break_connection.delay().get(timeout=10)
    assert count_orders.delay().get(timeout=10) == 1


def test_without_the_cleanup_the_next_task_fails(app: Conveyor, one_thread: Any) -> None:
    """The scenario above, on a worker without the hook: what the cleanup prevents."""
    one_thread(TestWorker)
    break_connection.delay().get(timeout=10)
    result = count_orders.delay()
    with pytest.raises(Exception, match="closed database"):
        result.get(timeout=10)
    assert result.state == states.FAILURE


def test_persistent_connection_is_health_checked(
    app: Conveyor, one_thread: Any, monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    """CONN_MAX_AGE=None with CONN_HEALTH_CHECKS: a dropped connection is noticed before the
    next task uses it (SQLite's is_usable() is made honest, as PostgreSQL's is)."""
    from django.db import connections
    from django.db.backends.sqlite3.base import DatabaseWrapper

    def is_usable(self: Any) -> bool:
        try:
            self.connection.execute("SELECT 1")
        except Exception:
            return False
        return True

    monkeypatch.setattr(DatabaseWrapper, "is_usable", is_usable)
    database = connections.settings["default"]
    monkeypatch.setitem(database, "CONN_MAX_AGE", None)
    monkeypatch.setitem(database, "CONN_HEALTH_CHECKS", True)
    one_thread(DjangoTestWorker)
    Order.objects.create(item="a")
    assert count_orders.delay().get(timeout=10) == 1
    break_connection.delay().get(timeout=10)
    assert count_orders.delay().get(timeout=10) == 1


def test_setup_worker_installs_the_hooks(app: Conveyor) -> None:
    app.commit_hook = None
    setup_worker(app)
    assert app.commit_hook is commit_hook


def test_django_worker_runs_tasks(app: Conveyor) -> None:
    from .testproj.shop.tasks import add

    with DjangoWorker(app, concurrency=2, lease_wait=0.05):
        assert add.delay(2, 3).get(timeout=10) == 5


def test_autodiscovery_found_the_project_tasks(app: Conveyor) -> None:
    app.finalize()
    assert "tests.django.testproj.shop.tasks.add" in app.tasks
    assert "conveyor.django_task" in app.tasks
    assert "tests.django.testproj.conveyor.debug_task" in app.tasks
