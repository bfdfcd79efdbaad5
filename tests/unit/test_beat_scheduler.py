"""Beat on the memory broker with a controllable broker clock."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from conveyor import Conveyor, signature
from conveyor.beat import scheduler
from conveyor.beat.scheduler import Beat, Entry, run_beat, run_id
from conveyor.beat.schedules import InvalidSchedule, clocked, crontab, every
from conveyor.exceptions import SerializationError
from conveyor.message import Envelope, decode_envelope

T0 = datetime(2024, 5, 1, tzinfo=UTC)


class Clock:
    """The broker's clock, moved by hand."""

    def __init__(self, start: datetime) -> None:
        self.now = start.timestamp()

    def __call__(self) -> float:
        return self.now

    def set(self, moment: datetime) -> None:
        self.now = moment.timestamp()

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture
def app(clock: Clock, monkeypatch: pytest.MonkeyPatch) -> Iterator[Conveyor]:
    app = Conveyor("beat-tests", broker="memory://", set_as_default=False)
    monkeypatch.setattr(app.broker, "time", clock)
    yield app
    app.close()


def take(app: Conveyor, queue: str = "default") -> list[Envelope]:
    """Every message sent so far (removed from the broker)."""
    deliveries = app.broker.lease([queue], 100_000, 0)
    app.broker.ack(deliveries)
    return [decode_envelope(d.body) for d in deliveries]


def due_times(envelopes: list[Envelope]) -> list[datetime]:
    return [datetime.fromisoformat(e.headers["scheduled_at"]) for e in envelopes]


def seconds(*offsets: float) -> list[datetime]:
    return [T0 + timedelta(seconds=s) for s in offsets]


def tick_at(beat: Beat, clock: Clock, moment: datetime) -> float:
    clock.set(moment)
    return beat.tick()


# -- basics ------------------------------------------------------------------------------------
def test_interval_entry_fires_once_per_due_time(app: Conveyor, clock: Clock) -> None:
    app.conf.beat_schedule = {"ping": {"task": "tasks.ping", "schedule": 10.0}}
    beat = Beat(app)
    beat.tick()
    assert take(app) == []
    for offset in (5, 10, 10, 10.5, 19, 20, 35):
        tick_at(beat, clock, T0 + timedelta(seconds=offset))
    assert due_times(take(app)) == seconds(10, 20, 30)


def test_tick_returns_time_until_next_due_capped_by_max_interval(
    app: Conveyor, clock: Clock
) -> None:
    app.conf.beat_schedule = {"ping": {"task": "tasks.ping", "schedule": 10.0}}
    beat = Beat(app, max_interval=5.0)
    assert beat.tick() == pytest.approx(5.0, abs=0.01)
    assert tick_at(beat, clock, T0 + timedelta(seconds=7.5)) == pytest.approx(2.5, abs=0.01)
    quick = Beat(app, max_interval=60.0)
    assert quick.tick() == pytest.approx(2.5, abs=0.01)


def test_message_carries_headers_deterministic_id_args_and_options(
    app: Conveyor, clock: Clock
) -> None:
    app.conf.beat_schedule = {
        "report": {
            "task": "reports.daily",
            "schedule": every(60),
            "args": (1, "two"),
            "kwargs": {"three": 3},
            "options": {"queue": "reports", "priority": 8, "expires": 30, "headers": {"x": "y"}},
        }
    }
    beat = Beat(app)
    beat.tick()
    tick_at(beat, clock, T0 + timedelta(seconds=61))
    [message] = take(app, "reports")
    due = T0 + timedelta(seconds=60)
    assert message.task == "reports.daily"
    assert message.headers == {
        "x": "y",
        "periodic_entry": "report",
        "scheduled_at": due.isoformat(),
    }
    assert message.id == run_id("report", due)
    assert message.args == [1, "two"]
    assert message.kwargs == {"three": 3}
    assert message.priority == 8
    # expires counts from the due time, not from when the beat got round to sending
    assert message.expires == pytest.approx((due + timedelta(seconds=30)).timestamp())


def test_run_id_is_stable_and_distinct() -> None:
    due = T0 + timedelta(minutes=1)
    assert run_id("a", due) == run_id("a", due.astimezone(ZoneInfo("Asia/Shanghai")))
    assert run_id("a", due) != run_id("b", due)
    assert run_id("a", due) != run_id("a", due + timedelta(seconds=1))


