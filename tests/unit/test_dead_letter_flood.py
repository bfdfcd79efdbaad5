"""A flood of malformed messages (issue 20): their dead letters ride on the consumer's next
lease (no settling call of their own), a failed write is retried, and the log has a line per
burst and a summary per interval instead of a line per message."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from conveyor import Conveyor
from conveyor.brokers.base import Delivery, Message
from conveyor.exceptions import BrokerError
from conveyor.testing import TestWorker, make_test_app
from conveyor.worker.consumer import more_for_slotless
from conveyor.worker.deadlog import DeadLetterLog
from tests.conftest import wait_until
from tests.helpers import consuming

BAD = [b"\xff not json", b"[1, 2]", b'{"id": "x", "task": 5}', b'{"id": "u", "task": "nope"}']


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def log(caplog: pytest.LogCaptureFixture) -> tuple[DeadLetterLog, Clock]:
    caplog.set_level(logging.DEBUG, logger="tests.deadlog")
    clock = Clock()
    return DeadLetterLog(logging.getLogger("tests.deadlog"), 10.0, clock), clock


def lines(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == level]


# -- the rate-limited log ------------------------------------------------------------------
def test_first_of_a_burst_in_full_then_a_summary_per_interval(
    log: tuple[DeadLetterLog, Clock], caplog: pytest.LogCaptureFixture
) -> None:
    dead, clock = log
    dead.dead_lettered("m0", "q", "malformed", "not JSON")
    for i in range(1, 6):
        clock.now += 1
        dead.dead_lettered(f"m{i}", "q", "unknown_task" if i % 2 else "malformed", "why")
    dead.flush()  # 5 s into the interval: nothing due
    [first] = lines(caplog, logging.WARNING)
    assert first.startswith("dead-lettered message m0 from q (malformed): not JSON")
    assert len(lines(caplog, logging.DEBUG)) == 5  # every one after the first, at DEBUG

    clock.now += 5  # the interval passed: the next message brings the summary
    dead.dead_lettered("m6", "q", "malformed", "why")
    summary = lines(caplog, logging.WARNING)[1:]
    assert summary == [
        "dead-lettered 5 more message(s) from q in the last 10 s: unknown_task 3, malformed 2 "
        "(reasons and details kept in the dead-letter queue: conveyor dlq list)"
    ]
    # The burst goes on: m6 is counted for the next summary, not logged in full.
    assert len(lines(caplog, logging.WARNING)) == 2
    clock.now += 10
    dead.flush()  # the heartbeat's: the burst's last count
    assert lines(caplog, logging.WARNING)[-1].startswith("dead-lettered 1 more message(s) from q")


def test_a_quiet_interval_ends_the_burst(
    log: tuple[DeadLetterLog, Clock], caplog: pytest.LogCaptureFixture
) -> None:
    dead, clock = log
    dead.dead_lettered("a", "q", "malformed", "one")
    clock.now += 10
    dead.flush()  # nothing followed the first: no summary, the burst is over
    clock.now += 1
    dead.dead_lettered("b", "q", "undecodable", "two")
    warnings = lines(caplog, logging.WARNING)
    assert len(warnings) == 2
    assert warnings[1].startswith("dead-lettered message b from q (undecodable): two")


def test_bursts_are_per_queue_and_the_final_flush_logs_what_is_left(
    log: tuple[DeadLetterLog, Clock], caplog: pytest.LogCaptureFixture
) -> None:
    dead, _ = log
    for queue in ("a", "b", "a", "a", "b"):
        dead.dead_lettered("m", queue, "malformed", "x", logging.ERROR)
    assert len(lines(caplog, logging.ERROR)) == 2  # the first of each queue, at its level
    dead.flush()
    assert lines(caplog, logging.WARNING) == []
    dead.flush(final=True)
    assert sorted(m.split(" in the last")[0] for m in lines(caplog, logging.WARNING)) == [
        "dead-lettered 1 more message(s) from b",
        "dead-lettered 2 more message(s) from a",
    ]
    dead.flush(final=True)
    assert len(lines(caplog, logging.WARNING)) == 2


def test_nothing_at_debug_is_formatted_when_debug_is_off(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="tests.deadlog-quiet")
    dead = DeadLetterLog(logging.getLogger("tests.deadlog-quiet"), 10.0, Clock())
    for i in range(100):
        dead.dead_lettered(f"m{i}", "q", "malformed", "x")
    assert len(caplog.records) == 1


# -- dead letters ride on the next lease -----------------------------------------------------
class Spy:
    """Counts the settlement's dead letters: riding on ``ack_and_lease`` or on their own."""

    def __init__(self, app: Conveyor, monkeypatch: pytest.MonkeyPatch) -> None:
        settlement = app.settlement
        self.riding: list[str] = []
        self.own_calls = 0
        ack_and_lease, dead_letter_many = settlement.ack_and_lease, settlement.dead_letter_many

        def riding(*args: Any) -> list[Delivery]:
            dead: Sequence[tuple[Delivery, str, str]] = args[5] if len(args) > 5 else ()
            self.riding += [d.id for d, _, _ in dead]
            return ack_and_lease(*args)

        def own(letters: Sequence[tuple[Delivery, str, str]]) -> None:
            self.own_calls += 1
            dead_letter_many(letters)

        monkeypatch.setattr(settlement, "ack_and_lease", riding)
        monkeypatch.setattr(settlement, "dead_letter_many", own)


