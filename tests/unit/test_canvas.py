"""The canvas on the in-process worker (memory broker): signatures, chain, group, chord,
chunks/map/starmap, link/link_error, run-once follow-ups, and seed 003's examples."""

from __future__ import annotations

import json
import textwrap
import threading
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest

from conveyor import ChordError, Conveyor, states
from conveyor.brokers.base import Delivery
from conveyor.canvas import (
    ONCE_HEADER,
    Signature,
    chain,
    chord,
    chunks,
    followup_id,
    group,
    signature,
    xmap,
)
from conveyor.exceptions import TaskRevokedError
from conveyor.result import AsyncResult, GroupResult
from conveyor.testing import TestWorker, make_test_app
from conveyor.worker.job import Outcome
from tests.conftest import wait_until

# -- tasks ----------------------------------------------------------------------------------


class Recorder:
    """Thread-safe list of calls made by tasks and callbacks."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def add(self, name: str, *args: Any) -> None:
        with self._lock:
            self.calls.append((name, args))

    def of(self, name: str) -> list[tuple[Any, ...]]:
        with self._lock:
            return [args for called, args in self.calls if called == name]


RECORDER = Recorder()


def on_success(result: Any) -> None:
    RECORDER.add("on_success", result)


def on_failure(task_id: str, exception: Any, traceback: str) -> None:
    RECORDER.add("on_failure", task_id, exception, traceback)


@pytest.fixture
def t(app: Conveyor) -> SimpleNamespace:
    """The tasks of these tests, registered on the test app, plus a recorder."""
    rec = Recorder()

    @app.task(name="t.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="t.mul")
    def mul(x: int, y: int) -> int:
        return x * y

    @app.task(name="t.tsum")
    def tsum(values: list[int]) -> int:
        rec.add("tsum", values)
        return sum(values)

    @app.task(name="t.collect")
    def collect(values: Any, *extra: Any) -> Any:
        rec.add("collect", values, *extra)
        return values

    @app.task(name="t.boom")
    def boom(x: Any = None) -> None:
        raise ValueError(f"boom {x}")

    @app.task(name="t.slow_add")
    def slow_add(x: int, y: int, delay: float) -> int:
        threading.Event().wait(delay)  # finish out of order on purpose
        return x + y

    @app.task(name="t.errback")
    def errback(task_id: str, info: dict[str, Any]) -> None:
        rec.add("errback", task_id, info)

    @app.task(name="t.errback3")
    def errback3(task_id: str, info: dict[str, Any], traceback: str) -> None:
        rec.add("errback3", task_id, info, traceback)

    @app.task(name="t.count")
    def count(*args: Any) -> int:
        rec.add("count", *args)
        return len(rec.of("count"))

    return SimpleNamespace(
        add=add,
        mul=mul,
        tsum=tsum,
        collect=collect,
        boom=boom,
        slow_add=slow_add,
        errback=errback,
        errback3=errback3,
        count=count,
        rec=rec,
    )


def settle(worker: TestWorker, timeout: float = 10.0) -> None:
    """Wait until nothing is queued or running; task failures are expected here."""
    worker.run_until_idle(timeout, propagate=False)


# -- signatures -----------------------------------------------------------------------------


def test_signature_partials_immutability_and_options(t: SimpleNamespace) -> None:
    sig = t.mul.s(2)
    assert sig.clone((3,)).args == (3, 2)  # prepended, as Celery does
    assert sig.args == (2,)  # clone leaves the original alone
    frozen = t.mul.si(2, 2)
    assert frozen.immutable and frozen.clone((9,)).args == (2, 2)
    assert sig.set(queue="q", priority=7) is sig and sig.options == {"queue": "q", "priority": 7}
    assert sig.set(immutable=True).immutable
    assert repr(t.add.s(1, y=2)) == "t.add(1, y=2)"
    named = signature("t.add", args=(1, 2), countdown=3)
    assert (named.task, named.args, named.options) == ("t.add", (1, 2), {"countdown": 3})
    assert signature(named.to_dict()) == named
    assert t.mul.s(3)(2) == 6  # calling a signature runs the task inline
    assert len({t.collect.s([1]), t.collect.s([1])}) == 1  # hashable with list arguments


def test_json_round_trip_of_nested_workflows(t: SimpleNamespace) -> None:
    when = datetime(2026, 1, 2, 3, 4, tzinfo=UTC)
    flow = chain(
        t.add.s(1, when=when).set(link_error=t.errback.s()),
        group(t.mul.s(2), chain(t.mul.s(3), t.add.s(1))),
        t.tsum.s().set(queue="sums"),
        chord([t.add.si(1, 1), t.add.si(2, 2)], t.collect.s(), propagate=False),
    )
    data = json.loads(json.dumps(flow.to_dict()))
    again = Signature.from_dict(data)
    assert again == flow
    assert isinstance(again, chain)
    assert [type(s) for s in again.tasks] == [Signature, chord, chord]
    first = again.tasks[0]
    assert first.kwargs["when"] == when
    assert isinstance(first.options["link_error"][0], Signature)
    last = again.tasks[2]
    assert isinstance(last, chord) and last.propagate is False


def test_composition_with_pipe(t: SimpleNamespace) -> None:
    a, b, c = t.add.s(1, 1), t.mul.s(2), t.tsum.s()
    assert isinstance(a | b, chain) and (a | b).tasks == [a, b]
    assert ((a | b) | c).tasks == [a, b, c]  # flattened
    assert chain(a | b).tasks == [a, b]  # seed 003: chain(add.s(3, 4) | mul.s(2))
    grouped = group(a, b) | c
    assert isinstance(grouped, chord) and grouped.body == c
    longer = grouped | b
    assert isinstance(longer, chord) and longer.body == chain(c, b)
    # a group followed by a step inside a chain becomes a chord with that step
    steps = chain(a, group(b, b), c, b).tasks
    assert [type(s) for s in steps] == [Signature, chord, Signature]
    assert isinstance(chain([a, b]), chain) and chain(x for x in [a, b]).tasks == [a, b]
    assert group([a, b]).tasks == group(a, b).tasks == list(group(iter([a, b])))


def test_freeze_assigns_ids_and_handles(app: Conveyor, t: SimpleNamespace) -> None:
    flow = chain(t.add.s(1, 1), group(t.mul.s(2), t.mul.s(3)), t.tsum.s())
    handle = flow.freeze()
    assert isinstance(handle, AsyncResult)
    header = handle.parent
    assert isinstance(header, GroupResult) and len(header) == 2
    assert isinstance(header.parent, AsyncResult)
    assert header.parent.id == flow.tasks[0].id
    leaf = t.add.s(1, 2)
    assert leaf.freeze("fixed").id == "fixed" == leaf.id


# -- chains ---------------------------------------------------------------------------------


def test_chain_passes_results_and_walks_back(
    app: Conveyor, worker: TestWorker, t: SimpleNamespace
) -> None:
    chained = chain(t.add.s(3, 4) | t.mul.s(2))
    result = chained()
    assert result.get(timeout=5) == 14
    assert result.parent is not None and result.parent.get(timeout=5) == 7
    assert result.parent.parent is None
    # the stored records tell the same story
    assert AsyncResult(result.id, app).parent == result.parent
    root = result.parent.id
    assert app.results.get(result.id).root_id == root
    # immutable steps ignore the previous result; delay/apply_async also work
    assert (t.add.s(1, 1) | t.mul.si(5, 5)).delay().get(timeout=5) == 25
    assert chain(t.add.s(1), t.mul.s(3)).apply_async((2,)).get(timeout=5) == 9
    with pytest.raises(ValueError, match="empty chain"):
        chain().apply_async()


def test_chain_failure_stops_and_marks_the_rest(
    app: Conveyor, worker: TestWorker, t: SimpleNamespace
) -> None:
    flow = chain(t.add.s(1, 1), t.boom.s(), t.mul.s(2), t.add.s(1))
    result = flow.apply_async(link_error=t.errback.s())
    with pytest.raises(ValueError, match="boom 2"):
        result.get(timeout=5)
    third, failed, first = result.parent, result.parent.parent, result.parent.parent.parent
    assert first.get(timeout=5) == 2
    assert failed.state == states.FAILURE
    for skipped in (third, result):
        assert skipped.state == states.FAILURE
        assert isinstance(skipped.result, ValueError)
        assert f"not run: t.boom[{failed.id}]" in skipped.traceback
    settle(worker)
    # the chain's errback ran once, for the task that failed
    assert t.rec.of("errback") == [(failed.id, {"type": "ValueError", "message": "boom 2"})]


def test_chain_with_revoked_step(app: Conveyor, t: SimpleNamespace) -> None:
    flow = chain(t.add.s(1, 1), t.mul.s(2), t.add.s(3))
    last = flow.freeze()
    middle = last.parent
    assert middle is not None
    middle.revoke()
    flow.apply_async()
    worker = TestWorker(app)
    try:
        settle(worker)
    finally:
        worker.stop(timeout=5)
    assert middle.state == states.REVOKED
    assert last.state == states.REVOKED
    with pytest.raises(TaskRevokedError):
        last.get(timeout=1)


# -- groups ---------------------------------------------------------------------------------


def test_group_results_api(app: Conveyor, worker: TestWorker, t: SimpleNamespace) -> None:
    published: list[int] = []
    publish = app.broker.publish

    def spy(messages: Any) -> None:
        published.append(len(messages))
        publish(messages)

    app.broker.publish = spy
    result = group([t.add.s(i, i) for i in range(10)]).apply_async()
    assert published == [10]  # one bulk publish
    assert isinstance(result, GroupResult) and len(result.results) == 10
    assert result.join(timeout=5) == [i + i for i in range(10)]
    assert result.get(timeout=5) == [i + i for i in range(10)]
    assert result.ready() and result.successful() and not result.failed()
    assert result.completed_count() == 10
    assert [app.results.get(r.id).group_id for r in result.leaves()] == [result.id] * 10
    result.save()
    restored = GroupResult.restore(result.id, app=app)
    assert restored == result and restored.get(timeout=5) == result.get(timeout=5)
    assert GroupResult.restore("nope", app=app) is None
    nested = group(t.add.s(1, 1), group(t.add.s(2, 2), t.add.s(3, 3)))()
    assert nested.get(timeout=5) == [2, [4, 6]]
    nested.save()
    again = GroupResult.restore(nested.id, app=app)
    assert again is not None and isinstance(again.results[1], GroupResult)
    assert again.get(timeout=5) == [2, [4, 6]]
    assert group([]).apply_async().get(timeout=1) == []


def test_group_partial_failure(app: Conveyor, worker: TestWorker, t: SimpleNamespace) -> None:
    result = group(t.add.s(1, 1), t.boom.s(1), t.add.s(2, 2)).apply_async()
    settle(worker)
    assert result.ready() and result.failed() and not result.successful()
    assert result.completed_count() == 2
    with pytest.raises(ValueError, match="boom 1"):
        result.get(timeout=5)
    values = result.get(timeout=5, propagate=False)
    assert values[0] == 2 and isinstance(values[1], ValueError) and values[2] == 4


def test_group_revoke(app: Conveyor, t: SimpleNamespace) -> None:
    result = group(t.add.s(1, 1), t.add.s(2, 2)).apply_async()
    assert not result.ready()
    result.revoke()
    worker = TestWorker(app)
    try:
        settle(worker)
    finally:
        worker.stop(timeout=5)
    assert [r.state for r in result.leaves()] == [states.REVOKED, states.REVOKED]


# -- chords ---------------------------------------------------------------------------------


def test_chord_results_in_header_order(
    app: Conveyor, worker: TestWorker, t: SimpleNamespace
) -> None:
    delays = [0.3, 0.0, 0.2, 0.1]
    header = [t.slow_add.s(i, i, d) for i, d in enumerate(delays)]
    result = chord(header)(t.collect.s())
    assert result.get(timeout=10) == [0, 2, 4, 6]
    assert isinstance(result.parent, GroupResult)
    assert result.parent.get(timeout=5) == [0, 2, 4, 6]
    assert GroupResult.restore(result.parent.id, app=app) == result.parent
    assert (group(t.add.s(1, 1), t.add.s(2, 2)) | t.tsum.s())().get(timeout=5) == 6
    assert chord([t.add.s(1, 1)], t.tsum.s()).delay().get(timeout=5) == 2
    settle(worker)
    assert len(t.rec.of("collect")) == 1


def test_chord_with_empty_header(app: Conveyor, worker: TestWorker, t: SimpleNamespace) -> None:
    assert chord([], t.collect.s())().get(timeout=5) == []
    assert chord([group([])], t.collect.s())().get(timeout=5) == [[]]


def test_chord_header_of_chains_and_groups(
    app: Conveyor, worker: TestWorker, t: SimpleNamespace
) -> None:
    header = [t.add.s(1, 1) | t.mul.s(10), group(t.add.s(2, 2), t.add.s(3, 3)), t.add.s(4, 4)]
    result = chord(header, t.collect.s())()
    assert result.get(timeout=5) == [20, [4, 6], 8]
    inner = chord([chord([t.add.s(1, 1), t.add.s(2, 2)], t.tsum.s()), t.add.s(5, 5)], t.tsum.s())
    assert inner().get(timeout=5) == 16


def test_chord_failure_propagates(app: Conveyor, worker: TestWorker, t: SimpleNamespace) -> None:
    flow = chord([t.add.s(1, 1), t.boom.s(7), t.add.s(2, 2)], t.collect.s()) | t.mul.s(2)
    result = flow.apply_async(link_error=t.errback.s())
    with pytest.raises(ChordError) as info:
        result.get(timeout=5)
    body = result.parent
    assert isinstance(body, AsyncResult)
    header = body.parent
    assert isinstance(header, GroupResult)
    failed_id = header.results[1].id
    with pytest.raises(ChordError, match=failed_id) as body_info:
        body.get(timeout=5)
    assert "t.boom" in str(body_info.value) and "ValueError: boom 7" in str(body_info.value)
    assert "ChordError" in str(info.type)
    settle(worker)
    assert t.rec.of("collect") == []  # the body never ran
    (call,) = t.rec.of("errback")
    assert call[0] == body.id
    assert call[1]["type"] == "conveyor.exceptions.ChordError" and call[1]["failed"] == [failed_id]


def test_chord_with_propagate_false_runs_with_outcomes(
    app: Conveyor, worker: TestWorker, t: SimpleNamespace
) -> None:
    result = chord([t.add.s(1, 1), t.boom.s(3)], t.collect.s(), propagate=False)()
    outcomes = result.get(timeout=5)
    header = result.parent
    assert isinstance(header, GroupResult)
    ok, bad = header.results
    assert outcomes == [
        {"task_id": ok.id, "state": "SUCCESS", "result": 2, "error": None},
        {
            "task_id": bad.id,
            "state": "FAILURE",
            "result": None,
            "error": {"type": "ValueError", "message": "boom 3"},
        },
    ]


def test_chord_header_revoked_counts_as_failed(app: Conveyor, t: SimpleNamespace) -> None:
    flow = chord([t.add.s(1, 1), t.add.s(2, 2)], t.collect.s())
    body = flow.freeze()
    assert isinstance(body, AsyncResult) and isinstance(body.parent, GroupResult)
    body.parent.results[0].revoke()
    flow.apply_async()
    worker = TestWorker(app)
    try:
        settle(worker)
    finally:
        worker.stop(timeout=5)
    with pytest.raises(ChordError, match="TaskRevokedError"):
        body.get(timeout=1)


def test_chord_of_a_thousand_tasks(app: Conveyor, t: SimpleNamespace) -> None:
    worker = TestWorker(app, concurrency=8).start()
    try:
        result = chord(t.add.s(i, 1) for i in range(1000))(t.tsum.s())
        assert result.get(timeout=30) == sum(range(1, 1001))
        settle(worker)
    finally:
        worker.stop(timeout=10)
    assert len(t.rec.of("tsum")) == 1


class CrashingWorker(TestWorker):
    """Simulates a worker killed at a chosen point after a task ran, the first time each
    chosen task finishes: ``"before_followups"`` (result stored, nothing else) or
    ``"before_ack"`` (result stored and follow-ups sent). The message is never acked, nor
    renewed, so the broker redelivers it after the lease timeout."""

    def __init__(self, app: Conveyor, victims: set[str], point: str, **options: Any) -> None:
        super().__init__(app, **options)
        self.victims = victims
        self.point = point
        self.crashed: list[str] = []

    def before_settle(self, outcomes: list[Outcome]) -> None:
        super().before_settle(outcomes)
        for outcome in outcomes:
            delivery: Delivery | None = outcome.delivery
            if (
                delivery is not None
                and delivery.id in self.victims
                and delivery.id not in self.crashed
            ):
                self.crashed.append(delivery.id)
                self.app.results.store(outcome.records)
                if self.point == "before_ack":
                    for followup in outcome.followups:
                        followup()
                # "dies": never acked nor renewed (its slot is freed), so the lease expires
                outcome.delivery = None
                outcome.records, outcome.followups = [], []


@pytest.mark.parametrize("point", ["before_followups", "before_ack"])
def test_chord_body_runs_once_when_header_tasks_are_redelivered(
    app: Conveyor, t: SimpleNamespace, point: str
) -> None:
    flow = chord([t.slow_add.s(i, i, 0.05 * i) for i in range(4)], t.count.s())
    body = flow.freeze()
    assert isinstance(body, AsyncResult) and isinstance(body.parent, GroupResult)
    header_ids = [r.id for r in body.parent.results]
    victims = {header_ids[0], header_ids[-1]}  # the first and the last to finish
    worker = CrashingWorker(app, victims, point)
    try:
        worker.start()
        flow.apply_async()
        wait_until(lambda: len(worker.crashed) == 2, timeout=10)
        assert body.get(timeout=15) == 1
        # the redeliveries (after the 1 s lease) have run too, and nothing more happens
        wait_until(lambda: worker.processed >= 6, timeout=15)
        settle(worker, 15)
    finally:
        worker.stop(timeout=5)
    assert t.rec.of("count") == [([0, 2, 4, 6],)]


def test_duplicate_follow_up_messages_run_once(app: Conveyor, t: SimpleNamespace) -> None:
    sig = t.count.s("x").set(task_id="dup-1", headers={ONCE_HEADER: True})
    app.send_many([sig, sig, sig])  # three messages, one task id
    worker = TestWorker(app)
    try:
        settle(worker, 15)
    finally:
        worker.stop(timeout=5)
    assert t.rec.of("count") == [("x",)]
    assert app.AsyncResult("dup-1").get(timeout=1) == 1


def test_once_guard_runs_again_after_the_claim_expires(t: SimpleNamespace) -> None:
    app = make_test_app("once", broker_lease_timeout=0.2, broker_sweep_interval=0.2)
    try:
        count = app.task(name="t.count")(t.count.fn)
        # a delivery that started (claimed) and then died: its claim expires after 2 leases
        assert app.results.kv.claim("once:dead-1:0", 0.4)
        count.s("y").apply_async(task_id="dead-1", headers={ONCE_HEADER: True})
        worker = TestWorker(app).start()
        try:
            assert app.AsyncResult("dead-1").get(timeout=10) == 1
        finally:
            worker.stop(timeout=5)
    finally:
        app.close()
    assert t.rec.of("count") == [("y",)]


# -- chunks, map, starmap -------------------------------------------------------------------


def test_map_starmap_and_chunks(app: Conveyor, worker: TestWorker, t: SimpleNamespace) -> None:
    assert isinstance(t.mul.map([1, 2]), xmap)
    assert t.add.s(10).clone().args == (10,)
    assert t.mul.map([]).delay().get(timeout=5) == []
    assert t.add.starmap([(1, 2), (3, 4)]).delay().get(timeout=5) == [3, 7]
    parts = t.add.chunks(zip(range(10), range(10), strict=True), 4)
    assert isinstance(parts, chunks) and len(parts.group()) == 3
    assert parts.apply_async().get(timeout=5) == [[0, 2, 4, 6], [8, 10, 12, 14], [16, 18]]
    assert (parts | t.collect.s())().get(timeout=5) == [[0, 2, 4, 6], [8, 10, 12, 14], [16, 18]]
    assert chunks(t.add.s(), [(1, 1)], 5)().get(timeout=5) == [[2]]
    with pytest.raises(ValueError, match="at least 1"):
        t.add.chunks([], 0)


def test_map_uses_signature_partials(app: Conveyor, worker: TestWorker, t: SimpleNamespace) -> None:
    result = xmap(t.mul.s(3), [1, 2, 3]).apply_async()
    assert result.get(timeout=5) == [3, 6, 9]


# -- link / link_error ----------------------------------------------------------------------


def test_link_and_link_error_on_any_call(
    app: Conveyor, worker: TestWorker, t: SimpleNamespace
) -> None:
    ok = t.add.apply_async((2, 3), link=t.mul.s(10), link_error=t.errback.s())
    callback = app.AsyncResult(followup_id(ok.id, "link", 0))
    assert callback.get(timeout=5) == 50
    assert callback.parent == ok
    bad = t.boom.apply_async((1,), link=t.mul.s(10), link_error=[t.errback.s(), t.errback3.s()])
    errback = app.AsyncResult(followup_id(bad.id, "errback", 0))
    errback.get(timeout=5)
    app.AsyncResult(followup_id(bad.id, "errback", 1)).get(timeout=5)
    info = {"type": "ValueError", "message": "boom 1"}
    assert t.rec.of("errback") == [(bad.id, info)]
    ((task_id, info3, traceback),) = t.rec.of("errback3")
    assert (task_id, info3) == (bad.id, info)
    assert "ValueError: boom 1" in traceback  # handlers taking 3 arguments get the traceback
    # the link of a failed task never runs; its id says so
    skipped = app.AsyncResult(followup_id(bad.id, "link", 0))
    assert skipped.state == states.PENDING
    # links on signatures and workflows
    sig = t.add.s(1, 1)
    sig.link(t.mul.s(3))
    sig.link_error(t.errback.s())
    linked = sig.apply_async()
    assert app.AsyncResult(followup_id(linked.id, "link", 0)).get(timeout=5) == 6
    done = chain(t.add.s(1, 1), t.mul.s(2)).apply_async(link=t.collect.s("end"))
    tail = app.AsyncResult(followup_id(done.id, "link", 0))
    assert tail.get(timeout=5) == 4
    assert ("end",) in [call[1:] for call in t.rec.of("collect")]


def test_plain_functions_as_callbacks(
    app: Conveyor, worker: TestWorker, t: SimpleNamespace
) -> None:
    RECORDER.calls.clear()
    # A plain function is refused at the call site (a worker would not know it); as a task
    # it works, and a Conveyor-style errback with a third argument gets the traceback.
    with pytest.raises(TypeError, match="on_success is a plain function, not a task"):
        t.add.apply_async(args=(2, 3), link=on_success)
    with pytest.raises(TypeError, match="on_failure is a plain function"):
        t.add.apply_async(args=(2, 3), link_error=[t.mul.s(1), on_failure])
    assert app.broker.stats(["default"])["default"].ready == 0
    success, failure = app.task(on_success), app.task(on_failure)
    ok = t.add.apply_async(args=(2, 3), link=success, link_error=failure)
    bad = t.boom.apply_async(args=(4,), link=success, link_error=failure)
    app.AsyncResult(followup_id(ok.id, "link", 0)).get(timeout=5)
    app.AsyncResult(followup_id(bad.id, "errback", 0)).get(timeout=5)
    assert RECORDER.of("on_success") == [(5,)]
    ((task_id, exception, traceback),) = RECORDER.of("on_failure")
    assert task_id == bad.id and exception == {"type": "ValueError", "message": "boom 4"}
    assert "Traceback" in traceback
    with pytest.raises(TypeError, match="plain function"):
        t.add.apply_async((1, 1), link=lambda result: None)


# -- nesting --------------------------------------------------------------------------------


def test_nesting_and_navigation(app: Conveyor, worker: TestWorker, t: SimpleNamespace) -> None:
    # a chain of groups: the second group gets the first group's results
    result = chain(group(t.add.s(1, 1), t.add.s(2, 2)), group(t.collect.s("a"), t.collect.s("b")))()
    assert isinstance(result, GroupResult)
    assert result.get(timeout=5) == [[2, 4], [2, 4]]
    assert isinstance(result.parent, GroupResult) and result.parent.get(timeout=5) == [2, 4]
    # a group of chains
    chains = group(t.add.s(1, 1) | t.mul.s(3), t.add.s(2, 2) | t.mul.s(4))()
    assert chains.get(timeout=5) == [6, 16]
    assert [r.parent.get(timeout=5) for r in chains.results] == [2, 4]
    # a chord in a chain, then more steps
    flow = chain(t.add.s(1, 1), group(t.mul.s(2), t.mul.s(3)), t.tsum.s(), t.mul.s(10))
    last = flow()
    assert last.get(timeout=5) == 100
    body = last.parent
    assert isinstance(body, AsyncResult) and body.get(timeout=5) == 10
    header = body.parent
    assert isinstance(header, GroupResult) and header.get(timeout=5) == [4, 6]
    assert isinstance(header.parent, AsyncResult) and header.parent.get(timeout=5) == 2
    # a chain ending in a group
    fan = chain(t.add.s(1, 1), group(t.mul.s(2), t.mul.s(3)))()
    assert isinstance(fan, GroupResult) and fan.get(timeout=5) == [4, 6]


def test_failure_inside_a_chord_in_a_chain(
    app: Conveyor, worker: TestWorker, t: SimpleNamespace
) -> None:
    # a chain step before the chord fails: header, body and later steps are not run
    flow = chain(t.boom.s(1), group(t.mul.s(2), t.mul.s(3)), t.tsum.s(), t.mul.s(10))
    last = flow()
    with pytest.raises(ValueError, match="boom 1"):
        last.get(timeout=5)
    body = last.parent
    assert isinstance(body, AsyncResult) and isinstance(body.parent, GroupResult)
    assert body.state == states.FAILURE
    assert [r.state for r in body.parent.leaves()] == [states.FAILURE, states.FAILURE]
    # a chain inside a chord header fails half-way: its last task counts as failed
    inner = chord([t.boom.s(2) | t.mul.s(2), t.add.s(1, 1)], t.collect.s())()
    with pytest.raises(ChordError, match="boom 2"):
        inner.get(timeout=5)
    settle(worker)
    assert t.rec.of("collect") == []


def test_workflows_in_eager_mode(t: SimpleNamespace) -> None:
    app = make_test_app("eager", task_always_eager=True)
    try:
        add = app.task(name="t.add")(t.add.fn)
        mul = app.task(name="t.mul")(t.mul.fn)
        tsum = app.task(name="t.tsum")(t.tsum.fn)
        assert chain(add.s(3, 4) | mul.s(2))().get(timeout=1) == 14
        assert group(add.s(i, i) for i in range(3))().get(timeout=1) == [0, 2, 4]
        assert chord([add.s(1, 1), add.s(2, 2)])(tsum.s()).get(timeout=1) == 6
    finally:
        app.close()


# -- seed 003 -------------------------------------------------------------------------------

SEED_003 = """
{imports}

