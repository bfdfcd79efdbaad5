"""Batches (conveyor.canvas.batch) on the memory broker with an in-process worker: the three
callbacks fire once each, progress while running, work added from members, nesting."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from conveyor import BatchResult, Conveyor, batch, chain, current_batch
from conveyor.canvas.batch import BatchClosedError, member_finished
from conveyor.exceptions import Reject
from conveyor.testing import TestWorker, make_test_app
from tests.conftest import wait_until


class Calls:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.items: list[tuple[str, Any]] = []

    def add(self, kind: str, value: Any) -> None:
        with self.lock:
            self.items.append((kind, value))

    def of(self, kind: str) -> list[Any]:
        with self.lock:
            return [v for k, v in self.items if k == kind]


@pytest.fixture
def calls() -> Calls:
    return Calls()


@pytest.fixture
def app(calls: Calls) -> Iterator[Conveyor]:
    app = make_test_app("batches")

    @app.task(name="b.work")
    def work(n: int) -> int:
        calls.add("work", n)
        return n

    @app.task(name="b.fail", max_retries=0)
    def fail(n: int) -> None:
        raise ValueError(f"fail {n}")

    @app.task(name="b.poison")
    def poison(n: int) -> None:
        raise Reject(f"poison {n}")

    @app.task(name="b.spawn")
    def spawn(n: int) -> int:
        found = current_batch(app)
        assert found is not None
        found.add(*[work.s(n * 10 + i) for i in range(2)])
        return n

    for kind in ("success", "complete", "death"):

        def callback(summary: dict[str, Any], _kind: str = kind) -> None:
            calls.add(_kind, summary)

        app.task(name=f"b.on_{kind}")(callback)
    yield app
    app.close()


def callbacks(app: Conveyor) -> dict[str, Any]:
    return {f"on_{k}": app.signature(f"b.on_{k}") for k in ("success", "complete", "death")}


def test_all_succeed_fires_success_and_complete_once(app: Conveyor, calls: Calls) -> None:
    b = batch(
        [app.signature("b.work", (i,)) for i in range(5)], description="five", **callbacks(app)
    )
    result = b.apply_async()
    assert str(result.progress()) == "0/5"
    with TestWorker(app) as worker:
        worker.run_until_idle()
    assert sorted(calls.of("work")) == [0, 1, 2, 3, 4]
    summary = {"batch_id": result.id, "description": "five", "total": 5, "failed": 0, "dead": 0}
    assert calls.of("success") == [summary]
    assert calls.of("complete") == [summary]
    assert calls.of("death") == []
    assert result.progress().finished and result.completed


def test_a_failure_fires_complete_not_success(app: Conveyor, calls: Calls) -> None:
    members = [app.signature("b.work", (1,)), app.signature("b.fail", (2,))]
    result = batch(members, **callbacks(app)).apply_async()
    with TestWorker(app) as worker:
        worker.run_until_idle(propagate=False)
    assert calls.of("success") == [] and calls.of("death") == []
    (summary,) = calls.of("complete")
    assert summary["failed"] == 1 and summary["total"] == 2
    assert result.progress().failed == 1


def test_a_dead_member_fires_death_once_and_still_completes(app: Conveyor, calls: Calls) -> None:
    members = [app.signature("b.poison", (i,)) for i in range(3)] + [app.signature("b.work", (9,))]
    result = batch(members, **callbacks(app)).apply_async()
    with TestWorker(app) as worker:
        worker.run_until_idle(propagate=False)
    (death,) = calls.of("death")
    assert death["batch_id"] == result.id and death["reason"] == "rejected"
    assert app.AsyncResult(death["task_id"]).state == "FAILURE"
    (complete,) = calls.of("complete")
    assert complete["dead"] == 3 and complete["failed"] == 3
    assert calls.of("success") == []


def test_progress_while_members_run(app: Conveyor, calls: Calls) -> None:
    gate = threading.Event()

    @app.task(name="b.wait")
    def wait(n: int) -> int:
        if n > 0:
            gate.wait(10)
        return n

    result = batch([wait.s(0), wait.s(1), wait.s(2)], **callbacks(app)).apply_async()
    with TestWorker(app) as worker:
        worker.start()
        wait_until(lambda: result.progress().done == 1, 10, "first member done")
        progress = result.progress()
        assert (progress.done, progress.total, progress.pending) == (1, 3, 2)
        assert calls.of("complete") == [] and not result.completed
        gate.set()
        worker.run_until_idle()
    assert str(result.progress()) == "3/3" and len(calls.of("complete")) == 1


def test_members_add_work_to_their_open_batch(app: Conveyor, calls: Calls) -> None:
    result = batch([app.signature("b.spawn", (i,)) for i in (1, 2)], **callbacks(app)).apply_async()
    with TestWorker(app) as worker:
        worker.run_until_idle()
    assert sorted(calls.of("work")) == [10, 11, 20, 21]
    (summary,) = calls.of("success")
    assert summary["total"] == 6
    assert len(calls.of("complete")) == 1
    with pytest.raises(BatchClosedError):
        result.add(app.signature("b.work", (0,)))


def test_nested_batches_complete_inside_out(app: Conveyor, calls: Calls) -> None:
    inner = batch(
        [app.signature("b.work", (i,)) for i in (1, 2)],
        on_success=app.signature("b.on_success"),
        description="inner",
    )
    outer = batch(
        [app.signature("b.work", (0,)), inner],
        on_complete=app.signature("b.on_complete"),
        on_success=app.signature("b.on_success"),
        description="outer",
    )
    outer.apply_async()
    with TestWorker(app) as worker:
        worker.run_until_idle()
    assert sorted(s["description"] for s in calls.of("success")) == ["inner", "outer"]
    (complete,) = calls.of("complete")
    assert complete["total"] == 2 and complete["failed"] == 0


def test_a_nested_failure_and_death_reach_the_parent(app: Conveyor, calls: Calls) -> None:
    inner = batch([app.signature("b.poison", (1,))], description="inner")
    outer = batch([inner, app.signature("b.work", (1,))], description="outer", **callbacks(app))
    outer.apply_async()
    with TestWorker(app) as worker:
        worker.run_until_idle(propagate=False)
    (death,) = calls.of("death")
    assert death["description"] == "outer"
    (complete,) = calls.of("complete")
    assert complete["failed"] == 1 and complete["dead"] == 1
    assert calls.of("success") == []


def test_an_empty_batch_completes_at_once(app: Conveyor, calls: Calls) -> None:
    result = batch([], **callbacks(app)).apply_async()
    with TestWorker(app) as worker:
        worker.run_until_idle()
    assert len(calls.of("success")) == 1 and len(calls.of("complete")) == 1
    assert result.completed


def test_completing_again_sends_nothing_new(app: Conveyor, calls: Calls) -> None:
    """A redelivered last member completes the batch again: the callbacks carry the same
    ids and the run-once guard (or the sent marker) keeps them from running twice."""
    result = batch([app.signature("b.work", (1,))], **callbacks(app)).apply_async()
    with TestWorker(app) as worker:
        worker.run_until_idle()
        for _ in range(3):
            member_finished(app, result.id, "any-member-again", "SUCCESS")
        app.results.kv.delete_value(f"batch:{result.id}:sent:success")  # as if never marked
        member_finished(app, result.id, "any-member-again", "SUCCESS")
        worker.run_until_idle()
    assert len(calls.of("success")) == 1 and len(calls.of("complete")) == 1


def test_bad_members_and_options(app: Conveyor) -> None:
    with pytest.raises(TypeError, match="batch member"):
        batch([chain(app.signature("b.work", (1,)), app.signature("b.work"))])
    with pytest.raises(TypeError, match="description"):
        batch([], description=42)  # type: ignore[arg-type]
    with pytest.raises(BatchClosedError):
        BatchResult("no-such-batch", app).add(app.signature("b.work", (1,)))


def test_on_death_survives_a_transient_store_error(
    app: Conveyor, calls: Calls, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conveyor.exceptions import ResultStoreError
    from conveyor.kv.memory import MemoryKeyValue

    real_join = MemoryKeyValue.join
    failures = [1]

    def flaky_join(self: MemoryKeyValue, key: str, member: str, ttl: float | None = None) -> int:
        if key.endswith(":dead") and member != "." and failures:
            failures.pop()
            raise ResultStoreError("connection lost")  # once, as a dropped connection would
        return real_join(self, key, member, ttl)

    monkeypatch.setattr(MemoryKeyValue, "join", flaky_join)
    batch([app.signature("b.poison", (1,))], **callbacks(app)).apply_async()
    with TestWorker(app) as worker:
        worker.run_until_idle(propagate=False)
    assert not failures and len(calls.of("death")) == 1 and len(calls.of("complete")) == 1
