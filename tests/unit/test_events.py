"""Events on the in-memory broker: what each hook emits, reading, filtering, following, bad
entries, settings; the writer's batching and bounds."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import pytest

from conveyor import Conveyor
from conveyor.events import Event, EventFilter
from conveyor.events.model import STREAM
from conveyor.exceptions import BrokerError
from conveyor.testing import TestWorker, make_test_app
from tests.conftest import wait_until


@pytest.fixture
def app() -> Iterator[Conveyor]:
    app = make_test_app("events", worker_send_task_events=True)
    yield app
    app.close()


def _types(app: Conveyor, task_id: str) -> list[str]:
    app.events.flush()
    return [e.type for e in app.events.read() if e.task_id == task_id]


def test_a_task_life_is_told_by_its_events(app: Conveyor) -> None:
    @app.task(name="add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="boom")
    def boom() -> None:
        raise KeyError("nope")

    with TestWorker(app) as worker:
        ok = add.delay(1, 2)
        bad = boom.delay()
        worker.run_until_idle(propagate=False)
        assert ok.get(timeout=5) == 3
    assert _types(app, ok.id) == ["task-sent", "task-received", "task-started", "task-succeeded"]
    assert _types(app, bad.id) == ["task-sent", "task-received", "task-started", "task-failed"]
    events = {e.type: e for e in app.events.read() if e.task_id == bad.id}
    failed = events["task-failed"]
    assert failed.name == "boom" and failed.queue == "default" and failed.state == "FAILURE"
    assert failed["exception"] == "KeyError: 'nope'"
    assert isinstance(failed["runtime"], float)
    assert failed.hostname == worker.hostname
    kinds = [e.type for e in app.events.read() if e.type.startswith("worker-")]
    assert kinds[0] == "worker-online" and kinds[-1] == "worker-offline"


def test_retry_revoke_expiry_and_dead_letters(app: Conveyor) -> None:
    @app.task(name="flaky", bind=True, max_retries=1, default_retry_delay=0)
    def flaky(self: object) -> None:
        raise self.retry()  # type: ignore[attr-defined]

    @app.task(name="noop")
    def noop() -> None:
        return None

    retried = flaky.delay()
    revoked = noop.delay()
    revoked.revoke()
    expired = noop.apply_async(expires=-1)
    unknown = app.send_task("no.such.task")
    with TestWorker(app) as worker:
        worker.run_until_idle(propagate=False)
    assert "task-retried" in _types(app, retried.id)
    assert _types(app, revoked.id)[-1] == "task-revoked"
    assert _types(app, expired.id)[-1] == "task-expired"
    dead = [e for e in app.events.read() if e.task_id == unknown.id][-1]
    assert dead.type == "task-dead-lettered" and dead["reason"] == "unknown_task"


def test_reading_from_a_position_a_time_and_with_filters(app: Conveyor) -> None:
    writer = app.events.writer
    for n in range(5):
        writer.emit("task-sent", {"uuid": str(n), "name": f"mail.send{n % 2}", "queue": "q"})
    writer.emit("task-failed", {"uuid": "9", "name": "mail.send1", "queue": "other"})
    app.events.flush()
    everything = app.events.read()
    assert [e.task_id for e in everything] == ["0", "1", "2", "3", "4", "9"]
    assert [e.task_id for e in app.events.read(everything[3].position)] == ["4", "9"]
    assert [e.task_id for e in app.events.read(limit=2)] == ["0", "1"]
    only = EventFilter.of(names=["*send1"], states=["failed"])
    assert [e.task_id for e in app.events.read(where=only)] == ["9"]
    assert [e.task_id for e in app.events.read(where=EventFilter.of(queues=["q"]))][-1] == "4"
    assert app.events.read(since=everything[-1].timestamp + 3600) == []
    with pytest.raises(ValueError, match="unknown task state"):
        EventFilter.of(states=["FINISHED"])
    with pytest.raises(ValueError, match="unknown event type"):
        EventFilter.of(types=["task-exploded"])


def test_follow_sees_new_events_only(app: Conveyor) -> None:
    app.events.writer.emit("task-sent", {"uuid": "old"})
    app.events.flush()
    stop = threading.Event()
    seen: list[Event] = []
    follower = app.events.follow(stop=stop, wait=0.05)

    def consume() -> None:
        for event in follower:
            seen.append(event)

    thread = threading.Thread(target=consume, daemon=True)
    position = app.events.last_position()
    thread.start()
    wait_until(lambda: app.broker.streams.last(STREAM) == position, 2)  # started at the end
    try:
        app.events.writer.emit("task-sent", {"uuid": "new"})
        app.events.flush()
        wait_until(lambda: seen, 5, "the followed event")
    finally:
        stop.set()
        thread.join(5)
    assert [e.task_id for e in seen] == ["new"]


def test_malformed_entries_are_skipped_with_a_warning(
    app: Conveyor, caplog: pytest.LogCaptureFixture
) -> None:
    streams = app.broker.streams
    bad = [b"\xff not json", b"[1, 2]", b'{"type": "task-sent"}', b'{"type": 3, "timestamp": 1}']
    streams.append(STREAM, bad, max_length=100, max_age=60)
    app.events.writer.emit("task-sent", {"uuid": "good"})
    app.events.flush()
    with caplog.at_level(logging.WARNING, "conveyor.events"):
        assert [e.task_id for e in app.events.read()] == ["good"]
    assert caplog.text.count("skipping a malformed event") == 4


def test_events_are_off_by_default_and_sent_events_follow_the_setting() -> None:
    app = make_test_app("quiet")
    assert app.conf.task_send_sent_event is None

    @app.task(name="add")
    def add(x: int, y: int) -> int:
        return x + y

    try:
        with TestWorker(app) as worker:
            add.delay(1, 2)
            worker.run_until_idle()
        app.events.flush()
        assert app.events.read() == []
    finally:
        app.close()


def test_caps_keep_the_newest(app: Conveyor) -> None:
    app.conf.events_max_length = 10
    for n in range(25):
        app.events.writer.emit("task-sent", {"uuid": str(n)})
    app.events.flush()
    assert [e.task_id for e in app.events.read()] == [str(n) for n in range(15, 25)]


def test_writer_batches_in_the_background_and_survives_a_broker_error(
    app: Conveyor, monkeypatch: pytest.MonkeyPatch
) -> None:
    streams = app.broker.streams
    calls: list[int] = []
    real = streams.append
    failing = [True]

    def append(stream: str, bodies: list[bytes], **caps: float) -> None:
        calls.append(len(bodies))
        if failing[0]:
            raise BrokerError("broker down")
        real(stream, bodies, max_length=int(caps["max_length"]), max_age=caps["max_age"])

    monkeypatch.setattr(streams, "append", append)
    for n in range(50):
        app.events.writer.emit("task-sent", {"uuid": str(n)})
    wait_until(lambda: calls, 5, "a background flush")
    failing[0] = False
    wait_until(lambda: len(app.events.read()) == 50, 5, "the kept events to be written")
    assert calls[0] == 50  # one batch, not 50 writes


def test_only_task_sent_when_asked() -> None:
    app = make_test_app("sent", task_send_sent_event=True)

    @app.task(name="add")
    def add(x: int, y: int) -> int:
        return x + y

    try:
        with TestWorker(app) as worker:
            result = add.delay(1, 2)
            worker.run_until_idle()
        app.events.flush()
        assert [e.type for e in app.events.read() if e.task_id == result.id] == ["task-sent"]
    finally:
        app.close()
