"""The dashboard under the Django project's own URLs, behind Django's login and permissions."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client

from conveyor import Conveyor
from tests.helpers import clear_of_the_minute_turn

from .testproj.shop.tasks import add

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = "/ops/conveyor"


def token_of(html: str) -> str:
    match = re.search(r'name="token" value="([^"]+)"', html)
    assert match, "the page has an action form"
    return match.group(1)


def staff(*perms: str) -> Client:
    user = User.objects.create_user("ops", password="pw", is_staff=True)
    for codename in perms:
        user.user_permissions.add(Permission.objects.get(codename=codename))
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    return client


def dead_letter(app: Conveyor) -> str:
    result = add.apply_async((1, 2), queue="parked")
    (delivery,) = app.broker.lease(["parked"], 1, 1.0)
    app.broker.dead_letter(delivery, "worker_lost", "killed")
    return result.id


def test_anonymous_users_go_to_the_login_page(app: Conveyor, client: Client) -> None:
    answer = client.get(f"{ROOT}/")
    assert answer.status_code == 302 and "login" in answer["Location"]
    assert client.post(f"{ROOT}/actions/purge-dead", {"token": "x"}).status_code == 302


def test_staff_need_the_view_permission(app: Conveyor) -> None:
    answer = staff().get(f"{ROOT}/")
    assert answer.status_code == 403
    assert "may not see" in answer.content.decode()


def test_the_view_permission_shows_pages_without_actions(app: Conveyor) -> None:
    letter = dead_letter(app)
    client = staff("view_dashboard")
    for path in ("/", "/queues", "/workers", "/dead", "/audit", "/tasks", f"/tasks/{letter}"):
        answer = client.get(ROOT + path)
        assert answer.status_code == 200, path
        assert "script-src 'self'" in answer["Content-Security-Policy"]
    page = client.get(f"{ROOT}/dead").content.decode()
    assert letter in page and f'href="{ROOT}/static/conveyor.css"' in page
    assert f'href="{ROOT}/tasks"' in page  # the nav's links stay under the mount
    assert "/actions/" not in page and "read-only" in page
    refused = client.post(f"{ROOT}/actions/purge-dead", {"token": "x", "id": letter})
    assert refused.status_code == 403  # Django's CSRF check, before anything else
    assert [d.id for d in app.broker.dead_letters()] == [letter]


def test_operators_act_with_csrf_and_a_single_use_token(app: Conveyor) -> None:
    letters = [dead_letter(app) for _ in range(2)]
    client = staff("view_dashboard", "operate_dashboard")
    page = client.get(f"{ROOT}/dead").content.decode()
    csrf = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    assert csrf
    form = {"csrfmiddlewaretoken": csrf.group(1), "token": token_of(page), "id": letters[0]}
    answer = client.post(f"{ROOT}/actions/replay-dead", form)
    assert answer.status_code == 302 and answer["Location"] == f"{ROOT}/dead"
    assert [d.id for d in app.broker.dead_letters()] == letters[1:]

    replayed = client.post(f"{ROOT}/actions/purge-dead", {**form, "id": letters[1]})
    assert replayed.status_code == 403 and "reload the page" in replayed.content.decode()
    no_csrf = {"token": token_of(client.get(f"{ROOT}/dead").content.decode()), "id": letters[1]}
    assert client.post(f"{ROOT}/actions/purge-dead", no_csrf).status_code == 403
    assert [d.id for d in app.broker.dead_letters()] == letters[1:]

    audit = client.get(f"{ROOT}/audit").content.decode()
    assert "replay-dead" in audit and "ops (" in audit


def test_bad_input_gets_a_page_not_a_traceback(app: Conveyor, admin_client: Client) -> None:
    missing = admin_client.get(f"{ROOT}/tasks/nope")
    assert missing.status_code == 404 and "no task with id" in missing.content.decode()
    assert admin_client.get(f"{ROOT}/dead?search=" + "x" * 500).status_code == 400
    assert admin_client.get(f"{ROOT}/live?page=nope").status_code == 404
    assert admin_client.get(f"{ROOT}/actions/replay-dead").status_code == 405
    assert admin_client.get(f"{ROOT}/static/../settings.py").status_code == 404
    found = admin_client.get(f"{ROOT}/find?id=abc")
    assert found.status_code == 302 and found["Location"] == f"{ROOT}/tasks/abc"


def test_the_admin_links_to_the_dashboard(app: Conveyor, admin_client: Client) -> None:
    page = admin_client.get("/admin/conveyor/taskresult/").content.decode()
    assert f'href="{ROOT}/"' in page and "Conveyor dashboard" in page


def test_live_updates_skip_what_the_page_shows(app: Conveyor, admin_client: Client) -> None:
    clear_of_the_minute_turn(5)
    page = admin_client.get(f"{ROOT}/").content.decode()
    [shown] = re.findall(r'data-live-digest="([0-9a-f]{16})"', page)
    same = admin_client.get(f"{ROOT}/live?page=overview&digest={shown}")
    assert next(iter(same.streaming_content)) == b": still here\n\n"
    fresh = admin_client.get(f"{ROOT}/live?page=overview")
    assert next(iter(fresh.streaming_content)).startswith(f"id: {shown}\nevent: live\n".encode())
