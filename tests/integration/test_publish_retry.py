"""A producer rides out a broker outage: ``delay()`` during a ~3 s outage succeeds once the
broker is back, with no duplicate messages; ``retry=False`` fails fast.

Redis: the test's own redis-server is stopped (SIGTERM, data kept in its append-only file)
and started again on the same port. SQLite has no server to stop; its outage is a write lock
held by another connection beyond the broker's lock timeout, which is what a producer meets
when the file stays locked (a long transaction, a backup, a stalled NFS lock).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conveyor import Conveyor
from conveyor.exceptions import BrokerError, ResultStoreError
from tests.conftest import wait_until
from tests.helpers import redis_fixture
from tests.servers import RedisServer

#: How long the broker stays away.
OUTAGE = 3.0
#: The longest a fast failure (``retry=False``) may take.
FAST = 2.0

outage_redis = redis_fixture(appendonly=True)


class RetryLog(logging.Handler):
    """Counts the publish retries the producer logs."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        self.lines.append(record.getMessage())


@pytest.fixture
def retry_log() -> Iterator[RetryLog]:
    handler = RetryLog()
    logger = logging.getLogger("conveyor.publishing")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


class Producer(threading.Thread):
    """Calls ``add.delay(i, i)`` until stopped; records each call's id or error."""

    def __init__(self, app: Conveyor) -> None:
        super().__init__(daemon=True)
        self.app = app
        self.ids: list[str] = []
        self.errors: list[BaseException] = []
        self.stop = threading.Event()
        self.start()

    def run(self) -> None:
        add = self.app.tasks["add"]
        i = 0
        while not self.stop.is_set():
            try:
                self.ids.append(add.delay(i, i).id)
            except BaseException as exc:
                self.errors.append(exc)
            i += 1
            self.stop.wait(0.02)  # pacing: about 50 calls a second


def make_app(url: str, **settings: object) -> Conveyor:
    app = Conveyor("outage", broker=url, result_backend=url, set_as_default=False, **settings)

    @app.task(name="add")
    def add(x: int, y: int) -> int:
        return x + y

    return app


def ride_out(
    app: Conveyor, retry_log: RetryLog, down: Callable[[], None], up: Callable[[], None]
) -> Producer:
    """Run a producer through an outage of about OUTAGE seconds; return it stopped."""
    producer = Producer(app)
    wait_until(lambda: len(producer.ids) >= 5, 10.0, "calls before the outage")
    down()
    began = time.monotonic()
    wait_until(lambda: retry_log.count >= 2, 10.0, "publish retries during the outage")
    wait_until(lambda: time.monotonic() - began >= OUTAGE, OUTAGE + 1, "the outage", 0.05)
    blocked_at = len(producer.ids)
    up()
    wait_until(lambda: len(producer.ids) >= blocked_at + 5, 20.0, "calls after the outage")
    producer.stop.set()
    producer.join(30.0)
    assert not producer.is_alive()
    return producer


def assert_each_published_once(app: Conveyor, ids: list[str]) -> None:
    leased: list[str] = []
    while got := app.broker.lease(["default"], 500, 0):
        leased += [d.id for d in got]
    assert len(leased) == len(set(leased)), "a message was published twice"
    assert sorted(leased) == sorted(ids)


# -- Redis --------------------------------------------------------------------------------
@pytest.mark.redis
def test_delay_during_a_redis_outage_succeeds_once_it_is_back(
    outage_redis: RedisServer, retry_log: RetryLog
) -> None:
    app = make_app(outage_redis.url, broker_transport_options={"key_prefix": "ride"})
    with app:
        producer = ride_out(app, retry_log, outage_redis.stop, outage_redis.start)
        assert producer.errors == []
        assert any(
            f"publish to redis://127.0.0.1:{outage_redis.port}/0" in line
            for line in retry_log.lines
        )
        assert_each_published_once(app, producer.ids)


