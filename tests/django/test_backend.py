"""The django.tasks backend, run by an in-process Conveyor worker."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.db import transaction
from django.tasks import TaskResultStatus, task_backends
from django.tasks.exceptions import TaskResultDoesNotExist, TaskResultMismatch
from django.tasks.signals import task_enqueued, task_finished, task_started
from django.utils import timezone

from conveyor import Conveyor
from conveyor.contrib.django.backend import (
    RUN_TASK,
    ConveyorBackend,
    UnknownTaskPath,
    conveyor_priority,
    resolve_task,
)

from .conftest import DjangoTestWorker
from .testproj.shop import tasks

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def worker(app: Conveyor, transactional_db: None) -> Iterator[DjangoTestWorker]:
    running = DjangoTestWorker(app, queues=["default", "emails"])
    running.start()
    yield running
    running.stop(timeout=10)


def wait_finished(result: Any, timeout: float = 10.0) -> None:
    result.task.get_backend().app.AsyncResult(result.id).get(timeout=timeout, propagate=False)
    result.refresh()


@pytest.fixture
def signals() -> Iterator[list[tuple[str, str, str]]]:
    seen: list[tuple[str, str, str]] = []

    def receiver(name: str) -> Any:
        def receive(sender: Any, task_result: Any, **kwargs: Any) -> None:
            seen.append((name, task_result.id, str(task_result.status)))

        return receive

    receivers = {
        task_enqueued: receiver("enqueued"),
        task_started: receiver("started"),
        task_finished: receiver("finished"),
    }
    for signal, fn in receivers.items():
        signal.connect(fn)
    yield seen
    for signal, fn in receivers.items():
        signal.disconnect(fn)


def test_backend_features() -> None:
    backend = task_backends["default"]
    assert isinstance(backend, ConveyorBackend)
    assert backend.supports_defer and backend.supports_async_task
    assert backend.supports_get_result and backend.supports_priority


def test_enqueue_returns_a_ready_result_at_once(app: Conveyor, signals: list[Any]) -> None:
    result = tasks.send_welcome.enqueue("ann@example.com", name="Ann")
    assert result.status == TaskResultStatus.READY
    assert result.id and result.enqueued_at is not None
    assert result.args == ["ann@example.com"] and result.kwargs == {"name": "Ann"}
    assert signals == [("enqueued", result.id, "READY")]
    fetched = tasks.send_welcome.get_result(result.id)
    assert fetched.status == TaskResultStatus.READY
    assert fetched.args == ["ann@example.com"]
    assert app.AsyncResult(result.id).name == RUN_TASK


def test_worker_runs_it(app: Conveyor, worker: DjangoTestWorker, signals: list[Any]) -> None:
    result = tasks.send_welcome.enqueue("ann@example.com", name="Ann")
    wait_finished(result)
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == {"to": "ann@example.com", "body": "Welcome Ann"}
    assert result.is_finished and result.errors == []
    assert result.worker_ids == [worker.hostname] and result.attempts == 1
    assert result.enqueued_at <= result.started_at <= result.finished_at
    assert result.last_attempted_at is not None
    assert [(name, status) for name, _, status in signals] == [
        ("enqueued", "READY"),
        ("started", "RUNNING"),
        ("finished", "SUCCESSFUL"),
    ]


def test_failure_keeps_every_attempts_error(app: Conveyor, worker: DjangoTestWorker) -> None:
    result = tasks.crash.enqueue("gone")
    wait_finished(result)
    assert result.status == TaskResultStatus.FAILED
    assert result.attempts == 3  # OPTIONS: max_retries=2
    assert len(result.errors) == 3
    error = result.errors[-1]
    assert error.exception_class_path == "builtins.KeyError"
    assert error.exception_class is KeyError
    assert "KeyError: 'gone'" in error.traceback
    with pytest.raises(ValueError, match="failed"):
        result.return_value  # noqa: B018


def test_retries_then_succeeds_with_context(app: Conveyor, worker: DjangoTestWorker) -> None:
    result = tasks.flaky.enqueue(2)
    wait_finished(result)
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == 3
    assert result.attempts == 3
    assert [e.exception_class_path for e in result.errors] == ["builtins.ConnectionError"] * 2


def test_async_task_runs_on_the_event_loop(app: Conveyor, worker: DjangoTestWorker) -> None:
    result = tasks.async_double.enqueue(21)
    assert app.AsyncResult(result.id).name == "conveyor.django_task_async"
    wait_finished(result)
    assert result.return_value == 42


def test_orm_inside_a_django_task(app: Conveyor, worker: DjangoTestWorker) -> None:
    from .testproj.shop.models import Order

    Order.objects.create(item="x")
    result = tasks.count_with_orm.enqueue()
    wait_finished(result)
    assert result.return_value == 1


def test_queue_priority_and_run_after(app: Conveyor) -> None:
    urgent = tasks.urgent_email.enqueue("a@example.com")
    stats = app.broker.stats(["emails"])
    assert stats["emails"].ready == 1
    delivery = app.broker.lease(["emails"], 1, 0)[0]
    assert delivery.priority == 7 and delivery.id == urgent.id
    later = tasks.send_welcome.using(run_after=timezone.now() + timedelta(hours=1)).enqueue("b")
    assert app.broker.stats(["default"])["default"].delayed == 1
    assert tasks.send_welcome.get_result(later.id).status == TaskResultStatus.READY


@pytest.mark.parametrize(
    ("django", "conveyor"),
    [(-100, 0), (-81, 0), (-80, 1), (-21, 3), (-20, 4), (-1, 4), (0, 5), (1, 6), (25, 6),
     (26, 7), (50, 7), (75, 8), (76, 9), (100, 9)],
)  # fmt: skip
def test_priority_bands(django: int, conveyor: int) -> None:
    assert conveyor_priority(django) == conveyor


def test_results_of_other_tasks_are_not_found(app: Conveyor) -> None:
    from .testproj.shop.tasks import add

    with pytest.raises(TaskResultDoesNotExist):
        tasks.send_welcome.get_result(add.delay(1, 2).id)
    with pytest.raises(TaskResultDoesNotExist):
        tasks.send_welcome.get_result("no-such-id")
    result = tasks.send_welcome.enqueue("a")
    with pytest.raises(TaskResultMismatch):
        tasks.crash.get_result(result.id)


def test_only_decorated_functions_run() -> None:
    with pytest.raises(UnknownTaskPath, match="not a function decorated"):
        resolve_task("os.system")
    with pytest.raises(UnknownTaskPath, match="not a function decorated"):
        resolve_task("tests.django.testproj.shop.tasks.ATTEMPTS_MISSING")
    assert "json.tool" not in sys.modules
    with pytest.raises(UnknownTaskPath, match="refusing to import"):
        resolve_task("json.tool.main")
    assert "json.tool" not in sys.modules
    assert resolve_task(tasks.crash.module_path) is tasks.crash


def test_forged_message_is_refused_by_the_worker(app: Conveyor, worker: DjangoTestWorker) -> None:
    result = app.send_task(RUN_TASK, ["subprocess.run", "default"])
    with pytest.raises(Exception, match="not a function decorated"):
        result.get(timeout=10)


def test_enqueue_on_commit_setting_applies(app: Conveyor) -> None:
    app.conf.task_enqueue_on_commit = True
    with transaction.atomic():
        result = tasks.send_welcome.enqueue("a")
        assert app.broker.stats(["default"])["default"].ready == 0
    assert app.broker.stats(["default"])["default"].ready == 1
    assert tasks.send_welcome.get_result(result.id).status == TaskResultStatus.READY


def test_async_enqueue_and_get_result(app: Conveyor, worker: DjangoTestWorker) -> None:
    async def main() -> Any:
        result = await tasks.send_welcome.aenqueue("c@example.com")
        for _ in range(200):
            await result.arefresh()
            if result.is_finished:
                return result
            await asyncio.sleep(0.02)
        raise AssertionError("not finished")

    result = asyncio.run(main())
    assert result.return_value["to"] == "c@example.com"


def test_task_options_override_backend_options() -> None:
    from django.tasks import task

    backend = task_backends["default"]
    assert backend.option(tasks.crash, "max_retries") == 2
    assert backend.option(tasks.crash, "autoretry_for") == (Exception,)
    custom = task(max_retries=5, autoretry_for=("builtins.OSError",))(tasks.crash.func)
    assert backend.option(custom, "max_retries") == 5
    assert backend.option(custom, "autoretry_for") == (OSError,)