def test_one_log_line_per_fired_entry(
    app: Conveyor, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    app.conf.beat_schedule = {
        "a": {"task": "tasks.a", "schedule": 10.0},
        "b": {"task": "tasks.b", "schedule": 10.0},
    }
    beat = Beat(app, name="beat-1")
    beat.tick()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="conveyor.beat"):
        tick_at(beat, clock, T0 + timedelta(seconds=10))
    sent = [r.getMessage() for r in caplog.records if "sent" in r.getMessage()]
    assert len(sent) == 2
    assert sent[0].startswith("beat-1: sent a (tasks.a) due 2024-05-01 00:00:10+00:00, id ")


def test_finalize_runs_on_after_configure_before_reading_the_schedule(app: Conveyor) -> None:
    @app.on_after_configure.connect
    def setup(sender: Conveyor, **_: Any) -> None:
        sender.add_periodic_task(10.0, signature("tasks.hello", args=("hello",)), name="hi")

    beat = Beat(app)
    assert beat.entries["hi"].task == "tasks.hello"
    assert beat.entries["hi"].schedule == every(10)
    assert beat.entries["hi"].args == ("hello",)


# -- time zones --------------------------------------------------------------------------------
def test_crontab_uses_the_app_time_zone(app: Conveyor, clock: Clock) -> None:
    app.conf.timezone = "Asia/Shanghai"
    app.conf.beat_schedule = {
        "morning": {"task": "tasks.m", "schedule": crontab(hour=7, minute=30)},
        "berlin": {
            "task": "tasks.b",
            "schedule": crontab(hour=7, minute=30),
            "tz": "Europe/Berlin",
        },
        "own": {"task": "tasks.o", "schedule": crontab(hour=7, minute=30, tz="America/New_York")},
    }
    beat = Beat(app)
    beat.tick()
    for hour in range(25):
        tick_at(beat, clock, T0 + timedelta(hours=hour, minutes=31))
    sent = {e.headers["periodic_entry"]: e.headers["scheduled_at"] for e in take(app)}
    assert sent == {
        "morning": "2024-05-01T23:30:00+00:00",  # 07:30 in Shanghai on May 2nd
        "berlin": "2024-05-01T05:30:00+00:00",  # 07:30 CEST
        "own": "2024-05-01T11:30:00+00:00",  # 07:30 EDT
    }


@pytest.mark.parametrize(
    ("start", "days"),
    [
        (datetime(2024, 3, 29, tzinfo=UTC), 4),  # over the spring-forward night
        (datetime(2024, 10, 25, tzinfo=UTC), 4),  # over the fall-back night
    ],
)
def test_daily_0230_berlin_once_a_day_across_dst(
    app: Conveyor, clock: Clock, start: datetime, days: int
) -> None:
    app.conf.timezone = "Europe/Berlin"
    app.conf.beat_schedule = {
        "nightly": {"task": "tasks.n", "schedule": crontab(hour=2, minute=30)}
    }
    clock.set(start)
    beat = Beat(app)
    beat.tick()
    for minute in range(0, days * 24 * 60, 5):
        tick_at(beat, clock, start + timedelta(minutes=minute))
    sent = due_times(take(app))
    local_days = [d.astimezone(ZoneInfo("Europe/Berlin")).date() for d in sent]
    assert len(sent) == days
    assert len(set(local_days)) == days


# -- several beats -----------------------------------------------------------------------------
def test_several_beats_send_each_run_once(app: Conveyor, clock: Clock) -> None:
    app.conf.beat_schedule = {"ping": {"task": "tasks.ping", "schedule": 1.0}}
    beats = [Beat(app, name=f"beat-{i}") for i in range(3)]
    for beat in beats:
        beat.tick()
    for step in range(1, 121):
        clock.set(T0 + timedelta(seconds=step * 0.5))
        for beat in beats[step % 3 :] + beats[: step % 3]:
            beat.tick()
    sent = due_times(take(app))
    assert sorted(sent) == seconds(*range(1, 61))