@pytest.mark.redis
def test_retry_false_fails_fast_during_a_redis_outage(outage_redis: RedisServer) -> None:
    app = make_app(outage_redis.url, broker_transport_options={"key_prefix": "fast"})
    add = app.tasks["add"]
    with app:
        add.delay(1, 1)  # connected
        outage_redis.stop()
        try:
            began = time.monotonic()
            with pytest.raises(BrokerError):
                add.apply_async((1, 2), retry=False)
            assert time.monotonic() - began < FAST
            app.conf.task_publish_retry = False
            began = time.monotonic()
            with pytest.raises(BrokerError):
                add.delay(1, 2)
            assert time.monotonic() - began < FAST
        finally:
            outage_redis.start()


BUSY_SCRIPT = """
local t = redis.call('TIME')
local stop = tonumber(t[1]) + tonumber(t[2]) / 1e6 + tonumber(ARGV[1])
repeat t = redis.call('TIME') until tonumber(t[1]) + tonumber(t[2]) / 1e6 >= stop
return 1
"""


@pytest.mark.redis
def test_a_publish_whose_reply_was_lost_is_not_duplicated(
    outage_redis: RedisServer, retry_log: RetryLog
) -> None:
    """The server is busy (a long script) past the client's socket timeout: the publish times
    out on the client but runs on the server once the script ends, and so do its retries.
    Publishing is idempotent by id, so one message results."""
    import redis  # optional dependency: only the Redis tests need a raw client

    app = make_app(
        outage_redis.url,
        broker_transport_options={"key_prefix": "lost", "socket_timeout": 0.3},
    )
    with app, redis.Redis.from_url(outage_redis.url) as admin:
        app.tasks["add"].delay(0, 0)  # connected, scripts loaded
        app.broker.lease(["default"], 10, 0)
        sent = threading.Event()

        def busy() -> None:
            sent.set()
            admin.eval(BUSY_SCRIPT, 0, "1.5")

        blocker = threading.Thread(target=busy, daemon=True)
        blocker.start()
        sent.wait(5.0)
        began = time.monotonic()
        # the script call is on its way: give it a moment to reach the server first
        wait_until(lambda: time.monotonic() - began > 0.1, 1.0, "the busy script", 0.02)
        result = app.tasks["add"].delay(1, 1)
        blocker.join(10.0)
        assert retry_log.count >= 1, "the publish did not time out"
        assert any("Timeout" in line for line in retry_log.lines), retry_log.lines
        assert_each_published_once(app, [result.id])


# -- SQLite -------------------------------------------------------------------------------
class FileLock:
    """Another connection holding the SQLite file's write lock."""

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)

    def take(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def release(self) -> None:
        self.conn.execute("ROLLBACK")

    def close(self) -> None:
        self.conn.close()


def sqlite_app(path: Path) -> Conveyor:
    # The broker gives up on a locked file after 0.3 s (default: 60 s), so the outage is
    # longer than its own patience and the publish retries take over.
    return make_app(
        f"sqlite:///{path}",
        broker_transport_options={"busy_timeout": 0.1, "lock_timeout": 0.3},
    )


def test_delay_while_the_sqlite_file_stays_locked_succeeds_once_it_is_free(
    tmp_path: Path, retry_log: RetryLog
) -> None:
    app = sqlite_app(tmp_path / "conveyor.db")
    lock = FileLock(tmp_path / "conveyor.db")
    with app:
        try:
            producer = ride_out(app, retry_log, lock.take, lock.release)
        finally:
            lock.close()
        assert producer.errors == []
        assert any("stayed locked" in line for line in retry_log.lines)
        assert_each_published_once(app, producer.ids)


def test_retry_false_fails_fast_while_the_sqlite_file_is_locked(tmp_path: Path) -> None:
    app = sqlite_app(tmp_path / "conveyor.db")
    add = app.tasks["add"]
    lock = FileLock(tmp_path / "conveyor.db")
    with app:
        add.delay(1, 1)
        lock.take()
        try:
            began = time.monotonic()
            with pytest.raises((BrokerError, ResultStoreError)):
                add.apply_async((1, 2), retry=False)
            assert time.monotonic() - began < FAST
        finally:
            lock.close()
