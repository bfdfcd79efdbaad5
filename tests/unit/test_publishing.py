"""Publish retries (conveyor.publishing): the policy, which errors are retried, the options
and settings, and the wiring into ``Conveyor._publish`` - without sleeping for real."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Sequence

import pytest

from conveyor import Conveyor, states
from conveyor.brokers.base import Message
from conveyor.config import Settings
from conveyor.exceptions import BrokerError, ConfigurationError, ResultStoreError
from conveyor.publishing import (
    DEFAULT_POLICY,
    RetryPolicy,
    is_connection_error,
    publish_policy,
    publish_with_retry,
)
from conveyor.results.base import ResultRecord
from conveyor.settlement import Settlement
from conveyor.testing import TestWorker


def caused(error: type[BrokerError | ResultStoreError], cause: BaseException) -> BaseException:
    """``error`` raised from ``cause``, as the brokers' error mappers raise it."""
    try:
        raise error(f"broker at redis://***@host: {cause}") from cause
    except (BrokerError, ResultStoreError) as exc:
        return exc


def connection_lost() -> BaseException:
    return caused(BrokerError, ConnectionRefusedError(111, "Connection refused"))


class Flaky:
    """A publish that fails with the given errors, then succeeds."""

    def __init__(self, errors: Sequence[BaseException]) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)


class Sleeps:
    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def where() -> str:
    return "redis://***@host:6379/0"


# -- the policy ---------------------------------------------------------------------------
def test_celery_schedule_with_conveyor_defaults() -> None:
    assert (
        RetryPolicy(max_retries=10, interval_start=0.0, interval_step=0.5, interval_max=2.0)
        == DEFAULT_POLICY
    )
    assert list(DEFAULT_POLICY.delays()) == [0.0, 0.5, 1.0, 1.5, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0]
    assert DEFAULT_POLICY.total_wait == 15.0


def test_celery_default_policy_and_unbounded_policy() -> None:
    celery = RetryPolicy(max_retries=3, interval_start=0, interval_step=0.2, interval_max=0.2)
    assert list(celery.delays()) == [0, 0.2, 0.2]
    forever = RetryPolicy(max_retries=None)
    assert forever.total_wait is None
    delays = forever.delays()
    assert [next(delays) for _ in range(12)][-1] == 2.0


def test_mapping_fills_missing_keys_and_names_bad_ones() -> None:
    assert RetryPolicy.from_mapping({"max_retries": 2}) == RetryPolicy(max_retries=2)
    base = RetryPolicy(max_retries=1, interval_max=9.0)
    assert RetryPolicy.from_mapping({"interval_step": 3}, base) == RetryPolicy(
        max_retries=1, interval_step=3, interval_max=9.0
    )
    with pytest.raises(ConfigurationError, match=r"unknown retry_policy key.*max_retry"):
        RetryPolicy.from_mapping({"max_retry": 2})
    with pytest.raises(ConfigurationError, match="max_retries"):
        RetryPolicy.from_mapping({"max_retries": -1})
    with pytest.raises(ConfigurationError, match="max_retries"):
        RetryPolicy.from_mapping({"max_retries": True})
    with pytest.raises(ConfigurationError, match="interval_max"):
        RetryPolicy.from_mapping({"interval_max": "soon"})


# -- which errors are retried --------------------------------------------------------------
def test_connection_errors_are_retryable() -> None:
    redis = pytest.importorskip("redis")
    assert is_connection_error(connection_lost())
    assert is_connection_error(caused(BrokerError, TimeoutError("timed out")))
    assert is_connection_error(caused(BrokerError, redis.ConnectionError("reset by peer")))
    assert is_connection_error(caused(BrokerError, redis.TimeoutError("Timeout reading")))
    assert is_connection_error(caused(ResultStoreError, redis.ConnectionError("refused")))
    busy = sqlite3.connect(":memory:")
    try:
        locked = sqlite3.OperationalError("database is locked")
        locked.sqlite_errorcode = sqlite3.SQLITE_BUSY
        assert is_connection_error(caused(BrokerError, locked))
    finally:
        busy.close()


