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

# Broker variants of long process tests whose other variant runs by default: they run with
# `scripts/test --slow`, keeping the default suite under 15 minutes on 2 cores.
SLOW_VARIANTS = frozenset(
    {
        "tests/django/test_processes.py::test_beat_process_sends_database_schedules[redis]",
        "tests/django/test_processes.py::test_worker_with_embedded_beat[redis]",
        "tests/django/test_processes.py::test_reload_restarts_the_worker_on_code_change[redis]",
        "tests/integration/test_example_site_brokers.py::test_sign_up_flow_on_the_broker[amqp]",
        "tests/integration/test_control_processes.py::test_pool_grow_shrink_and_shutdown[sqlite]",
        "tests/integration/test_bad_input_processes.py::"
        "test_bad_messages_are_dead_lettered_malformed_and_the_worker_goes_on[sqlite-threads]",
        "tests/integration/test_bad_input_processes.py::"
        "test_bad_messages_are_dead_lettered_malformed_and_the_worker_goes_on[sqlite-solo]",
        "tests/integration/test_beat_processes.py::test_three_beats_send_each_tick_once[sqlite-10]",
    }
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.nodeid in SLOW_VARIANTS:
            item.add_marker(pytest.mark.slow)


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