def test_claims_alone_keep_runs_unique_when_progress_records_lag(
    app: Conveyor, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Beats that read ``beat:last`` before the sender updated it all see the run as due."""
    app.conf.beat_schedule = {"ping": {"task": "tasks.ping", "schedule": 1.0}}
    beats = [Beat(app, name=f"beat-{i}") for i in range(3)]
    for beat in beats:
        beat.tick()
    real_set_value = app.kv.set_value

    def lagging(key: str, value: bytes, ttl: float | None = None) -> None:
        if not key.startswith("beat:last:"):
            real_set_value(key, value, ttl)

    monkeypatch.setattr(app.kv, "set_value", lagging)
    for step in range(1, 31):
        clock.set(T0 + timedelta(seconds=step))
        for beat in beats:
            beat.tick()
    assert sorted(due_times(take(app))) == seconds(*range(1, 31))


def test_late_beat_does_not_resend_runs_another_beat_sent(app: Conveyor, clock: Clock) -> None:
    app.conf.beat_schedule = {"ping": {"task": "tasks.ping", "schedule": 1.0}}
    slow, fast = Beat(app, name="slow"), Beat(app, name="fast")
    slow.tick()
    fast.tick()
    for step in range(1, 11):
        tick_at(fast, clock, T0 + timedelta(seconds=step))
    # "slow" wakes up 10 s late, but within stall_after: it still owes nothing
    clock.set(T0 + timedelta(seconds=10.5))
    slow.tick()
    assert sorted(due_times(take(app))) == seconds(*range(1, 11))


# -- restarts and catch-up ---------------------------------------------------------------------
def run_then_restart(
    app: Conveyor, clock: Clock, policy: str, outage: float, **kwargs: Any
) -> tuple[list[datetime], Beat]:
    """Tick every second for 10 s, "crash", restart after ``outage`` s, tick for 5 s more."""
    app.conf.beat_schedule = {"ping": {"task": "tasks.ping", "schedule": 1.0, "catch_up": policy}}
    first = Beat(app, name="first", **kwargs)
    first.tick()
    for step in range(1, 11):
        tick_at(first, clock, T0 + timedelta(seconds=step))
    clock.set(T0 + timedelta(seconds=10 + outage))
    second = Beat(app, name="second", **kwargs)
    second.tick()
    for step in range(1, 6):
        tick_at(second, clock, T0 + timedelta(seconds=10 + outage + step))
    return sorted(due_times(take(app))), second


def test_restart_without_outage_neither_repeats_nor_skips(app: Conveyor, clock: Clock) -> None:
    sent, _ = run_then_restart(app, clock, "skip", outage=0.5)
    assert sent == seconds(*range(1, 16))


def test_catch_up_latest_sends_the_most_recent_missed_run(app: Conveyor, clock: Clock) -> None:
    sent, second = run_then_restart(app, clock, "latest", outage=5.5)
    # 11..15 fell due while no beat ran: only 15 is sent, then 16.. as usual
    assert sent == seconds(*range(1, 11), 15, 16, 17, 18, 19, 20)
    assert second.started_at == T0 + timedelta(seconds=15.5)


def test_catch_up_all_sends_every_missed_run(app: Conveyor, clock: Clock) -> None:
    sent, _ = run_then_restart(app, clock, "all", outage=5.5)
    assert sent == seconds(*range(1, 21))


def test_catch_up_skip_sends_none_of_the_missed_runs(app: Conveyor, clock: Clock) -> None:
    sent, _ = run_then_restart(app, clock, "skip", outage=5.5)
    assert sent == seconds(*range(1, 11), 16, 17, 18, 19, 20)


def test_catch_up_is_logged(app: Conveyor, clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="conveyor.beat"):
        run_then_restart(app, clock, "latest", outage=5.5)
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "5 run(s) of ping fell due while this beat was not running" in warning
    assert "catch_up=latest: sending the latest" in warning


def test_catch_up_all_is_bounded(
    app: Conveyor, clock: Clock, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(scheduler, "MAX_CATCH_UP", 50)
    with caplog.at_level(logging.WARNING, logger="conveyor.beat"):
        sent, _ = run_then_restart(app, clock, "all", outage=3 * 3600 + 0.5)
    restart = 10 + 3 * 3600
    assert sent == seconds(
        *range(1, 11), *range(restart - 49, restart + 1), *range(restart + 1, restart + 6)
    )
    assert any("more than 50 run(s)" in r.getMessage() for r in caplog.records)


def test_long_downtime_of_a_minutely_crontab_is_cheap(app: Conveyor, clock: Clock) -> None:
    app.conf.beat_schedule = {
        "minutely": {"task": "tasks.m", "schedule": crontab(), "catch_up": "all"}
    }
    Beat(app).tick()
    clock.set(T0 + timedelta(days=365))
    started = time.perf_counter()
    Beat(app).tick()
    assert time.perf_counter() - started < 5
    sent = due_times(take(app))
    assert len(sent) == 1000
    assert sent[-1] == T0 + timedelta(days=365)


def test_restart_with_another_beat_alive_loses_nothing(app: Conveyor, clock: Clock) -> None:
    app.conf.beat_schedule = {"ping": {"task": "tasks.ping", "schedule": 1.0, "catch_up": "skip"}}
    alive = Beat(app, name="alive")
    alive.tick()
    for step in range(1, 6):
        tick_at(alive, clock, T0 + timedelta(seconds=step))
    # a new beat starts a hair after 6 fell due, before "alive" got to it
    clock.set(T0 + timedelta(seconds=6.01))
    newcomer = Beat(app, name="newcomer")
    newcomer.tick()  # 6 counts as missed for the newcomer; skip: it leaves it alone
    alive.tick()  # ... and "alive" sends it
    for step in range(7, 10):
        clock.set(T0 + timedelta(seconds=step))
        newcomer.tick()
        alive.tick()
    assert sorted(due_times(take(app))) == seconds(*range(1, 10))


def test_stalled_beat_treats_the_stall_as_downtime(app: Conveyor, clock: Clock) -> None:
    app.conf.beat_schedule = {"ping": {"task": "tasks.ping", "schedule": 1.0, "catch_up": "latest"}}
    beat = Beat(app, stall_after=10.0)
    beat.tick()
    tick_at(beat, clock, T0 + timedelta(seconds=1))
    tick_at(beat, clock, T0 + timedelta(seconds=60.5))  # e.g. the machine slept
    assert due_times(take(app)) == seconds(1, 60)


def test_progress_lives_in_the_broker(app: Conveyor, clock: Clock) -> None:
    app.conf.beat_schedule = {"ping": {"task": "tasks.ping", "schedule": 1.0}}
    beat = Beat(app, name="b1")
    beat.tick()
    tick_at(beat, clock, T0 + timedelta(seconds=1))
    record = json.loads(app.kv.get_value("beat:last:ping") or b"")
    due = T0 + timedelta(seconds=1)
    assert record["due"] == due.isoformat()
    assert record["task_id"] == run_id("ping", due)
    assert record["beat"] == "b1"
    assert app.kv.claim(f"beat:claim:ping:{due.isoformat()}", 60) is False


def test_on_sent_is_called_once_per_run_across_beats(app: Conveyor, clock: Clock) -> None:
    recorded: list[tuple[str, datetime, str]] = []

    class Recording(Beat):
        def on_sent(self, entry: Entry, instant: datetime, task_id: str) -> None:
            recorded.append((entry.name, instant, task_id))
            raise RuntimeError("a failing hook does not stop the beat")

    app.conf.beat_schedule = {"ping": {"task": "tasks.ping", "schedule": 1.0}}
    beats = [Recording(app), Recording(app)]
    for step in range(3):
        clock.set(T0 + timedelta(seconds=step))
        for beat in beats:
            beat.tick()
    due = T0 + timedelta(seconds=1)
    assert recorded == [
        ("ping", due, run_id("ping", due)),
        ("ping", due + timedelta(seconds=1), run_id("ping", due + timedelta(seconds=1))),
    ]
    assert len(take(app)) == 2


# -- runtime changes ---------------------------------------------------------------------------
def test_entries_added_and_removed_at_runtime(app: Conveyor, clock: Clock) -> None:
    app.conf.beat_schedule = {"a": {"task": "tasks.a", "schedule": 10.0}}
    beat = Beat(app)
    beat.tick()
    tick_at(beat, clock, T0 + timedelta(seconds=10))
    app.conf.beat_schedule = {**app.conf.beat_schedule, "b": {"task": "tasks.b", "schedule": 10.0}}
    tick_at(beat, clock, T0 + timedelta(seconds=12))
    tick_at(beat, clock, T0 + timedelta(seconds=20))
    app.conf.beat_schedule = {"b": {"task": "tasks.b", "schedule": 10.0}}
    tick_at(beat, clock, T0 + timedelta(seconds=30))
    sent = [(e.headers["periodic_entry"], e.headers["scheduled_at"][17:19]) for e in take(app)]
    assert sent == [("a", "10"), ("a", "20"), ("b", "20"), ("b", "30")]


def test_disabled_entry_stops_and_does_not_catch_up_when_enabled(
    app: Conveyor, clock: Clock
) -> None:
    entry = {"task": "tasks.a", "schedule": 10.0, "catch_up": "all"}
    app.conf.beat_schedule = {"a": entry}
    beat = Beat(app)
    beat.tick()
    tick_at(beat, clock, T0 + timedelta(seconds=10))
    app.conf.beat_schedule = {"a": {**entry, "enabled": False}}
    for offset in (20, 30, 40):
        tick_at(beat, clock, T0 + timedelta(seconds=offset))
    app.conf.beat_schedule = {"a": entry}
    for offset in (45, 50):
        tick_at(beat, clock, T0 + timedelta(seconds=offset))
    assert due_times(take(app)) == seconds(10, 50)
    # a beat started later does not catch up on the disabled period either
    clock.set(T0 + timedelta(seconds=55))
    Beat(app).tick()
    assert take(app) == []


def test_entry_disabled_while_no_beat_ran_is_not_caught_up(app: Conveyor, clock: Clock) -> None:
    entry = {"task": "tasks.a", "schedule": 10.0, "catch_up": "all"}
    app.conf.beat_schedule = {"a": entry}
    Beat(app).tick()
    tick_at(Beat(app), clock, T0 + timedelta(seconds=10))
    app.conf.beat_schedule = {"a": {**entry, "enabled": False}}
    tick_at(Beat(app), clock, T0 + timedelta(seconds=15))
    app.conf.beat_schedule = {"a": entry}
    tick_at(Beat(app), clock, T0 + timedelta(seconds=65))
    assert due_times(take(app)) == seconds(10)


def test_changed_schedule_applies_from_now_on(app: Conveyor, clock: Clock) -> None:
    app.conf.beat_schedule = {"a": {"task": "tasks.a", "schedule": crontab(hour=7, minute=0)}}
    beat = Beat(app)
    beat.tick()
    tick_at(beat, clock, T0 + timedelta(hours=7))
    # at 10:00 the entry moves to 08:00: that has passed today, so the next run is tomorrow
    app.conf.beat_schedule = {"a": {"task": "tasks.a", "schedule": crontab(hour=8, minute=0)}}
    tick_at(beat, clock, T0 + timedelta(hours=10))
    tick_at(beat, clock, T0 + timedelta(hours=32))
    assert due_times(take(app)) == [T0 + timedelta(hours=7), T0 + timedelta(hours=32)]


def test_changed_arguments_keep_the_schedule(app: Conveyor, clock: Clock) -> None:
    app.conf.beat_schedule = {"a": {"task": "tasks.a", "schedule": 10.0, "args": [1]}}
    beat = Beat(app)
    beat.tick()
    tick_at(beat, clock, T0 + timedelta(seconds=5))
    app.conf.beat_schedule = {"a": {"task": "tasks.a", "schedule": 10.0, "args": [2]}}
    tick_at(beat, clock, T0 + timedelta(seconds=10))
    [message] = take(app)
    assert message.args == [2]


def test_set_entries_replaces_the_app_schedule(app: Conveyor, clock: Clock) -> None:
    app.conf.beat_schedule = {"a": {"task": "tasks.a", "schedule": 10.0}}
    beat = Beat(app)
    beat.tick()
    beat.set_entries({"b": {"task": "tasks.b", "schedule": "* * * * *"}})
    assert set(beat.entries) == {"b"}
    for offset in (30, 60):
        tick_at(beat, clock, T0 + timedelta(seconds=offset))
    assert [e.headers["periodic_entry"] for e in take(app)] == ["b"]
    beat.set_entries(None)
    # "a" was paused meanwhile: it starts afresh, without catching up
    for offset in (65, 70):
        tick_at(beat, clock, T0 + timedelta(seconds=offset))
    assert due_times(take(app)) == seconds(70)


def test_set_entries_refuses_invalid_entries(app: Conveyor) -> None:
    beat = Beat(app, entries={"a": {"task": "tasks.a", "schedule": 10.0}})
    with pytest.raises(InvalidSchedule, match=r"beat_schedule\['b'\]"):
        beat.set_entries({"b": {"task": "tasks.b", "schedule": -1}})
    assert set(beat.entries) == {"a"}


def test_invalid_entry_at_runtime_is_logged_once_and_keeps_its_last_good_version(
    app: Conveyor, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    app.conf.beat_schedule = {"a": {"task": "tasks.a", "schedule": 10.0}}
    beat = Beat(app)
    beat.tick()
    app.conf.beat_schedule = {"a": {"task": "tasks.a", "schedule": "61 * * * *"}}
    with caplog.at_level(logging.ERROR, logger="conveyor.beat"):
        for offset in (5, 10):
            tick_at(beat, clock, T0 + timedelta(seconds=offset))
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "crontab minute='61'" in errors[0]
    assert "keeping its previous version" in errors[0]
    assert due_times(take(app)) == seconds(10)


def test_invalid_schedule_at_startup_raises(app: Conveyor) -> None:
    app.conf.beat_schedule = {"a": {"task": "tasks.a", "schedule": crontab.from_string}}
    with pytest.raises(InvalidSchedule, match=r"beat_schedule\['a'\]: a schedule must be"):
        Beat(app)


def test_clocked_entry_fires_once(app: Conveyor, clock: Clock) -> None:
    at = T0 + timedelta(minutes=5)
    app.conf.beat_schedule = {"once": {"task": "tasks.once", "schedule": clocked(at)}}
    beat = Beat(app)
    beat.tick()
    for minute in range(1, 20):
        tick_at(beat, clock, T0 + timedelta(minutes=minute))
    assert due_times(take(app)) == [at]
    assert tick_at(beat, clock, T0 + timedelta(hours=1)) == pytest.approx(5.0, abs=0.01)


# -- failures ----------------------------------------------------------------------------------
def test_send_failure_is_retried_with_the_same_id(
    app: Conveyor, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    app.conf.beat_schedule = {"a": {"task": "tasks.a", "schedule": 10.0}}
    beat = Beat(app)
    beat.tick()
    real_send = app.send_call
    calls = Counter[str]()

    def flaky(name: str, args: Any, kwargs: Any, options: Any, **extra: Any) -> Any:
        calls[options["task_id"]] += 1
        if calls[options["task_id"]] == 1:
            raise ConnectionError("broker unreachable")
        return real_send(name, args, kwargs, options, **extra)

    monkeypatch.setattr(app, "send_call", flaky)
    assert tick_at(beat, clock, T0 + timedelta(seconds=10)) <= 1.01
    other = Beat(app)  # holds no claim: it must not send the run the first beat owns
    other.tick()
    assert take(app) == []
    tick_at(beat, clock, T0 + timedelta(seconds=11))
    [message] = take(app)
    assert message.id == run_id("a", T0 + timedelta(seconds=10))
    assert calls[message.id] == 2


def test_options_the_app_refuses_are_refused_when_loading(app: Conveyor) -> None:
    app.conf.beat_schedule = {
        "a": {"task": "tasks.a", "schedule": 10.0, "options": {"priority": 12}}
    }
    with pytest.raises(InvalidSchedule, match=r"beat_schedule\['a'\]: priority must be"):
        Beat(app)


def test_unsendable_run_is_dropped_with_an_error(
    app: Conveyor, clock: Clock, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    app.conf.beat_schedule = {"a": {"task": "tasks.a", "schedule": 10.0}}
    beat = Beat(app)
    beat.tick()

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise SerializationError("message too large")

    monkeypatch.setattr(app, "send_call", refuse)
    with caplog.at_level(logging.ERROR, logger="conveyor.beat"):
        tick_at(beat, clock, T0 + timedelta(seconds=10))
        tick_at(beat, clock, T0 + timedelta(seconds=11))
    assert take(app) == []
    [error] = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert "cannot send a due" in error and "message too large" in error


def test_broker_errors_in_run_are_retried(
    app: Conveyor, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    app.conf.beat_schedule = {"a": {"task": "tasks.a", "schedule": 0.05}}
    failures = [ConnectionError("broker down")]

    def flaky_time() -> float:
        if failures:
            raise failures.pop()
        return time.time()

    beat = Beat(app, max_interval=0.2)
    monkeypatch.setattr(app.broker, "time", flaky_time)
    stop = threading.Event()
    thread = threading.Thread(target=beat.run, args=(stop,))
    thread.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not app.broker.stats(["default"])["default"].ready:
        time.sleep(0.01)
    stop.set()
    thread.join(5)
    assert not thread.is_alive()
    assert app.broker.stats(["default"])["default"].ready >= 1
    assert any("tick failed; retrying" in r.getMessage() for r in caplog.records)


# -- entry validation --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("daily", "must be a dict"),
        ({"schedule": 10}, "'task' must be a task name"),
        ({"task": "t"}, "'schedule' is missing"),
        ({"task": "t", "schedule": 10, "when": 1}, "unknown key\\(s\\) 'when'"),
        ({"task": "t", "schedule": 10, "catch_up": "some"}, "'catch_up' must be one of"),
        ({"task": "t", "schedule": 10, "args": "ab"}, "'args' must be a list"),
        ({"task": "t", "schedule": 10, "kwargs": [1]}, "'kwargs' must be a dict"),
        ({"task": "t", "schedule": 10, "options": {"colour": 1}}, "option\\(s\\) 'colour'"),
        ({"task": "t", "schedule": 10, "options": {"task_id": "x"}}, "option\\(s\\) 'task_id'"),
        ({"task": "t", "schedule": 10, "enabled": "no"}, "'enabled' must be True or False"),
        ({"task": "t", "schedule": 10, "tz": "Nowhere/Town"}, "unknown time zone"),
        ({"task": "t", "schedule": 10, "args": [object()]}, "cannot send task 't'"),
        ({"task": "t", "schedule": "1 2 3"}, "must have 5 fields"),
    ],
)
def test_entry_validation(spec: Any, message: str) -> None:
    with pytest.raises(InvalidSchedule, match=r"beat_schedule\['e'\]") as info:
        Entry.from_config("e", spec)
    assert info.match(message)


def test_entry_accepts_celery_forms() -> None:
    entry = Entry.from_config(
        "e",
        {
            "task": "t",
            "schedule": timedelta(minutes=5),
            "args": [1],
            "relative": True,
            "options": {"queue": "q", "expires": 10, "routing_key": "q"},
        },
    )
    assert entry.schedule == every(300)
    assert entry.args == (1,)
    assert entry.catch_up == "latest"
    assert entry.enabled


# -- running -----------------------------------------------------------------------------------
def test_run_stops_promptly_and_reload_wakes_it(app: Conveyor) -> None:
    app.conf.beat_schedule = {}
    beat = Beat(app, max_interval=30.0)
    stop = threading.Event()
    thread = threading.Thread(target=beat.run, args=(stop,))
    thread.start()
    deadline = time.monotonic() + 10
    while beat.started_at is None and time.monotonic() < deadline:
        time.sleep(0.01)
    with beat._lock:  # the first tick is over: the loop now sleeps up to 30 s
        app.conf.beat_schedule = {"a": {"task": "tasks.a", "schedule": 0.01}}
    beat.reload()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "a" not in beat.entries:
        time.sleep(0.01)
    assert "a" in beat.entries
    started = time.monotonic()
    stop.set()
    thread.join(5)
    assert not thread.is_alive()
    assert time.monotonic() - started < 1.0


def test_run_beat_runs_until_stopped(app: Conveyor, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(app.broker, "time", time.time)
    app.conf.beat_schedule = {"a": {"task": "tasks.a", "schedule": 0.05}}
    stop = threading.Event()
    thread = threading.Thread(target=run_beat, args=(app, stop), kwargs={"max_interval": 0.5})
    thread.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and app.broker.stats(["default"])["default"].ready < 3:
        time.sleep(0.01)
    stop.set()
    thread.join(5)
    assert not thread.is_alive()
    sent = due_times(take(app))
    assert len(sent) >= 3
    assert len(sent) == len(set(sent))
