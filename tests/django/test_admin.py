"""The admin: read-only results with revoke/retry, editable periodic tasks."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from conveyor import Conveyor, states
from conveyor.contrib.django.models import PeriodicTask, ScheduleChange, TaskResult

from .conftest import DjangoTestWorker
from .testproj.shop.tasks import add, fail, send_welcome

pytestmark = pytest.mark.django_db(transaction=True)

RESULTS = "/admin/conveyor/taskresult/"
PERIODIC = "/admin/conveyor/periodictask/"


def action(client: Client, url: str, name: str, ids: list[Any]) -> Any:
    return client.post(url, {"action": name, "_selected_action": ids}, follow=True)


def test_queued_tasks_are_listed_and_filterable(app: Conveyor, admin_client: Client) -> None:
    queued = add.delay(1, 2)
    page = admin_client.get(RESULTS)
    assert page.status_code == 200
    assert queued.id in page.content.decode()
    assert queued.id in admin_client.get(RESULTS, {"state__exact": "QUEUED"}).content.decode()
    assert queued.id not in admin_client.get(RESULTS, {"state__exact": "SUCCESS"}).content.decode()
    assert queued.id in admin_client.get(RESULTS, {"q": queued.id[:8]}).content.decode()
    for query in ({"task_name": add.name}, {"worker__isnull": "True"}, {"queue": "default"}):
        assert admin_client.get(RESULTS, query).status_code == 200


def test_results_are_read_only(app: Conveyor, admin_client: Client) -> None:
    row = TaskResult.objects.get(task_id=add.delay(1, 2).id)
    assert admin_client.get(f"{RESULTS}add/").status_code == 403
    detail = admin_client.get(f"{RESULTS}{row.pk}/change/")
    assert detail.status_code == 200
    assert 'name="_save"' not in detail.content.decode()
    admin_client.post(f"{RESULTS}{row.pk}/change/", {"state": "SUCCESS"})
    row.refresh_from_db()
    assert row.state == states.QUEUED


def test_revoke_action(app: Conveyor, admin_client: Client) -> None:
    waiting = add.delay(1, 2)
    row = TaskResult.objects.get(task_id=waiting.id)
    action(admin_client, RESULTS, "revoke", [row.pk])
    assert waiting.state == states.REVOKED
    assert app.broker.revoked([waiting.id]) == {waiting.id}
    worker = DjangoTestWorker(app)
    try:
        worker.run_until_idle(timeout=10)
    finally:
        worker.stop(timeout=10)
    assert waiting.state == states.REVOKED  # dropped by the worker, never run


def test_retry_action_resends_with_the_same_arguments(
    app: Conveyor, admin_client: Client, worker: DjangoTestWorker
) -> None:
    failed = fail.delay("nope")
    failed.get(timeout=10, propagate=False)
    done = add.delay(2, 2)
    done.get(timeout=10)
    rows = TaskResult.objects.filter(task_id__in=[failed.id, done.id])
    page = action(admin_client, RESULTS, "retry", [row.pk for row in rows])
    text = page.content.decode()
    assert "Sent 1 task(s) again" in text and "Skipped 1" in text
    again = TaskResult.objects.exclude(task_id__in=[failed.id, done.id]).get()
    assert again.task_name == fail.name and again.args == ["nope"]


def test_retry_action_on_a_django_task(
    app: Conveyor, admin_client: Client, worker: DjangoTestWorker
) -> None:
    from .testproj.shop.tasks import crash

    result = crash.enqueue("k")
    app.AsyncResult(result.id).get(timeout=10, propagate=False)
    row = TaskResult.objects.get(task_id=result.id)
    assert f"{crash.module_path} (django.tasks)" in admin_client.get(RESULTS).content.decode()
    action(admin_client, RESULTS, "retry", [row.pk])
    again = TaskResult.objects.exclude(task_id=result.id).get()
    resent = crash.get_result(again.task_id)
    assert resent.args == ["k"]
    assert send_welcome  # the module's tasks are importable by path


def periodic_form(**overrides: Any) -> dict[str, Any]:
    data = {
        "name": "nightly",
        "task": add.name,
        "description": "",
        "enabled": "on",
        "kind": "crontab",
        "minute": "30",
        "hour": "2",
        "day_of_week": "*",
        "day_of_month": "*",
        "month_of_year": "*",
        "interval": "",
        "clocked_at_0": "",
        "clocked_at_1": "",
        "timezone": "Europe/Paris",
        "catch_up": "latest",
        "args": "[1, 2]",
        "kwargs": "{}",
        "queue": "",
        "priority": "",
        "expire_seconds": "",
    }
    data.update(overrides)
    return data


def test_periodic_task_add_form(app: Conveyor, admin_client: Client) -> None:
    form = admin_client.get(f"{PERIODIC}add/").content.decode()
    assert f'value="{add.name}"' in form
    assert "conveyor.django_task" not in form  # internal tasks are not offered
    before = ScheduleChange.current()
    created = admin_client.post(f"{PERIODIC}add/", periodic_form())
    assert created.status_code == 302, created.content.decode()
    row = PeriodicTask.objects.get(name="nightly")
    assert (row.args, row.kwargs, row.timezone) == ([1, 2], {}, "Europe/Paris")
    assert row.describe().startswith("At 02:30")
    assert ScheduleChange.current() > before
    listing = admin_client.get(PERIODIC).content.decode()
    assert "nightly" in listing and "At 02:30" in listing


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"args": '{"a": 1}'}, "args", "JSON list"),
        ({"args": "[1, "}, "args", "Enter a valid JSON"),
        ({"kwargs": "[1]"}, "kwargs", "JSON object"),
        ({"minute": "61"}, "minute", "out of range"),
        ({"day_of_week": "funday"}, "day_of_week", "not a number"),
        ({"timezone": "Mars/Olympus"}, "timezone", "Unknown time zone"),
        ({"kind": "interval"}, "interval", "positive interval"),
        ({"kind": "clocked"}, "clocked_at", "when to run"),
        ({"task": "no.such.task"}, "task", "Select a valid choice"),
    ],
)
def test_periodic_task_form_validation(
    app: Conveyor, admin_client: Client, overrides: dict[str, str], field: str, message: str
) -> None:
    page = admin_client.post(f"{PERIODIC}add/", periodic_form(**overrides))
    assert page.status_code == 200
    errors = page.context["adminform"].form.errors
    assert field in errors, errors
    assert message in str(errors[field])
    assert not PeriodicTask.objects.exists()


def test_periodic_task_actions(app: Conveyor, admin_client: Client) -> None:
    row = PeriodicTask.objects.create(name="every-minute", task=add.name, args=[3, 4])
    version = ScheduleChange.current()
    action(admin_client, PERIODIC, "disable", [row.pk])
    row.refresh_from_db()
    assert not row.enabled and ScheduleChange.current() > version
    action(admin_client, PERIODIC, "enable", [row.pk])
    row.refresh_from_db()
    assert row.enabled
    page = action(admin_client, PERIODIC, "run_now", [row.pk])
    assert "Sent 1 task(s)" in page.content.decode()
    result = TaskResult.objects.get(task_name=add.name)
    assert result.args == [3, 4] and result.periodic_entry == "every-minute"
    row.refresh_from_db()
    assert row.total_run_count == 1 and row.last_run_at is not None
