"""System checks (``manage.py check``)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from django.core.management import call_command
from django.tasks import task_backends

from conveyor import Conveyor
from conveyor.contrib.django import checks
from conveyor.contrib.django.backend import ConveyorBackend


@pytest.fixture(autouse=True)
def only_the_project_app(app: Conveyor, monkeypatch: pytest.MonkeyPatch) -> None:
    """Other test modules leave apps of their own alive; check the project's only."""
    monkeypatch.setattr(checks, "_apps", lambda: [app])


def ids(messages: list[Any]) -> list[str]:
    return [message.id for message in messages]


@pytest.mark.django_db
def test_the_test_project_passes() -> None:
    call_command("check", "--fail-level", "WARNING")


def test_unreachable_broker_is_a_warning_not_a_crash(app: Conveyor) -> None:
    from tests.servers import free_port

    app.conf.broker_url = f"redis://127.0.0.1:{free_port()}/0"
    began = time.monotonic()
    messages = checks.check_apps()
    assert time.monotonic() - began < checks.PING_TIMEOUT + 1
    assert "conveyor.W010" in ids(messages)
    assert "cannot be reached" in messages[ids(messages).index("conveyor.W010")].msg


def test_no_app(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checks, "_apps", list)
    assert ids(checks.check_apps()) == ["conveyor.W001"]


def test_unknown_results_database(app: Conveyor) -> None:
    app.conf.result_backend = "django://nope"
    assert "conveyor.E002" in ids(checks.check_apps())


def test_sqlite_results_without_immediate_transactions(
    app: Conveyor, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(settings.DATABASES["default"], "OPTIONS", {})
    assert "conveyor.W003" in ids(checks.check_apps())


def test_on_commit_misuse(app: Conveyor, settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    database = settings.DATABASES["default"]
    monkeypatch.setitem(database, "ATOMIC_REQUESTS", True)
    assert "conveyor.W006" in ids(checks.check_apps())
    app.conf.task_enqueue_on_commit = True
    assert "conveyor.W006" not in ids(checks.check_apps())
    monkeypatch.setitem(database, "AUTOCOMMIT", False)
    assert "conveyor.E005" in ids(checks.check_apps())
    app.conf.task_always_eager = True
    assert "conveyor.W004" in ids(checks.check_apps())


def test_periodic_tasks_in_utc_while_the_site_is_not(app: Conveyor) -> None:
    assert "conveyor.W007" not in ids(checks.check_apps())
    app.conf.beat_schedule = {"x": {"task": "t", "schedule": 60.0}}
    assert "conveyor.W007" in ids(checks.check_apps())  # TIME_ZONE is Europe/Berlin
    app.conf.timezone = "Europe/Berlin"
    assert "conveyor.W007" not in ids(checks.check_apps())


def test_queue_not_in_backend_queues(app: Conveyor) -> None:
    backend = task_backends["default"]
    assert backend.check() == []
    app.conf.task_routes = {"reports.*": {"queue": "reports"}}
    app.conf.beat_schedule = {"x": {"task": "t", "schedule": 60.0, "options": {"queue": "night"}}}
    messages = backend.check()
    assert ids(messages) == ["conveyor.W021", "conveyor.W021"]
    assert "'reports'" in messages[0].msg and "'night'" in messages[1].msg


def test_backend_without_an_app() -> None:
    backend = ConveyorBackend("broken", {"OPTIONS": {"APP": "no.such.module:app"}})
    assert ids(backend.check()) == ["conveyor.E020"]


@pytest.mark.django_db
def test_migrations_match_the_models() -> None:
    call_command("makemigrations", "conveyor", "--check", "--dry-run", verbosity=0)
