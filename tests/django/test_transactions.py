"""delay_on_commit / apply_async(on_commit=True) / CONVEYOR_TASK_ENQUEUE_ON_COMMIT."""

from __future__ import annotations

import pytest
from django.db import transaction

from conveyor import Conveyor, states
from conveyor.contrib.django import install
from conveyor.testing import make_test_app

from .testproj.shop.models import Order
from .testproj.shop.tasks import add

pytestmark = pytest.mark.django_db(transaction=True)


def queued(app: Conveyor) -> int:
    return sum(s.ready for s in app.broker.stats().values())


def test_project_app_got_the_hooks(app: Conveyor) -> None:
    from conveyor.contrib.django.transactions import commit_hook

    assert app.commit_hook is commit_hook
    assert add.app is app


def test_rollback_never_sends(app: Conveyor) -> None:
    with transaction.atomic():
        result = add.delay_on_commit(1, 2)
        assert result.id  # known at once
        transaction.set_rollback(True)
    assert queued(app) == 0
    assert result.state == states.PENDING


def test_exception_rollback_never_sends(app: Conveyor) -> None:
    def send_then_fail() -> None:
        with transaction.atomic():
            add.apply_async((1, 2), on_commit=True)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        send_then_fail()
    assert queued(app) == 0


def test_commit_sends_once(app: Conveyor) -> None:
    with transaction.atomic():
        result = add.delay_on_commit(1, 2)
        with transaction.atomic():  # a savepoint that commits
            inner = add.apply_async((3, 4), on_commit=True)
        assert queued(app) == 0, "sent before the commit"
    assert queued(app) == 2
    assert result.state == states.QUEUED
    assert inner.state == states.QUEUED


def test_rolled_back_savepoint_drops_only_its_tasks(app: Conveyor) -> None:
    with transaction.atomic():
        kept = add.delay_on_commit(1, 1)
        try:
            with transaction.atomic():
                dropped = add.delay_on_commit(2, 2)
                raise ValueError
        except ValueError:
            pass
    assert queued(app) == 1
    assert kept.state == states.QUEUED
    assert dropped.state == states.PENDING


def test_no_atomic_block_sends_now(app: Conveyor) -> None:
    result = add.delay_on_commit(1, 2)
    assert queued(app) == 1
    assert result.state == states.QUEUED


def test_enqueue_on_commit_setting_defers_inside_atomic_only(app: Conveyor) -> None:
    app.conf.task_enqueue_on_commit = True
    with transaction.atomic():
        deferred = add.delay(1, 2)
        assert queued(app) == 0
    assert queued(app) == 1
    now = add.delay(3, 4)
    assert queued(app) == 2
    assert deferred.state == now.state == states.QUEUED
    with transaction.atomic():
        explicit = add.apply_async((5, 6), on_commit=False)  # opting out
        assert queued(app) == 3
    assert explicit.state == states.QUEUED


def test_plain_delay_inside_atomic_sends_at_once_without_the_setting(app: Conveyor) -> None:
    with transaction.atomic():
        add.delay(1, 2)
        assert queued(app) == 1


def test_task_sees_committed_rows(app: Conveyor, worker: object) -> None:
    from .testproj.shop.tasks import confirm_order

    with transaction.atomic():
        order = Order.objects.create(item="lamp")
        result = confirm_order.delay_on_commit(order.pk)
    assert result.get(timeout=10) == "lamp"
    order.refresh_from_db()
    assert order.confirmed


def test_apps_created_later_get_the_hooks() -> None:
    later = make_test_app("later")
    try:
        assert later.commit_hook is not None  # installed through conveyor.app.app_created
        install(later)  # idempotent
        with transaction.atomic():
            later.send_task("x", on_commit=True)
            assert sum(s.ready for s in later.broker.stats().values()) == 0
        assert sum(s.ready for s in later.broker.stats().values()) == 1
    finally:
        later.close()
        from .testproj.conveyor import app as project

        project.set_default()


def test_manual_transaction_management_is_refused(app: Conveyor) -> None:
    transaction.set_autocommit(False)
    try:
        with pytest.raises(transaction.TransactionManagementError):
            add.delay_on_commit(1, 2)
    finally:
        transaction.rollback()
        transaction.set_autocommit(True)
    assert queued(app) == 0


def test_beat_of_a_django_app_reads_database_schedules() -> None:
    from conveyor.contrib.django.schedules import run_beat

    later = make_test_app("later-beat")
    try:
        assert later.beat_runner is run_beat  # `conveyor beat` and `worker -B` use it
    finally:
        later.close()
        from .testproj.conveyor import app as project

        project.set_default()
