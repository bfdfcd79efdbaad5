"""The operations pages under the Django project's URLs: the Periodic page lists the
database's schedules beside the code's, links them to the admin to edit, switches them in
their row and sends them now; the other pages answer under the project's root."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client

from conveyor import Conveyor
from conveyor.contrib.django.models import PeriodicTask

from .testproj.shop.tasks import add

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = "/ops/conveyor"


def operator() -> Client:
    user = User.objects.create_user("ops", password="pw", is_staff=True)
    for codename in ("view_dashboard", "operate_dashboard"):
        user.user_permissions.add(Permission.objects.get(codename=codename))
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    return client


def post(client: Client, page: str, action: str, **fields: str) -> tuple[int, str]:
    html = client.get(ROOT + page).content.decode()
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', html)
    token = re.search(r'name="token" value="([^"]+)"', html)
    assert csrf and token, "the page has an action form"
    answer = client.post(
        f"{ROOT}/actions/{action}",
        {"csrfmiddlewaretoken": csrf.group(1), "token": token.group(1), **fields},
        follow=True,
    )
    return answer.status_code, answer.content.decode()


def test_database_schedules_are_listed_switched_and_run(app: Conveyor) -> None:
    row = PeriodicTask.objects.create(
        name="nightly-add",
        task=add.name,
        kind=PeriodicTask.INTERVAL,
        interval=timedelta(minutes=5),
        args=[2, 3],
    )
    client = operator()
    page = client.get(f"{ROOT}/periodic").content.decode()
    assert 'data-periodic="nightly-add"' in page and "database" in page
    assert f'href="/admin/conveyor/periodictask/{row.pk}/change/"' in page
    assert f'href="{ROOT}/scheduled"' in page  # the navigation stays under the root

    status, shown = post(client, "/periodic", "disable-periodic", name="nightly-add")
    assert status == 200 and "disabled" in shown
    row.refresh_from_db()
    assert row.enabled is False
    status, _ = post(client, "/periodic", "enable-periodic", name="nightly-add")
    row.refresh_from_db()
    assert row.enabled is True

    status, _ = post(client, "/periodic", "run-periodic", name="nightly-add")
    assert status == 200
    (delivery,) = app.broker.lease(["default"], 5, 0)
    audit = client.get(f"{ROOT}/audit").content.decode()
    assert delivery.id in audit and "run-periodic" in audit and "disable-periodic" in audit


def test_operations_pages_answer_under_the_root(app: Conveyor) -> None:
    add.apply_async((1, 2), countdown=600)
    client = operator()
    for path in ("/workers", "/queues", "/scheduled", "/retries", "/periodic"):
        answer = client.get(ROOT + path)
        assert answer.status_code == 200, path
        assert "script-src 'self'" in answer["Content-Security-Policy"]
    assert "shop" in client.get(f"{ROOT}/scheduled").content.decode()
    status, _ = post(client, "/queues", "pause-queue", queue="default")
    assert status == 200 and app.control.paused_queues() == ["default"]