app = make_app('tasks')

@app.task
def add(x, y):
    return x + y

@app.task
def mul(x, y):
    return x * y

# 创建一个任务链
chained = chain(add.s(3, 4) | mul.s(2))
result = chained()
print(result.get())

@app.task
def greet(first_name, last_name):
    return f"Hello {{first_name}} {{last_name}}"

# 使用签名封装参数
signature_task = greet.signature(('John', 'Doe'))
result = signature_task.apply_async()
print(result.get())

# 创建一个任务组,并收集返回值
group_task = group([add.s(i, i) for i in range(10)])
result = group_task.apply_async()
results = result.get()
print(results)

celery = app

@celery.task
def add2(a, b):
    return a + b

def on_success(result):
    print('Task completed successfully:', result)

def on_failure(task_id, exception, traceback):
    print('Task failed:', task_id, exception)

try:  # plain functions: refused at the call site (Celery fails to encode them)
    add2.apply_async(args=(2, 3), link=on_success, link_error=on_failure)
except TypeError as exc:
    print("refused:", exc)
on_success, on_failure = celery.task(on_success), celery.task(on_failure)
linked = add2.apply_async(args=(2, 3), link=on_success, link_error=on_failure)
failing = add2.apply_async(args=(2, "x"), link=on_success, link_error=on_failure)
"""


def run_seed(imports: str, app: Conveyor, capsys: pytest.CaptureFixture[str]) -> None:
    module = {"__name__": "seed003", "make_app": lambda name: app}
    exec(textwrap.dedent(SEED_003.format(imports=imports)), module)
    app.AsyncResult(followup_id(module["linked"].id, "link", 0)).get(timeout=5)
    app.AsyncResult(followup_id(module["failing"].id, "errback", 0)).get(timeout=5)
    out = capsys.readouterr().out.splitlines()
    assert out[:3] == ["14", "Hello John Doe", str([i + i for i in range(10)])]
    assert out[3].startswith("refused: on_success is a plain function, not a task")
    assert "Task completed successfully: 5" in out
    failure = next(line for line in out if line.startswith("Task failed:"))
    assert module["failing"].id in failure and "TypeError" in failure


def test_seed_003_canvas_examples(
    app: Conveyor, worker: TestWorker, capsys: pytest.CaptureFixture[str]
) -> None:
    run_seed("from conveyor.canvas import chain, group", app, capsys)


def test_seed_003_verbatim_imports(
    app: Conveyor, worker: TestWorker, capsys: pytest.CaptureFixture[str]
) -> None:
    run_seed("from conveyor import chain\nfrom conveyor import group", app, capsys)


@pytest.fixture(autouse=True)
def _fresh_recorder() -> None:
    RECORDER.calls.clear()