def flood(app: Conveyor, count: int) -> list[Message]:
    return [Message(f"bad-{i}", "default", BAD[i % len(BAD)]) for i in range(count)]


@pytest.fixture
def sqlite_app(tmp_path: Path) -> Iterator[Conveyor]:
    """An app on an SQLite file (results in it too): its settlement takes dead letters
    along with a lease."""
    app = make_test_app("tests", broker=f"sqlite:///{tmp_path}/broker.db")
    yield app
    app.close()


def run_flood(app: Conveyor, count: int) -> tuple[list[int], list[Message]]:
    """``count`` good tasks and ``count`` malformed messages interleaved, drained by a
    TestWorker; the good tasks' arguments as they ran, and the bad messages."""
    ran: list[int] = []

    @app.task(name="good")
    def good(i: int) -> None:
        ran.append(i)

    bad = flood(app, count)
    for i, message in enumerate(bad):
        good.delay(i)
        app.broker.publish([message])
    with TestWorker(app, concurrency=2) as worker:
        wait_until(lambda: len(app.broker.dead_letters(1000)) == count, 20, "dead letters")
        wait_until(lambda: len(ran) == count, 20, "good tasks")
        worker.drain(10)
    return ran, bad


def test_malformed_messages_ride_on_the_lease_and_good_ones_run_once(
    sqlite_app: Conveyor, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = sqlite_app
    assert app.settlement.dead_letters_ride
    spy = Spy(app, monkeypatch)
    with caplog.at_level(logging.WARNING, logger="conveyor.worker"):
        ran, bad = run_flood(app, 200)
    assert sorted(ran) == list(range(200))
    letters = app.broker.dead_letters(1000)
    assert {d.id for d in letters} == {m.id for m in bad}
    reasons = {d.id: d.reason for d in letters}
    assert {reasons[f"bad-{i}"] for i in range(4)} == {"undecodable", "malformed", "unknown_task"}
    assert all(d.detail for d in letters)
    assert app.results.get("u") is not None  # an unknown task's FAILURE record, stored first
    assert sorted(spy.riding) == sorted(m.id for m in bad)
    assert spy.own_calls == 0
    dead_lines = [r.getMessage() for r in caplog.records if "dead-lettered" in r.getMessage()]
    # The first in full, then (stop's final flush, or an interval's) summaries of the rest.
    assert dead_lines[0].startswith("dead-lettered message bad-0 from default")
    assert len(dead_lines) < 10
    summed = sum(int(line.split()[1]) for line in dead_lines[1:])
    assert summed == 199


def test_where_nothing_rides_with_the_lease_the_finisher_dead_letters(
    app: Conveyor, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert not app.settlement.dead_letters_ride  # the memory broker's generic settlement
    spy = Spy(app, monkeypatch)
    ran, bad = run_flood(app, 50)
    assert sorted(ran) == list(range(50))
    assert {d.id for d in app.broker.dead_letters(1000)} == {m.id for m in bad}
    assert spy.riding == []
    assert spy.own_calls > 0


def test_a_dead_letter_that_could_not_be_written_is_written_later(
    sqlite_app: Conveyor, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, broker = sqlite_app, sqlite_app.broker
    settlement = app.settlement
    real = settlement.ack_and_lease
    failures = [BrokerError("injected: broker unreachable")] * 2

    def flaky(*args: Any) -> list[Delivery]:
        if failures and len(args) > 5 and args[5]:  # a call carrying dead letters
            raise failures.pop()
        return real(*args)

    monkeypatch.setattr(settlement, "ack_and_lease", flaky)

    @app.task(name="good")
    def good() -> str:
        return "ran"

    broker.publish([Message("bad", "default", b"\x00 not json")])
    with TestWorker(app, concurrency=2):
        dead = wait_until(broker.dead_letters, 20, "the dead letter, retried")
        assert good.delay().get(timeout=10) == "ran"
    assert failures == []
    assert [(d.id, d.reason, d.delivery_count) for d in dead] == [("bad", "undecodable", 1)]
    stats = broker.stats(["default"])["default"]
    assert (stats.ready, stats.leased, stats.dead) == (0, 0, 1)


# -- a lease after slotless messages is larger -------------------------------------------------
@pytest.mark.parametrize(
    ("seen", "slotless", "extra"),
    [(0, 0, 0), (16, 0, 0), (16, 8, 16), (32, 16, 16), (16, 16, 16), (20, 2, 1), (16, 4, 5)],
)
def test_more_for_slotless_keeps_the_runnable_share_of_a_lease(
    seen: int, slotless: int, extra: int
) -> None:
    assert more_for_slotless(16, seen, slotless) == extra


def test_an_adaptive_lease_loop_leases_more_while_half_its_messages_are_malformed(
    app: Conveyor, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran: list[int] = []

    @app.task(name="good")
    def good(i: int) -> None:
        ran.append(i)

    limits: list[int] = []
    ack_and_lease, lease = app.settlement.ack_and_lease, app.broker.lease

    def seen_ack_and_lease(*args: Any) -> list[Delivery]:
        limits.append(args[3])
        return ack_and_lease(*args)

    def seen_lease(queues: Sequence[str], limit: int, wait: float) -> list[Delivery]:
        limits.append(limit)
        return lease(queues, limit, wait)

    monkeypatch.setattr(app.settlement, "ack_and_lease", seen_ack_and_lease)
    monkeypatch.setattr(app.broker, "lease", seen_lease)
    for i in range(20):  # short tasks alone first: the prefetch learns they are short
        good.delay(i)
    bad = flood(app, 300)
    for i, message in enumerate(bad, 20):
        good.delay(i)
        app.broker.publish([message])
    with consuming(app) as worker:
        wait_until(lambda: len(ran) == 320, 20, "good tasks")
        wait_until(lambda: len(app.broker.dead_letters(1000)) == 300, 20, "dead letters")
    assert worker.prefetch is not None
    most = worker.prefetch.most
    assert max(limits) > most  # one lease per `most` good messages, not per `most` messages
    assert max(limits) <= 2 * most


def test_dead_letters_a_failing_before_settle_saw_are_delivered_again(
    sqlite_app: Conveyor,
) -> None:
    app = sqlite_app
    failures = [RuntimeError("injected: before_settle failed")]

    def before_settle(outcomes: list[Any]) -> None:
        if failures and any(o.delivery is not None and o.delivery.id == "bad" for o in outcomes):
            raise failures.pop()

    app.broker.publish([Message("bad", "default", b"\x01 not json")])
    with TestWorker(app, before_settle=before_settle):
        dead = wait_until(app.broker.dead_letters, 20, "the dead letter, after a redelivery")
    assert failures == []
    # Left unsettled the first time: its lease expired and the next delivery settled it.
    assert [(d.id, d.reason, d.delivery_count) for d in dead] == [("bad", "undecodable", 2)]
