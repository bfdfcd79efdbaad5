"""Helpers shared by test modules: fixtures that close what they built, redis-server fixtures,
a call run in a thread, a raw SQLite connection, a wait past the minute's turn."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, Protocol, TypeVar

import pytest

from conveyor import Conveyor
from conveyor.brokers.base import PUBLISH_DEDUPE_WINDOW, Message
from conveyor.results import create_result_store
from conveyor.results.base import ResultStore
from conveyor.testing import TestWorker
from tests.servers import RedisServer, running_redis

if TYPE_CHECKING:
    import redis

    from conveyor.brokers.redis import RedisBroker

P = ParamSpec("P")


class Closable(Protocol):
    def close(self) -> None: ...


C = TypeVar("C", bound=Closable)


def closing_all(build: Callable[P, C]) -> Iterator[Callable[P, C]]:
    """A fixture's body (``yield from closing_all(build)``): yields ``build``, which keeps what
    it returns; closes all of it at teardown."""
    built: list[C] = []

    def make(*args: P.args, **kwargs: P.kwargs) -> C:
        built.append(thing := build(*args, **kwargs))
        return thing

    yield make
    for thing in built:
        thing.close()


def result_stores(
    url: str, key_prefix: str, expires: float | None
) -> Iterator[Callable[..., ResultStore]]:
    """A ``make_store`` fixture's body: stores on ``url``; ``make(expires=, prefix=)`` overrides
    the defaults ``expires`` and ``key_prefix``."""
    default_expires = expires

    def make(*, expires: float | None = default_expires, prefix: str | None = None) -> ResultStore:
        return create_result_store(
            url, expires=expires, key_prefix=key_prefix if prefix is None else prefix
        )

    yield from closing_all(make)


def redis_fixture(*, appendonly: bool, scope: Literal["module", "session"] = "module") -> Any:
    """A fixture starting a redis-server on first use, removed at the end of ``scope``; name it
    by assignment (``redis_server = redis_fixture(appendonly=False)``)."""

    @pytest.fixture(scope=scope)
    def server() -> Iterator[RedisServer]:
        with running_redis(appendonly=appendonly) as started:
            yield started

    return server


@pytest.fixture
def redis_admin(server: RedisServer) -> Iterator[redis.Redis]:
    """A plain client of the module's ``server`` fixture (``admin = helpers.redis_admin``)."""
    import redis

    with redis.Redis.from_url(server.url) as client:
        yield client


class Call(threading.Thread):
    """Run ``fn`` in a thread; ``result()`` joins and re-raises; ``done_at`` is perf_counter."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self._fn = fn
        self.value: Any = None
        self.error: BaseException | None = None
        self.done_at = 0.0
        self.start()

    def run(self) -> None:
        try:
            self.value = self._fn()
        except BaseException as exc:
            self.error = exc
        self.done_at = time.perf_counter()

    def result(self, timeout: float = 10.0) -> Any:
        self.join(timeout)
        assert not self.is_alive(), "call did not finish"
        if self.error is not None:
            raise self.error
        return self.value


def old_publish_args(broker: RedisBroker, queue: str, messages: list[Message]) -> list[object]:
    """The arguments ``ack_publish.lua`` of the frozen Redis layouts takes for a plain
    publish of ``messages`` to ``queue`` (no acks, dedupe on)."""
    dedupe_ms = int(PUBLISH_DEDUPE_WINDOW * 1000)
    args: list[object] = [queue, broker.keys.wake(queue), 0, "0", dedupe_ms]
    for m in messages:
        eta = -1.0 if m.eta is None else m.eta * 1000.0
        args += (m.id, m.priority, m.countdown * 1000.0, eta, m.body)
    return args


@contextmanager
def consuming(app: Conveyor) -> Iterator[TestWorker]:
    """A one-slot in-process worker whose lease loop runs as a production process's does
    (``consume_in_thread=False``: adaptive prefetch, tasks in the leasing thread), on a thread
    of its own; stopped on exit."""
    worker = TestWorker(app, concurrency=1, consume_in_thread=False)
    assert worker.prefetch is not None
    worker.start()
    loop = threading.Thread(target=worker.consume, daemon=True)
    loop.start()
    try:
        yield worker
    finally:
        worker.stop(timeout=10)
        loop.join(10)


@contextmanager
def raw_sqlite(path: Path) -> Iterator[sqlite3.Connection]:
    """A plain connection to inspect or damage a database file behind its owner's back."""
    conn = sqlite3.connect(path, autocommit=True)
    try:
        yield conn
    finally:
        conn.close()


def clear_of_the_minute_turn(seconds: float) -> None:
    """Return once the next ``seconds`` all fall in one minute of the clock.

    The dashboard's charts are labelled by the minute, so its overview changes when the minute
    turns: a test comparing two renderings of it waits here first, when the turn is near."""
    left = 60 - time.time() % 60
    if left < seconds:
        time.sleep(left + 0.05)  # the event waited for is the clock's turn itself
