"""Periodic tasks in the database, run by beat."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from conveyor import Conveyor
from conveyor.beat.schedules import clocked, crontab, every
from conveyor.contrib.django.models import PeriodicTask, ScheduleChange
from conveyor.contrib.django.schedules import DatabaseSchedule, DjangoBeat

from .testproj.shop.tasks import add

pytestmark = pytest.mark.django_db(transaction=True)


def sent(app: Conveyor) -> int:
    return sum(s.ready for s in app.broker.stats().values())


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.02)


@pytest.fixture
def run_beats(app: Conveyor) -> Iterator[Callable[..., list[DjangoBeat]]]:
    stop = threading.Event()
    threads: list[threading.Thread] = []

    def start(count: int = 1, **options: Any) -> list[DjangoBeat]:
        options.setdefault("poll_interval", 0.2)
        options.setdefault("max_interval", 0.2)
        beats = [DjangoBeat(app, name=f"beat-{n}", **options) for n in range(count)]
        for beat in beats:
            thread = threading.Thread(target=beat.run, args=(stop,), daemon=True)
            thread.start()
            threads.append(thread)
        return beats

    yield start
    stop.set()
    for thread in threads:
        thread.join(10)


def test_rows_become_entries(app: Conveyor) -> None:
    app.conf.beat_schedule = {
        "from-settings": {"task": add.name, "schedule": 60.0},
        "clash": {"task": add.name, "schedule": 60.0},
    }
    PeriodicTask.objects.create(
        name="cron", task=add.name, minute="*/5", timezone="Asia/Tokyo", args=[1, 2], queue="q"
    )
    PeriodicTask.objects.create(
        name="clash", task=add.name, kind="interval", interval=timedelta(seconds=30)
    )
    PeriodicTask.objects.create(name="off", task=add.name, kind="clocked", enabled=False,
                                clocked_at=timezone.now() + timedelta(days=1))  # fmt: skip
    PeriodicTask.objects.create(name="broken", task=add.name, minute="99")
    entries = DatabaseSchedule(app).entries()
    assert set(entries) == {"from-settings", "clash", "cron", "off"}
    assert entries["cron"]["schedule"] == crontab(minute="*/5")
    assert entries["cron"]["tz"] == "Asia/Tokyo"
    assert entries["cron"]["args"] == [1, 2] and entries["cron"]["options"] == {"queue": "q"}
    assert entries["clash"]["schedule"] == every(30)
    assert isinstance(entries["off"]["schedule"], clocked) and entries["off"]["enabled"] is False


def test_every_kind_of_change_is_noticed(app: Conveyor) -> None:
    source = DatabaseSchedule(app)
    assert source.changed()
    assert not source.changed()
    row = PeriodicTask.objects.create(name="a", task=add.name)
    assert source.changed()
    row.minute = "5"
    row.save()
    assert source.changed()
    PeriodicTask.objects.filter(pk=row.pk).update(hour="3")  # bulk: no save() signal
    assert source.changed()
    PeriodicTask.objects.bulk_create([PeriodicTask(name="b", task=add.name)])
    assert source.changed()
    PeriodicTask.objects.filter(name="b").delete()
    assert source.changed()
    PeriodicTask.objects.filter(pk=row.pk).update(total_run_count=5)  # beat's own bookkeeping
    assert not source.changed()


def test_beat_sends_and_records_runs(app: Conveyor, run_beats: Any) -> None:
    row = PeriodicTask.objects.create(
        name="tick", task=add.name, kind="interval", interval=timedelta(seconds=0.3), args=[1, 1]
    )
    run_beats()
    wait_for(lambda: sent(app) >= 2)
    row.refresh_from_db()
    wait_for(lambda: PeriodicTask.objects.get(pk=row.pk).total_run_count >= 2)
    row.refresh_from_db()
    assert row.last_run_at is not None


def test_changes_reach_a_running_beat(app: Conveyor, run_beats: Any) -> None:
    run_beats()
    PeriodicTask.objects.create(
        name="late", task=add.name, kind="interval", interval=timedelta(seconds=0.2), args=[1, 1]
    )
    wait_for(lambda: sent(app) >= 1)
    PeriodicTask.objects.filter(name="late").update(enabled=False)  # bulk update
    time.sleep(0.8)  # one poll interval, plus a tick
    before = sent(app)
    time.sleep(0.8)
    assert sent(app) == before, "a disabled task was still sent"


def test_several_beats_send_each_run_once(app: Conveyor, run_beats: Any) -> None:
    PeriodicTask.objects.create(
        name="shared", task=add.name, kind="interval", interval=timedelta(seconds=0.25), args=[1, 1]
    )
    run_beats(3)
    wait_for(lambda: PeriodicTask.objects.get(name="shared").total_run_count >= 6)
    time.sleep(0.3)
    deliveries = app.broker.lease(["default"], 1000, 0)
    ids = [d.id for d in deliveries]
    assert len(ids) == len(set(ids))
    count = PeriodicTask.objects.get(name="shared").total_run_count
    assert abs(len(ids) - count) <= 1  # the last send may not be counted yet


def test_clocked_task_runs_once_and_is_disabled(app: Conveyor, run_beats: Any) -> None:
    run_beats()
    PeriodicTask.objects.create(
        name="once",
        task=add.name,
        args=[1, 1],
        kind="clocked",
        clocked_at=timezone.now() + timedelta(seconds=0.5),
    )
    wait_for(lambda: not PeriodicTask.objects.get(name="once").enabled)
    row = PeriodicTask.objects.get(name="once")
    assert row.total_run_count == 1 and sent(app) == 1


def test_version_counter(app: Conveyor) -> None:
    assert ScheduleChange.current() == 0
    ScheduleChange.bump()
    ScheduleChange.bump()
    assert ScheduleChange.current() == 2
