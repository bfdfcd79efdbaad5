"""Test helpers and the pytest plugin (fixtures ``conveyor_app`` and ``conveyor_worker``).

>>> def test_add(conveyor_app, conveyor_worker):
...     add = conveyor_app.task(lambda x, y: x + y, name="add")
...     assert add.delay(2, 3).get(timeout=5) == 5
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Unpack

import pytest

from . import states
from .app import Conveyor
from .worker import Worker
from .worker.job import Outcome
from .worker.worker import WorkerOptions

#: Settings that make delivery timing fast enough for tests.
TEST_SETTINGS: dict[str, object] = {"broker_lease_timeout": 1.0, "broker_sweep_interval": 1.0}


class TestWorker(Worker):
    """An in-process worker for tests: ``run_until_idle()`` processes everything queued and
    re-raises the first task failure (``propagate=True``)."""

    __test__ = False  # not a pytest test class

    def __init__(self, app: Conveyor, **options: Unpack[WorkerOptions]) -> None:
        options.setdefault("lease_wait", 0.05)
        options.setdefault("concurrency", 4)
        options.setdefault("before_settle", self.before_settle)
        super().__init__(app, **options)
        self._failures: list[BaseException] = []

    def run_until_idle(
        self, timeout: float = 30.0, *, propagate: bool = True, include_delayed: bool = True
    ) -> None:
        if not self.started:
            self.start()
        self.drain(timeout, include_delayed=include_delayed)
        if propagate:
            self.raise_failures()

    def raise_failures(self) -> None:
        """Raise the first task failure seen since the last call, if any."""
        failures, self._failures = self._failures, []
        if failures:
            raise failures[0]

    def before_settle(self, outcomes: list[Outcome]) -> None:
        """Called with each batch the finisher settles (every failure) and with the dead
        letters the lease loop settles: remember the failures. Override it to see or change
        what is settled (call this one too)."""
        for outcome in outcomes:
            if outcome.error is not None and outcome.state == states.FAILURE:
                self._failures.append(outcome.error)


def make_test_app(name: str = "tests", **settings: object) -> Conveyor:
    """An app on the in-memory broker with short lease/sweep times."""
    # Loosely typed: Conveyor() has named parameters besides **settings, and mypy refuses to
    # spread a dict[str, object] over them.
    merged: dict[str, Any] = {"broker": "memory://", **TEST_SETTINGS, **settings}
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
