"""Nothing crashes, wedges or loops on bad input (issue 13): bounded, total decoding; callbacks
and time limits refused at the call site; background loops that survive their own errors."""

from __future__ import annotations

import json
import math
import random
import threading
import time
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from conveyor import ConfigurationError, Conveyor, SoftTimeLimitExceeded
from conveyor.brokers.base import Message
from conveyor.canvas.signature import Signature, signature
from conveyor.describe import preview
from conveyor.exceptions import MalformedMessage, SerializationError
from conveyor.message import (
    MAX_BODY_DEPTH,
    MAX_DEPTH,
    MAX_TIME_LIMIT,
    Envelope,
    body_depth_exceeds,
    decode_envelope,
    encode_envelope,
    from_json_value,
)
from conveyor.testing import TestWorker
from conveyor.worker.timelimits import TimeLimits
from tests.conftest import wait_until


def nested(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


def deep_json(depth: int) -> str:
    return "[" * depth + "1" + "]" * depth


def body(**fields: object) -> bytes:
    return json.dumps({"id": "m-1", "task": "t", **fields}).encode()


def deep_in(field: str, depth: int, task: str = "t") -> bytes:
    """A body whose ``field`` holds a value nested ``depth`` levels deep."""
    holder = {"args": "{}", "kwargs": '{{"a":{}}}', "headers": '{{"h":{}}}', "callbacks": "[{}]"}
    value = holder[field].format(deep_json(depth))
    return f'{{"id":"m","task":"{task}","{field}":{value}}}'.encode()


# -- decoding: bounded and total -------------------------------------------------------------
@pytest.mark.parametrize(
    ("data", "reason", "detail"),
    [
        (b'{"id":"m","task":"t","args":' + deep_json(2500).encode() + b"}", "malformed", "deep"),
        (
            b'{"id":"m","task":"t","kwargs":{"a":' + deep_json(1500).encode() + b"}}",
            "malformed",
            "deep",
        ),
        (
            b'{"id":"m","task":"t","headers":{"h":' + deep_json(5000).encode() + b"}}",
            "malformed",
            "deep",
        ),
        (
            b'{"id":"m","task":"t","callbacks":[' + deep_json(1000).encode() + b"]}",
            "malformed",
            "deep",
        ),
        (b"[" * 100_000, "malformed", "deep"),
        (b"\xff\xfe not json", "undecodable", ""),
        (body(chord={"x": 1}), "malformed", "chord"),
        (body(chord={"id": "c", "size": 0}), "malformed", "chord"),
        (body(chord={"id": "", "size": 2}), "malformed", "chord"),
        (body(soft_time_limit=1e300), "malformed", "soft_time_limit"),
        (body(time_limit=-1), "malformed", "time_limit"),
        (b'{"id":"m","task":"t","soft_time_limit":1e400}', "malformed", "soft_time_limit"),
        (body(task=5), "malformed", "task"),
        (body(priority="high"), "malformed", "priority"),
        (body(callbacks="none"), "malformed", "callbacks"),
    ],
)
def test_decode_envelope_turns_any_bad_body_into_a_typed_reason(
    data: bytes, reason: str, detail: str
) -> None:
    with pytest.raises(MalformedMessage) as caught:
        decode_envelope(data)
    assert caught.value.reason == reason
    assert detail in caught.value.detail


@pytest.mark.parametrize("data", [None, "text", 12, b""])
def test_decode_envelope_of_what_is_not_bytes_is_undecodable(data: Any) -> None:
    with pytest.raises(MalformedMessage) as caught:
        decode_envelope(data)
    assert caught.value.reason == "undecodable"


def test_decode_envelope_refuses_bodies_over_max_bytes() -> None:
    data = body(args=["x" * 2000])
    assert decode_envelope(data).args == ["x" * 2000]
    with pytest.raises(MalformedMessage, match="over message_max_bytes"):
        decode_envelope(data, max_bytes=1024)


def test_body_depth_counts_brackets_outside_strings_only() -> None:
    limit = 10
    assert not body_depth_exceeds(deep_json(limit).encode(), limit)
    assert body_depth_exceeds(deep_json(limit + 1).encode(), limit)
    in_strings = json.dumps({"s": "[" * 500, "t": '\\"[{' * 100, "u": [[1], [2]] * 50})
    assert not body_depth_exceeds(in_strings.encode(), limit)
    assert body_depth_exceeds(json.dumps({"s": "]]]]", "v": nested(limit)}).encode(), limit)
    assert not body_depth_exceeds(b"[[[[[]]" + b"[]" * 10, limit)  # unbalanced: for the decoder
    assert body_depth_exceeds(b"[" * (limit + 1), limit)  # unbalanced, but opens too many


def test_body_depth_agrees_with_a_running_count_of_the_brackets() -> None:
    """The counts it skips can hide no peak: against the depth after every bracket, on
    random walks that climb to the limit, hover near it, pass it or are unbalanced."""
    rng = random.Random(20)
    limit = 12
    for _ in range(400):
        text, depth, peak = [], 0, 0
        for _ in range(rng.randint(limit, 6 * limit)):
            opening = rng.random() < rng.choice((0.5, 0.6, 0.9))
            text.append(rng.choice("[{") if opening else rng.choice("]}"))
            depth += 1 if opening else -1
            peak = max(peak, depth)
        data = json.dumps({"s": "[[[", "v": 1}).encode() + "".join(text).encode()
        assert body_depth_exceeds(data, limit) == (peak > limit), data


def test_deepest_allowed_values_round_trip() -> None:
    envelope = Envelope(id="m", task="t", args=[from_json_value(nested(MAX_DEPTH - 1))])
    assert decode_envelope(encode_envelope(envelope)).args == envelope.args
    with pytest.raises(ValueError, match="nested more than"):
        from_json_value(nested(MAX_DEPTH + 1))
    assert not body_depth_exceeds(deep_json(MAX_BODY_DEPTH).encode(), MAX_BODY_DEPTH)


def test_producer_refuses_too_deep_values_naming_them(app: Conveyor) -> None:
    @app.task
    def take(*args: object, **kwargs: object) -> None:
        pass

    with pytest.raises(SerializationError, match=r"argument 1.*more than 100 levels"):
        take.delay(1, nested(MAX_DEPTH + 1))
    with pytest.raises(SerializationError, match="keyword argument 'deep'"):
        take.delay(deep=nested(5000))  # far past Python's recursion limit: still this error
    with pytest.raises(SerializationError, match="header 'trace'"):
        take.apply_async(headers={"trace": nested(MAX_DEPTH + 1)})
    take.delay(nested(MAX_DEPTH - 1))  # the deepest allowed value is sent
    assert app.broker.stats()["default"].ready == 1


# -- the worker dead-letters what it cannot decode, and goes on ------------------------------
@pytest.mark.parametrize(
    ("data", "detail"),
    [
        (deep_in("args", 3000, "ok"), "nested more than"),
        (deep_in("args", 150, "ok"), "nested more than"),
        (deep_in("headers", 2000, "ok"), "nested more than"),
        (body(task="ok", chord={"x": 1}), "chord"),
        (body(task="ok", soft_time_limit=1e300), "soft_time_limit"),
        (body(task="ok", args=[{"$type": "decimal", "v": "not a number"}]), "bad arguments"),
        (body(task="ok", callbacks=[{"task": 5}]), "bad callback 0"),
        (body(task="ok", errbacks=[{"task": ""}]), "bad errback 0"),
        (
            body(task="ok", callbacks=[{"subtask_type": "chain", "tasks": [{"task": 7}]}]),
            "callback",
        ),
    ],
)
def test_worker_dead_letters_bad_messages_without_running_them(
    app: Conveyor, worker: TestWorker, data: bytes, detail: str
) -> None:
    ran: list[object] = []

    @app.task(name="ok")
    def ok(*args: object) -> str:
        ran.append(args)
        return "fine"

    app.broker.publish([Message("m", "default", data)])
    dead = wait_until(app.broker.dead_letters, 10, "dead letter")
    assert [(d.id, d.reason) for d in dead] == [("m", "malformed")]
    assert detail in dead[0].detail
    assert dead[0].delivery_count == 1  # dead-lettered at once, not after redeliveries
    assert ok.delay().get(timeout=10) == "fine"  # and the worker goes on
    assert ran == [()]


def test_a_failure_to_prepare_dead_letters_the_message(
    app: Conveyor, worker: TestWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    @app.task
    def ok() -> int:
        return 1

    real = worker.runner.prepare_envelope

    def broken(envelope: Envelope, *args: Any) -> Any:
        if envelope.id == "poison":
            raise RuntimeError("injected")
        return real(envelope, *args)

    monkeypatch.setattr(worker.runner, "prepare_envelope", broken)
    app.send_task(ok.name, task_id="poison")
    dead = wait_until(app.broker.dead_letters, 10, "dead letter")
    assert (dead[0].id, dead[0].reason) == ("poison", "malformed")
    assert "RuntimeError: injected" in dead[0].detail
    assert ok.delay().get(timeout=10) == 1


# -- callbacks: task names -----------------------------------------------------------------
@pytest.mark.parametrize("name", [5, "", None, b"bytes"])
def test_signature_task_name_must_be_a_non_empty_string(app: Conveyor, name: Any) -> None:
    with pytest.raises(TypeError, match="non-empty string"):
        Signature(name)
    with pytest.raises(TypeError):
        signature({"task": name, "args": []})

    @app.task
    def first() -> None:
        pass

    with pytest.raises(TypeError):
        first.apply_async(link={"task": name})
    assert not app.broker.stats().get("default")  # nothing was sent


# -- time limits ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("soft_time_limit", 1e300),
        ("soft_time_limit", math.inf),
        ("soft_time_limit", math.nan),
        ("time_limit", -1),
        ("time_limit", MAX_TIME_LIMIT + 1),
        ("time_limit", "soon"),
        ("countdown", math.inf),
        ("expires", math.nan),
        ("eta", math.inf),
    ],
)
def test_absurd_limits_and_times_are_refused_at_the_call_site(
    app: Conveyor, option: str, value: object
) -> None:
    @app.task
    def job() -> None:
        pass

    with pytest.raises(ConfigurationError, match=option):
        job.apply_async(**{option: value})
    assert not app.broker.stats().get("default")


