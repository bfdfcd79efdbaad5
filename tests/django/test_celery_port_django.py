"""Django parts of the Celery port (issue 12): ``TaskResult.refresh()`` inside ``atomic()``
while the send waits for the commit, one consistent read for status views, and
``django.tasks`` functions named in the worker's banner and log lines."""

from __future__ import annotations

import logging

import pytest
from django.db import transaction
from django.tasks import TaskResultStatus
from django.test import Client

from conveyor import AsyncResult, Conveyor, states
from conveyor.cli.worker import print_banner
from conveyor.results.base import ResultRecord

from ..conftest import wait_until
from .conftest import DjangoTestWorker
from .testproj.shop import tasks

pytestmark = pytest.mark.django_db(transaction=True)


def test_refresh_inside_atomic_while_the_send_waits_for_the_commit(app: Conveyor) -> None:
    app.conf.task_enqueue_on_commit = True
    with transaction.atomic():
        result = tasks.send_welcome.enqueue("ann@example.com")
        assert app.broker.stats(["default"])["default"].ready == 0  # not sent yet
        result.refresh()  # raised TaskResultDoesNotExist before the fix
        assert result.status == TaskResultStatus.READY
        assert tasks.send_welcome.get_result(result.id).args == ["ann@example.com"]
    assert app.broker.stats(["default"])["default"].ready == 1


def test_status_view_reads_state_and_ready_at_once(app: Conveyor) -> None:
    """The task finishes between two reads of the store: the view must not mix them."""
    sent = tasks.add.delay(1, 2)
    store = app.results
    real_get = store.get
    reads: list[str] = []

    def get_then_finish(task_id: str) -> ResultRecord | None:
        record = real_get(task_id)
        reads.append(record.state if record else "none")
        if len(reads) == 1:  # the worker finishes the task right after this read
            finished = ResultRecord(id=task_id, state=states.SUCCESS, result=3, name="add")
            store.store([finished])
        return record

    store.get = get_then_finish  # type: ignore[method-assign]
    try:
        status = Client().get(f"/tasks/{sent.id}/").json()
    finally:
        del store.get
    assert status == {"state": states.QUEUED, "ready": False}
    assert AsyncResult(sent.id, app).snapshot().ready  # the next poll sees it finished


def test_snapshot_is_one_consistent_read(app: Conveyor, worker: DjangoTestWorker) -> None:
    snap = AsyncResult("never-sent", app).snapshot()
    assert (snap.state, snap.ready, snap.result) == (states.PENDING, False, None)
    done = tasks.add.delay(2, 3)
    assert done.get(timeout=10) == 5
    snap = done.snapshot()
    assert (snap.state, snap.ready, snap.successful, snap.result) == (states.SUCCESS, True, True, 5)
    assert snap.date_done is not None and not snap.failed


def test_django_tasks_are_named_in_log_lines_and_the_banner(
    app: Conveyor,
    worker: DjangoTestWorker,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with caplog.at_level(logging.INFO, logger="conveyor.worker"):
        result = tasks.send_welcome.enqueue("bob@example.com")
        app.AsyncResult(result.id).get(timeout=10)
        path = tasks.send_welcome.module_path
        wait_until(lambda: f"{path}[{result.id}] succeeded" in caplog.text, what="log line")
    assert "conveyor.django_task[" not in caplog.text
    names = app.task_names()
    assert path in names and tasks.crash.module_path in names
    assert not any(name.startswith("conveyor.") for name in names)
    print_banner(app, "testproj", "solo", 1, 1, ["default"], None, False)
    banner = capsys.readouterr().err
    assert f"tasks ({len(names)})" in banner and path in banner
