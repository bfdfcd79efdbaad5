"""The bookkeeping of messages that left the broker without a worker settling them
(``conveyor.worker.departures``), in process on the memory broker: a sweep's dead letter
(``worker_lost``) and a purged message free their unique keys, end their batch member and
give back their concurrency slot; doing it twice counts nothing twice. Real workers killed
on every broker: tests/integration/test_departures_processes.py."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from conveyor import ChordError, Conveyor, batch, chord, states
from conveyor.brokers.base import DEPARTURE_CLAIM, Message
from conveyor.canvas.batch import BATCH_HEADER, BatchResult
from conveyor.result import AsyncResult, GroupResult
from conveyor.testing import TestWorker, make_test_app
from conveyor.worker.departures import Departures
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
    app = make_test_app("departures", broker_lease_timeout=0.05, task_max_deliveries=1)

    @app.task(name="d.work")
    def work(n: int) -> int:
        return n

    @app.task(name="d.limited", concurrency_limit=1)
    def limited(n: int) -> int:
        return n

    for kind in ("success", "complete", "death"):

        def callback(summary: dict[str, Any], _kind: str = kind) -> None:
            calls.add(_kind, summary)

        app.task(name=f"d.on_{kind}")(callback)
    yield app
    app.close()


def callbacks(app: Conveyor) -> dict[str, Any]:
    return {f"on_{k}": app.signature(f"d.on_{k}") for k in ("success", "complete", "death")}


def lose(app: Conveyor, count: int) -> None:
    """Lease ``count`` messages and let their leases expire until the sweep dead-letters
    them (``task_max_deliveries=1``), as if their workers died."""
    leased = app.broker.lease(["default"], count, 1)
    assert len(leased) == count

    def buried() -> bool:
        app.broker.sweep()
        return len(app.broker.dead_letters()) >= count

    wait_until(buried, 5, "the sweep dead-letters the lost messages")
    assert {d.reason for d in app.broker.dead_letters()} == {"worker_lost"}


def test_a_swept_dead_letter_frees_its_key_and_ends_its_batch_once(
    app: Conveyor, calls: Calls
) -> None:
    first = app.send_task("d.work", (1,), unique_for=600)
    assert app.send_task("d.work", (1,), unique_for=600).duplicate_of == first.id
    members = [app.signature("d.work", (2,)), app.signature("d.work", (3,))]
    group = batch(members, **callbacks(app)).apply_async()
    [lost_member, _] = group.results
    lose(app, 2)  # the unique task and the first member

    departures = Departures(app, "test")
    assert departures.drain() == 2
    again = app.send_task("d.work", (1,), unique_for=600)
    assert again.id != first.id and again.duplicate_of is None, "the key is free"
    assert app.AsyncResult(first.id).state == states.FAILURE
    assert app.AsyncResult(lost_member.id).state == states.FAILURE
    with TestWorker(app) as worker:
        worker.run_until_idle()
    (death,) = calls.of("death")
    assert (death["task_id"], death["reason"]) == (lost_member.id, "worker_lost")
    (complete,) = calls.of("complete")
    assert (complete["total"], complete["failed"], complete["dead"]) == (2, 1, 1)
    assert calls.of("success") == []

    # Bookkeeping done again (a worker died before the broker forgot it): nothing changes.
    for dead in app.broker.dead_letters():
        app.broker.replay_dead([dead.id])
    with TestWorker(app) as worker:  # the replayed member succeeds this time
        worker.run_until_idle()
    assert app.AsyncResult(lost_member.id).state == states.SUCCESS
    progress = BatchResult(group.id, app).progress()
    assert (progress.total, progress.done, progress.failed, progress.dead) == (2, 2, 1, 1)
    assert len(calls.of("death")) == len(calls.of("complete")) == 1
    assert calls.of("success") == []


def test_bookkeeping_twice_counts_once(app: Conveyor, calls: Calls) -> None:
    group = batch([app.signature("d.work", (1,))], **callbacks(app)).apply_async()
    lose(app, 1)
    departures = Departures(app, "test")
    [taken] = app.broker.take_departures()
    assert departures._account(taken) and departures._account(taken)
    app.broker.forget_departures([taken])
    with TestWorker(app) as worker:
        worker.run_until_idle()
    assert len(calls.of("death")) == len(calls.of("complete")) == 1
    assert BatchResult(group.id, app).progress().done == 1


def test_a_lost_task_gives_back_its_concurrency_slot(app: Conveyor) -> None:
    sent = app.send_task("d.limited", (1,))
    slot = "task:d.limited"
    assert app.broker.limits.acquire(slot, 1, sent.id, 600)  # as its dead worker did
    lose(app, 1)
    assert app.broker.limits.holders(slot) == [sent.id]
    Departures(app, "test").drain()
    assert app.broker.limits.holders(slot) == []


def test_purged_messages_free_their_keys_and_end_their_batch(app: Conveyor, calls: Calls) -> None:
    first = app.send_task("d.work", (1,), unique_for=600)
    later = app.send_task("d.work", (2,), unique_for=600, countdown=600)
    group = batch([app.signature("d.work", (3,))], **callbacks(app)).apply_async()
    assert app.broker.purge(["default"]) == 3
    assert Departures(app, "test").drain() == 3
    assert app.send_task("d.work", (1,), unique_for=600).id != first.id
    assert app.send_task("d.work", (2,), unique_for=600).id != later.id
    assert app.AsyncResult(first.id).state == states.QUEUED, "purge records nothing"
    with TestWorker(app) as worker:
        worker.run_until_idle()
    (complete,) = calls.of("complete")
    assert (complete["batch_id"], complete["failed"], complete["dead"]) == (group.id, 1, 0)
    assert calls.of("success") == calls.of("death") == []


def test_a_malformed_member_is_dead_and_ends_its_batch(app: Conveyor, calls: Calls) -> None:
    group = batch([app.signature("d.work", (1,))], **callbacks(app)).apply_async()
    kv = app.results.kv
    kv.join(f"batch:{group.id}:members", "bad-1", app.results.expires)  # as _send counts one
    body = {
        "id": "bad-1",
        "task": "d.work",
        "args": [{"$type": "decimal", "v": "not a number"}],
        "headers": {BATCH_HEADER: group.id},
    }
    app.broker.publish([Message("bad-1", "default", json.dumps(body).encode())])
    with TestWorker(app) as worker:
        worker.run_until_idle(propagate=False)
    [dead] = app.broker.dead_letters()
    assert (dead.id, dead.reason) == ("bad-1", "malformed")
    (death,) = calls.of("death")
    assert (death["task_id"], death["reason"]) == ("bad-1", "malformed")
    (complete,) = calls.of("complete")
    assert (complete["total"], complete["failed"], complete["dead"]) == (2, 1, 1)
    assert calls.of("success") == []


def test_a_lost_chord_header_task_fails_the_chord_instead_of_stalling_it(app: Conveyor) -> None:
    flow = chord(
        [app.signature("d.work", (1,)), app.signature("d.work", (2,))],
        app.signature("d.work", (3,)),
    )
    body = flow.freeze()
    assert isinstance(body, AsyncResult) and isinstance(body.parent, GroupResult)
    flow.apply_async()
    lose(app, 1)  # the first header task
    Departures(app, "test").drain()
    with TestWorker(app) as worker:
        worker.run_until_idle(propagate=False)
    with pytest.raises(ChordError, match="WorkerLostError"):
        body.get(timeout=5)


def test_a_departure_whose_worker_died_mid_bookkeeping_is_taken_again_after_its_claim(
    app: Conveyor, calls: Calls, monkeypatch: pytest.MonkeyPatch
) -> None:
    group = batch([app.signature("d.work", (1,))], **callbacks(app)).apply_async()
    lose(app, 1)
    assert len(app.broker.take_departures()) == 1  # its worker dies before the bookkeeping
    assert Departures(app, "test").drain() == 0, "claimed: not taken again yet"
    later = app.broker.time() + DEPARTURE_CLAIM + 1
    monkeypatch.setattr(app.broker, "time", lambda: later)
    assert Departures(app, "test").drain() == 1
    assert app.broker.take_departures() == []
    with TestWorker(app) as worker:
        worker.run_until_idle()
    assert len(calls.of("death")) == len(calls.of("complete")) == 1
    assert BatchResult(group.id, app).progress().dead == 1
