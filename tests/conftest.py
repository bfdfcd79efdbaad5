"""Shared fixtures. The pytest plugin in conveyor.testing provides conveyor_app/conveyor_worker."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest

from conveyor import Conveyor
from conveyor.testing import TestWorker, make_test_app
from tests.pg_server import PostgresServer, running_postgres
from tests.rabbit_server import rabbit_server  # noqa: F401 - the session's RabbitMQ node

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T],
    timeout: float = 10.0,
    what: str = "condition",
    interval: float = 0.01,
) -> T:
    """Poll ``predicate`` until it returns something true, and return that; fail the test
    after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not met within {timeout} s")
        time.sleep(interval)  # polling interval of a bounded wait, not a synchronisation sleep
    return value


@pytest.fixture
def app() -> Iterator[Conveyor]:
    app = make_test_app("tests")
    yield app
    app.close()


@pytest.fixture
def worker(app: Conveyor) -> Iterator[TestWorker]:
    worker = TestWorker(app)
    worker.start()
    yield worker
    if not worker.stopped:
        worker.stop(timeout=10)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the whole run, started on first use (tests/pg_server.py)."""
    with running_postgres() as server:
        yield server
