"""Test helpers and the pytest plugin (fixtures ``conveyor_app`` and ``conveyor_worker``).

>>> def test_add(conveyor_app, conveyor_worker):
...     add = conveyor_app.task(lambda x, y: x + y, name="add")
...     assert add.delay(2, 3).get(timeout=5) == 5
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from .app import Conveyor
from .worker.consumer import Worker

#: Settings that make delivery timing fast enough for tests.
TEST_SETTINGS: dict[str, Any] = {"broker_lease_timeout": 1.0, "broker_sweep_interval": 1.0}


class TestWorker(Worker):
    """An in-process worker for tests: ``run_until_idle()`` processes everything queued and
    re-raises the first task failure (``propagate=True``)."""

    __test__ = False  # not a pytest test class

    def __init__(self, app: Conveyor, **options: Any) -> None:
        options.setdefault("lease_wait", 0.05)
        options.setdefault("concurrency", 4)
        super().__init__(app, **options)
        self._failures: list[BaseException] = []
        self._seen = 0

    def run_until_idle(
        self, timeout: float = 30.0, *, propagate: bool = True, include_delayed: bool = True
    ) -> None:
        if not self._threads:
            self.start()
        self.drain(timeout, include_delayed=include_delayed)
        if propagate:
            self.raise_failures()

    def raise_failures(self) -> None:
        """Raise the first task failure seen since the last call, if any."""
        failures, self._failures = self._failures, []
        if failures:
            raise failures[0]

    def _apply(self, batch: Any) -> None:
        for outcome, _ in batch:
            if outcome.error is not None and outcome.state == "FAILURE":
                self._failures.append(outcome.error)
        super()._apply(batch)


def make_test_app(name: str = "tests", **settings: Any) -> Conveyor:
    """An app on the in-memory broker with short lease/sweep times."""
    merged = {"broker": "memory://", **TEST_SETTINGS, **settings}
    return Conveyor(name, **merged)


@pytest.fixture
def conveyor_app() -> Iterator[Conveyor]:
    """A fresh app on the in-memory broker (override this fixture to use another broker)."""
    app = make_test_app()
    yield app
    app.close()


@pytest.fixture
def conveyor_worker(conveyor_app: Conveyor) -> Iterator[TestWorker]:
    """A running in-process worker for ``conveyor_app``, stopped after the test."""
    worker = TestWorker(conveyor_app)
    worker.start()
    yield worker
    worker.stop(timeout=10)