def test_refused_or_invalid_messages_are_not_retryable() -> None:
    redis = pytest.importorskip("redis")
    assert not is_connection_error(BrokerError("refused"))
    assert not is_connection_error(caused(BrokerError, redis.ResponseError("OOM command")))
    assert not is_connection_error(caused(BrokerError, sqlite3.IntegrityError("constraint")))
    assert not is_connection_error(ConnectionRefusedError())  # not a broker error
    full = sqlite3.OperationalError("database or disk is full")
    full.sqlite_errorcode = sqlite3.SQLITE_FULL
    assert not is_connection_error(caused(BrokerError, full))


# -- the retry loop -----------------------------------------------------------------------
def test_retries_connection_errors_then_succeeds(caplog: pytest.LogCaptureFixture) -> None:
    publish, sleeps = Flaky([connection_lost(), connection_lost(), connection_lost()]), Sleeps()
    with caplog.at_level(logging.WARNING, logger="conveyor.publishing"):
        retries = publish_with_retry(publish, DEFAULT_POLICY, where=where, sleep=sleeps)
    assert (retries, publish.calls, sleeps.waits) == (3, 4, [0.0, 0.5, 1.0])
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3
    assert all(r.levelno == logging.WARNING for r in caplog.records)
    assert "publish to redis://***@host:6379/0 failed" in lines[0]
    assert "retry 3/10 in 1.00s" in lines[2]


def test_gives_up_after_max_retries_with_the_last_error() -> None:
    errors = [connection_lost() for _ in range(5)]
    publish, sleeps = Flaky(errors), Sleeps()
    policy = RetryPolicy(max_retries=3, interval_start=0.1, interval_step=0.1, interval_max=0.25)
    with pytest.raises(BrokerError) as raised:
        publish_with_retry(publish, policy, where=where, sleep=sleeps)
    assert raised.value is errors[3]
    assert (publish.calls, sleeps.waits) == (4, [0.1, 0.2, 0.25])


def test_no_policy_fails_at_once() -> None:
    publish, sleeps = Flaky([connection_lost()]), Sleeps()
    with pytest.raises(BrokerError):
        publish_with_retry(publish, None, where=where, sleep=sleeps)
    assert (publish.calls, sleeps.waits) == (1, [])


def test_other_errors_are_never_retried() -> None:
    for error in (BrokerError("NOSCRIPT? no: refused"), ValueError("bad message")):
        publish, sleeps = Flaky([error]), Sleeps()
        with pytest.raises(type(error)):
            publish_with_retry(publish, DEFAULT_POLICY, where=where, sleep=sleeps)
        assert (publish.calls, sleeps.waits) == (1, [])


# -- options and settings -------------------------------------------------------------------
def test_settings_default_and_validation() -> None:
    conf = Settings()
    assert conf.task_publish_retry is True
    assert conf.task_publish_retry_policy == DEFAULT_POLICY.as_dict()
    conf.task_publish_retry_policy = {"max_retries": 2}
    assert conf.task_publish_retry_policy["max_retries"] == 2
    assert conf.task_publish_retry_policy["interval_max"] == 2.0
    with pytest.raises(ConfigurationError, match=r"task_publish_retry_policy.*interval_strat"):
        conf.task_publish_retry_policy = {"interval_strat": 1}
    with pytest.raises(ConfigurationError, match="task_publish_retry"):
        conf.task_publish_retry = "maybe"


def test_call_options_over_settings() -> None:
    conf = Settings(task_publish_retry_policy={"max_retries": 4, "interval_max": 1})
    assert publish_policy({}, conf) == RetryPolicy(max_retries=4, interval_max=1)
    assert publish_policy({"retry_policy": {"max_retries": 1}}, conf) == RetryPolicy(
        max_retries=1, interval_max=1
    )
    assert publish_policy({"retry": False}, conf) is None
    conf.task_publish_retry = False
    assert publish_policy({}, conf) is None
    assert publish_policy({"retry": True}, conf) == RetryPolicy(max_retries=4, interval_max=1)


