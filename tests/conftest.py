"""Shared fixtures. The pytest plugin in conveyor.testing provides conveyor_app/conveyor_worker."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from conveyor import Conveyor
from conveyor.testing import TestWorker, make_test_app


def wait_until(
    predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.01
) -> None:
    """Poll ``predicate`` until it is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s")
        time.sleep(interval)  # polling interval of a bounded wait, not a synchronisation sleep


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