def test_sane_limits_are_accepted(app: Conveyor) -> None:
    @app.task
    def job() -> None:
        pass

    job.apply_async(soft_time_limit=MAX_TIME_LIMIT, time_limit=timedelta(hours=1))
    job.apply_async(soft_time_limit=0, time_limit="2.5")
    assert app.broker.stats()["default"].ready == 2


def fake_control(task_id: str, soft: float | None) -> Any:
    envelope = SimpleNamespace(id=task_id, soft_time_limit=soft, time_limit=None)
    job = SimpleNamespace(envelope=envelope, task=SimpleNamespace(name="t"))
    return SimpleNamespace(job=job, active=True)


def test_timer_survives_a_failing_interrupt_and_far_deadlines(
    caplog: pytest.LogCaptureFixture,
) -> None:
    controls = {c.job.envelope.id: c for c in [fake_control(f"t{i}", 0.05) for i in range(3)]}
    controls["far"] = fake_control("far", 1e300)  # arm() itself must not trip on it
    fired: list[str] = []

    def interrupt(control: Any, exc_type: type[BaseException]) -> None:
        assert exc_type is SoftTimeLimitExceeded
        fired.append(control.job.envelope.id)
        if len(fired) == 1:
            raise RuntimeError("injected interrupt failure")

    stopped = threading.Event()
    timers = TimeLimits(SimpleNamespace(get=controls.get), stopped, interrupt)
    thread = threading.Thread(target=timers.run, daemon=True)
    thread.start()
    try:
        timers.arm(controls["far"])
        for task_id in ("t0", "t1"):
            timers.arm(controls[task_id])
        wait_until(lambda: len(fired) == 2, 5, "both soft limits")
        timers.arm(controls["t2"])  # armed after the failure: still enforced
        wait_until(lambda: len(fired) == 3, 5, "the later soft limit")
        assert thread.is_alive()
        assert "injected interrupt failure" in caplog.text
    finally:
        stopped.set()
        timers.wake()
        thread.join(5)
    assert fired == ["t0", "t1", "t2"]