def test_bad_options_raise_at_the_call_site_naming_the_key() -> None:
    app = Conveyor("t", broker="memory://", set_as_default=False)

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    with pytest.raises(ConfigurationError, match="max_retrys"):
        add.apply_async((1, 2), retry_policy={"max_retrys": 1})
    with pytest.raises(ConfigurationError, match="interval_step"):
        app.send_task("add", (1, 2), retry_policy={"interval_step": -1})
    with pytest.raises(ConfigurationError, match="retry must be True or False"):
        add.apply_async((1, 2), retry="yes")
    assert app.broker.stats(["default"])["default"].ready == 0


# -- wired into Conveyor._publish -----------------------------------------------------------
class FailingSettlement(Settlement):
    """The app's real settlement, failing its first publishes with a lost connection (the
    broker's behaviour during an outage, which the integration tests show on real servers)."""

    def __init__(self, real: Settlement, failures: int) -> None:
        super().__init__(real.broker, real.results)
        self.real = real
        self.failures = failures
        self.attempts = 0

    def publish(self, messages: Sequence[Message], records: Sequence[ResultRecord]) -> None:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise connection_lost()
        self.real.publish(messages, records)


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch) -> Conveyor:
    # no real waiting in unit tests: the retry loop's sleep is time.sleep
    monkeypatch.setattr("conveyor.publishing.time.sleep", lambda seconds: None)
    return Conveyor("t", broker="memory://", set_as_default=False)


def test_delay_retries_and_publishes_once(app: Conveyor) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    failing = FailingSettlement(app.settlement, failures=3)
    app._settlement = failing
    result = add.delay(1, 2)
    assert failing.attempts == 4
    [got] = app.broker.lease(["default"], 10, 0)
    assert got.id == result.id


def test_retry_false_fails_fast(app: Conveyor) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    failing = FailingSettlement(app.settlement, failures=1)
    app._settlement = failing
    with pytest.raises(BrokerError):
        add.apply_async((1, 2), retry=False)
    assert failing.attempts == 1
    app.conf.task_publish_retry = False
    failing.attempts, failing.failures = 0, 1
    with pytest.raises(BrokerError):
        add.delay(1, 2)
    assert failing.attempts == 1


def test_send_many_retries_the_batch(app: Conveyor) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    failing = FailingSettlement(app.settlement, failures=2)
    app._settlement = failing
    results = app.send_many([add.s(1, 2), add.s(3, 4)])
    assert failing.attempts == 3
    got = app.broker.lease(["default"], 10, 0)
    assert [d.id for d in got] == [r.id for r in results]


class LandedThenLost(Settlement):
    """The first publish lands (records and message), then its reply is lost; meanwhile a
    worker runs the task to the end. The producer's retry must not write QUEUED over that."""

    def __init__(self, real: Settlement, finish: Callable[[], None]) -> None:
        super().__init__(real.broker, real.results)
        self.real = real
        self.finish = finish
        self.stored: list[list[str]] = []

    def publish(self, messages: Sequence[Message], records: Sequence[ResultRecord]) -> None:
        self.stored.append([record.state for record in records])
        self.real.publish(messages, records)
        if len(self.stored) == 1:
            self.finish()
            raise connection_lost()


def test_a_retried_publish_never_writes_queued_over_a_finished_task(app: Conveyor) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    def run_everything() -> None:
        with TestWorker(app) as worker:
            worker.run_until_idle()

    landing = LandedThenLost(app.settlement, run_everything)
    app._settlement = landing
    result = add.delay(1, 2)
    assert landing.stored == [[states.QUEUED], []]  # the retry stored no record
    assert result.state == states.SUCCESS and result.get(timeout=5) == 3
    assert app.broker.lease(["default"], 10, 0) == []  # and published nothing twice
