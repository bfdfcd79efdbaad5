"""Concurrency limits (conveyor.limits): options checked where given, at most N running in
the cluster (here: two in-process workers on one memory broker), per-key mutexes, slots given
back however a task ends, waits uncharged.

Every store's slots: tests/integration/test_concurrency_limits_stores.py; real worker
processes and a worker killed with SIGKILL: tests/integration/test_concurrency_limits_processes.py.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor import Conveyor
from conveyor.exceptions import ConfigurationError
from conveyor.limits.gate import FlowGate
from conveyor.testing import TestWorker, make_test_app
from conveyor.worker.supervisor import Supervisor


@pytest.fixture
def app() -> Iterator[Conveyor]:
    app = make_test_app("limits")
    yield app
    app.close()


class Overlap:
    """Counts tasks running at once (per key)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now: dict[str, int] = {}
        self.most: dict[str, int] = {}
        self.runs: list[tuple[int, int]] = []

    def run(self, key: str, seconds: float) -> None:
        with self.lock:
            self.now[key] = self.now.get(key, 0) + 1
            self.most[key] = max(self.most.get(key, 0), self.now[key])
        time.sleep(seconds)  # the task's work: something that takes a while
        with self.lock:
            self.now[key] -= 1


@pytest.mark.parametrize("bad", [0, -1, True, "5", 1.5])
def test_bad_limits_fail_at_definition(app: Conveyor, bad: object) -> None:
    with pytest.raises(ConfigurationError, match=r"concurrency_limit .* integer >= 1"):
        app.task(concurrency_limit=bad)(lambda: None)


def test_bad_annotated_limit_fails(app: Conveyor) -> None:
    with pytest.raises(ConfigurationError, match="integer >= 1"):
        make_test_app("limits", task_annotations={"*": {"concurrency_limit": 0}})


def test_concurrency_key_needs_a_function_and_a_limit(app: Conveyor) -> None:
    with pytest.raises(ConfigurationError, match=r"concurrency_key .* must be a function"):
        app.task(concurrency_limit=1, concurrency_key="account")(lambda: None)
    with pytest.raises(ConfigurationError, match=r"concurrency_key .* needs concurrency_limit"):
        app.task(concurrency_key=lambda a: a)(lambda a: None)


def test_bad_keys_fail_at_call_time(app: Conveyor) -> None:
    @app.task(concurrency_limit=1, concurrency_key=lambda account: account)
    def sync(account: object) -> None: ...

    @app.task
    def free() -> None: ...

    with pytest.raises(TypeError, match=r"concurrency_key of .* must be a string"):
        sync.apply_async(("a",), concurrency_key=7)
    with pytest.raises(TypeError, match="concurrency_key"):
        sync.delay(7)
    with pytest.raises(ConfigurationError, match="no concurrency_limit"):
        free.apply_async(concurrency_key="a")


def test_at_most_limit_run_across_workers(app: Conveyor) -> None:
    overlap = Overlap()

    @app.task(concurrency_limit=2)
    def work() -> None:
        overlap.run("all", 0.15)

    for _ in range(8):
        work.delay()
    with TestWorker(app, concurrency=4) as one, TestWorker(app, concurrency=4) as two:
        one.start()
        two.run_until_idle(30)
        one.run_until_idle(30)
    assert overlap.most["all"] == 2  # reached, never passed (8 free threads in all)
    assert app.broker.limits is not None and app.broker.limits.holders("task:" + work.name) == []


def test_a_key_of_limit_one_is_a_mutex(app: Conveyor) -> None:
    overlap = Overlap()

    @app.task(concurrency_limit=1, concurrency_key=lambda account: f"account:{account}")
    def sync(account: int) -> None:
        overlap.run(str(account), 0.1)

    for _ in range(3):
        sync.delay(1)
        sync.delay(2)
    with TestWorker(app, concurrency=4) as worker:
        worker.run_until_idle(30)
    assert overlap.most == {"1": 1, "2": 1}


def test_slots_come_back_however_a_task_ends(app: Conveyor) -> None:
    seen: list[tuple[int, int]] = []

    @app.task(concurrency_limit=1, autoretry_for=(KeyError,), default_retry_delay=0)
    def flaky(n: int) -> None:
        seen.append((flaky.request.retries, flaky.request.delivery_count))
        if n == 0:
            raise ValueError("fails")
        if n == 1 and flaky.request.retries == 0:
            raise KeyError("retried")

    flaky.delay(0)
    flaky.delay(1)
    flaky.delay(2)
    with TestWorker(app, concurrency=4) as worker:
        worker.run_until_idle(30, propagate=False)
        assert worker.runner.flow is not None and worker.runner.flow.held() == {}
    assert len(seen) == 4  # failed, retried, its retry, and the last: no slot leaked
    assert {count for _, count in seen} == {1}  # waits for the slot were not deliveries


def test_a_broker_without_limits_refuses_concurrency_limits(app: Conveyor) -> None:
    @app.task(concurrency_limit=1)
    def one() -> None: ...

    with pytest.raises(ConfigurationError, match="needs a broker that keeps limits"):
        FlowGate(app, None)


def test_a_worker_refuses_concurrency_limits_its_broker_cannot_keep(tmp_path: Path) -> None:
    """A broker without ``limits`` (RabbitMQ with a Django key/value store): the supervisor
    refuses before it forks children that could not run."""
    app = Conveyor("limits", broker=f"sqlite:///{tmp_path}/b.db", result_backend="memory://")

    @app.task(concurrency_limit=1)
    def one() -> None: ...

    app.broker.limits = None  # as a broker that keeps none
    try:
        with pytest.raises(ConfigurationError, match="needs a broker that keeps limits"):
            Supervisor(app, concurrency=1).run()
    finally:
        app.close()