def test_soft_limits_still_work_after_the_timer_failed_once(
    app: Conveyor, monkeypatch: pytest.MonkeyPatch
) -> None:
    @app.task
    def slow(seconds: float) -> str:
        deadline = time.monotonic() + seconds
        try:
            while time.monotonic() < deadline:  # short sleeps: the interrupt lands between
                time.sleep(0.01)
        except SoftTimeLimitExceeded:
            return "interrupted"
        return "ran out"

    with TestWorker(app) as worker:
        real = worker._timers._interrupt
        calls: list[object] = []

        def flaky(control: Any, exc_type: type[BaseException]) -> None:
            calls.append(control)
            if len(calls) == 1:
                raise RuntimeError("injected")
            real(control, exc_type)

        monkeypatch.setattr(worker._timers, "_interrupt", flaky)
        first = slow.apply_async((1.0,), soft_time_limit=0.1)
        assert first.get(timeout=10) == "ran out"  # its interrupt failed, logged
        second = slow.apply_async((5.0,), soft_time_limit=0.1)
        assert second.get(timeout=10) == "interrupted"


# -- background loops ----------------------------------------------------------------------
def test_consumer_survives_an_unexpected_error(
    app: Conveyor, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    @app.task
    def ok() -> str:
        return "fine"

    real = app.broker.lease
    failures = [ValueError("injected lease failure")]

    def flaky(*args: Any, **kwargs: Any) -> Any:
        if failures:
            raise failures.pop()
        return real(*args, **kwargs)

    monkeypatch.setattr(app.broker, "lease", flaky)
    with TestWorker(app) as worker:
        assert ok.delay().get(timeout=10) == "fine"
        assert not failures
        assert not worker.stopped
    assert "consumer: unexpected error" in caplog.text


def test_consumer_unholds_what_it_could_not_admit(
    app: Conveyor, monkeypatch: pytest.MonkeyPatch
) -> None:
    @app.task
    def ok() -> str:
        return "fine"

    with TestWorker(app) as worker:
        real = worker.runner.started_record
        failures = [RuntimeError("injected admit failure")]

        def flaky(job: Any) -> Any:
            if failures:
                raise failures.pop()
            return real(job)

        monkeypatch.setattr(worker.runner, "started_record", flaky)
        result = ok.delay()
        # Not renewed: the lease expires and the message is delivered again.
        assert result.get(timeout=20) == "fine"
        wait_until(lambda: not worker.inflight.held, 5, "nothing held")


def test_finisher_survives_a_failing_batch(app: Conveyor, caplog: pytest.LogCaptureFixture) -> None:
    @app.task
    def fail() -> None:
        raise KeyError("task failure")

    failures = [RuntimeError("injected settle failure")]

    def before_settle(outcomes: list[Any]) -> None:
        if failures:
            raise failures.pop()

    with TestWorker(app, before_settle=before_settle):
        result = fail.delay()  # its first settling fails: redelivered, settled then
        with pytest.raises(KeyError):
            result.get(timeout=20)
    assert "finisher: unexpected error" in caplog.text


def test_a_dead_loop_stops_the_worker(app: Conveyor, caplog: pytest.LogCaptureFixture) -> None:
    worker = TestWorker(app)

    def dies() -> None:
        raise SystemExit("injected: the loop cannot go on")

    worker._timers.run = dies
    worker.start()
    wait_until(lambda: worker.stopped, 10, "the worker stopped")
    assert "the timer loop died" in caplog.text


# -- conveyor dlq list -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("data", "start"),
    [
        (deep_in("args", 3000), "<malformed: b'{"),
        (deep_in("args", 150), "t([[[["),  # json.dumps of it needs no deep recursion here
        (b"\xff\xfe\x00", "<undecodable: b'\\xff"),
        (b"", "<undecodable: b''>"),
        (body(chord={"x": 1}), "<malformed: "),
    ],
)
def test_dlq_preview_never_raises(data: bytes, start: str) -> None:
    text = preview(data)
    assert text.startswith(start) and len(text) <= 60
    assert preview(data, 1000).startswith(start)


def test_dlq_preview_of_a_good_body() -> None:
    assert preview(body(task="add", args=[2, 3])) == "add(2, 3)"
