"""conveyor.signals: Celery's signals with Celery's arguments, on top of the middleware."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import conveyor
from conveyor import Conveyor, Reject, loading, signals, states
from conveyor.beat.scheduler import Beat
from conveyor.brokers.base import Message
from conveyor.exceptions import MalformedMessage, NotRegistered
from conveyor.message import Envelope
from conveyor.middleware import HOOK_NAMES, Hooks
from conveyor.signals import ExceptionInfo, Signal, SignalsMiddleware
from conveyor.task import Request, Task
from conveyor.testing import TestWorker, make_test_app

type Calls = list[tuple[str, dict[str, Any]]]


@pytest.fixture
def app() -> Iterator[Conveyor]:
    app = make_test_app()
    yield app
    app.close()


@pytest.fixture
def listen() -> Iterator[Callable[..., Calls]]:
    """``listen(signal, ...)`` records each send of the signals as (name, kwargs); every
    receiver connected by a test is disconnected after it (signals are process-global)."""
    connected: list[tuple[Signal, Callable[..., object], object]] = []

    def connect(*wanted: Signal, sender: object = None) -> Calls:
        calls: Calls = []
        for signal in wanted:

            def receiver(_name: str = signal.name, **kwargs: Any) -> None:
                calls.append((_name, kwargs))

            signal.connect(receiver, sender=sender)
            connected.append((signal, receiver, sender))
        return calls

    yield connect
    for signal, receiver, sender in connected:
        signal.disconnect(receiver, sender=sender)


def run(app: Conveyor) -> None:
    with TestWorker(app) as worker:
        worker.run_until_idle(10, propagate=False)


def names(calls: Calls) -> list[str]:
    return [name for name, _ in calls]


def signal_hooks(hooks: Hooks) -> set[str]:
    """The hooks of ``hooks`` that call a SignalsMiddleware."""
    return {
        name
        for name in HOOK_NAMES
        if any(
            isinstance(getattr(h, "__self__", None), SignalsMiddleware)
            for h in getattr(hooks, name)
        )
    }


# -- zero cost ---------------------------------------------------------------------------------
def test_no_hook_is_registered_while_nothing_is_connected(app: Conveyor) -> None:
    worker = TestWorker(app)
    assert signal_hooks(app.hooks) == set() and signal_hooks(worker.hooks) == set()
    quiet = make_test_app("quiet", worker_send_task_events=False)  # events use the hooks
    assert quiet.hooks.after_process == () and quiet.hooks.before_publish == ()

    def receiver(**kwargs: object) -> None:
        pass

    signals.task_success.connect(receiver)
    try:
        # Every live Hooks (the app's, the worker's, another app's) got the hook it feeds.
        other = make_test_app("other")
        assert signal_hooks(app.hooks) == {"after_process"}
        assert signal_hooks(worker.hooks) == {"after_process"}
        assert signal_hooks(other.hooks) == {"after_process"}
        signals.before_task_publish.connect(receiver)
        assert signal_hooks(app.hooks) == {"after_process", "before_publish"}
        signals.before_task_publish.disconnect(receiver)
    finally:
        signals.task_success.disconnect(receiver)
    assert signal_hooks(app.hooks) == set() and signal_hooks(worker.hooks) == set()
    assert signal_hooks(other.hooks) == set()
    other.close()


# -- tasks -------------------------------------------------------------------------------------
def test_success_sends_received_prerun_success_postrun_once_with_celerys_arguments(
    app: Conveyor, listen: Callable[..., Calls]
) -> None:
    s = signals
    calls = listen(s.task_received, s.task_prerun, s.task_success, s.task_failure, s.task_postrun)

    @app.task(name="sig.add")
    def add(x: int, y: int = 0) -> int:
        return x + y

    result = add.delay(2, y=3)
    run(app)
    assert result.get(timeout=5) == 5
    assert names(calls) == ["task_received", "task_prerun", "task_success", "task_postrun"]
    received, prerun, success, postrun = (kwargs for _, kwargs in calls)
    assert received["sender"] is app
    assert isinstance(received["request"], Request) and received["request"].id == result.id
    assert prerun == {
        "signal": s.task_prerun,
        "sender": add,
        "task_id": result.id,
        "task": add,
        "args": [2],
        "kwargs": {"y": 3},
    }
    assert success == {"signal": s.task_success, "sender": add, "result": 5}
    assert postrun == {
        "signal": s.task_postrun,
        "sender": add,
        "task_id": result.id,
        "task": add,
        "args": [2],
        "kwargs": {"y": 3},
        "retval": 5,
        "state": states.SUCCESS,
    }


def test_failure_sends_task_failure_with_exception_traceback_and_einfo(
    app: Conveyor, listen: Callable[..., Calls]
) -> None:
    calls = listen(signals.task_success, signals.task_failure, signals.task_postrun)

    @app.task(name="sig.boom")
    def boom(x: int) -> None:
        raise ValueError(f"bad {x}")

    result = boom.delay(7)
    run(app)
    assert result.state == states.FAILURE
    assert names(calls) == ["task_failure", "task_postrun"]
    failure, postrun = calls[0][1], calls[1][1]
    error = failure["exception"]
    assert isinstance(error, ValueError) and str(error) == "bad 7"
    assert failure["sender"] is boom and failure["task_id"] == result.id
    assert failure["args"] == [7] and failure["kwargs"] == {}
    assert failure["traceback"] is error.__traceback__ is not None
    einfo = failure["einfo"]
    assert isinstance(einfo, ExceptionInfo) and einfo.exception is error
    assert einfo.type is ValueError and "ValueError: bad 7" in einfo.traceback
    assert postrun["state"] == states.FAILURE and postrun["retval"] is error


def test_retry_sends_task_retry_per_retry_with_request_reason_and_einfo(
    app: Conveyor, listen: Callable[..., Calls]
) -> None:
    calls = listen(signals.task_retry, signals.task_success, signals.task_failure)
    attempts: list[int] = []

    @app.task(name="sig.flaky", bind=True)
    def flaky(self: Task[..., object]) -> str:
        attempts.append(self.request.retries)
        if len(attempts) < 3:
            raise self.retry(exc=KeyError(len(attempts)), countdown=0)
        return "ok"

    result = flaky.delay()
    run(app)
    assert result.get(timeout=5) == "ok"
    assert names(calls) == ["task_retry", "task_retry", "task_success"]
    for number, (_, retry) in enumerate(calls[:2], start=1):
        assert retry["sender"] is flaky
        assert isinstance(retry["request"], Request) and retry["request"].id == result.id
        assert retry["request"].retries == number - 1
        assert isinstance(retry["reason"], KeyError) and retry["reason"].args == (number,)
        assert retry["einfo"].exception is retry["reason"]


def test_revoked_and_expired_send_task_revoked(app: Conveyor, listen: Callable[..., Calls]) -> None:
    calls = listen(signals.task_revoked, signals.task_prerun)

    @app.task(name="sig.never")
    def never() -> None:
        raise AssertionError("must not run")

    revoked = never.delay()
    app.revoke(revoked.id)
    expired = never.apply_async(expires=datetime.now(UTC) - timedelta(seconds=1))
    run(app)
    assert names(calls) == ["task_revoked", "task_revoked"]
    by_id = {kwargs["request"].id: kwargs for _, kwargs in calls}
    for task_id, was_expired in ((revoked.id, False), (expired.id, True)):
        sent = by_id[task_id]
        assert sent["sender"] is never and sent["request"].task == "sig.never"
        assert sent["terminated"] is False and sent["signum"] is None
        assert sent["expired"] is was_expired


def test_terminated_task_sends_task_revoked_with_terminated(
    app: Conveyor, listen: Callable[..., Calls]
) -> None:
    calls = listen(signals.task_revoked)
    started = threading.Event()

    @app.task(name="sig.slow")
    def slow() -> None:
        started.set()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # Python-level loop: interruptible
            pass

    result = slow.delay()
    with TestWorker(app) as worker:
        assert started.wait(10)
        app.revoke(result.id, terminate=True)
        worker.run_until_idle(20, propagate=False)
    assert result.state == states.REVOKED
    assert names(calls) == ["task_revoked"]
    assert calls[0][1]["terminated"] is True and calls[0][1]["expired"] is False


def test_unknown_and_undecodable_send_task_unknown_and_task_rejected(
    app: Conveyor, listen: Callable[..., Calls]
) -> None:
    calls = listen(signals.task_unknown, signals.task_rejected)
    unknown = app.send_task("sig.nobody")
    app.broker.publish([Message("garbage-1", "default", b"not a message")])
    run(app)
    assert sorted(names(calls)) == ["task_rejected", "task_unknown"]
    sent = dict(calls)
    assert sent["task_unknown"]["sender"] is app
    assert sent["task_unknown"]["name"] == "sig.nobody" and sent["task_unknown"]["id"] == unknown.id
    assert isinstance(sent["task_unknown"]["message"], Envelope)
    assert isinstance(sent["task_unknown"]["exc"], NotRegistered)
    assert sent["task_rejected"]["message"] is None
    exc = sent["task_rejected"]["exc"]
    assert isinstance(exc, MalformedMessage) and exc.reason == "undecodable"


def test_reject_sends_no_task_failure_like_celery(
    app: Conveyor, listen: Callable[..., Calls]
) -> None:
    calls = listen(signals.task_failure, signals.task_postrun)

    @app.task(name="sig.reject")
    def reject() -> None:
        raise Reject("no")

    reject.delay()
    run(app)
    assert names(calls) == ["task_postrun"]


# -- publishing ----------------------------------------------------------------------------------
def test_publish_signals_carry_the_name_queue_and_a_header_the_task_sees(
    app: Conveyor, listen: Callable[..., Calls]
) -> None:
    def add_header(headers: dict[str, object], **kwargs: object) -> None:
        headers["tenant"] = "acme"

    signals.before_task_publish.connect(add_header)
    try:
        calls = listen(signals.before_task_publish, signals.after_task_publish)
        seen: list[object] = []

        @app.task(name="sig.headers", bind=True)
        def headers(self: Task[..., object]) -> None:
            seen.append(self.request.headers.get("tenant"))

        result = headers.apply_async(queue="default")
        run(app)
    finally:
        signals.before_task_publish.disconnect(add_header)
    assert seen == ["acme"]
    assert names(calls) == ["before_task_publish", "after_task_publish"]
    before, after = calls[0][1], calls[1][1]
    assert before["sender"] == "sig.headers" and after["sender"] == "sig.headers"
    assert before["routing_key"] == "default" and before["exchange"] == ""
    assert before["body"]["id"] == result.id and before["body"]["task"] == "sig.headers"
    assert before["headers"]["tenant"] == "acme"
    assert before["declare"] == [] and before["retry_policy"] is None
    assert after["body"]["id"] == result.id and after["headers"]["tenant"] == "acme"


def test_sender_filter_and_dispatch_uid(app: Conveyor, listen: Callable[..., Calls]) -> None:
    @app.task(name="sig.a")
    def a() -> int:
        return 1

    @app.task(name="sig.b")
    def b() -> int:
        return 2

    only_a = listen(signals.task_success, sender=a)
    only_b_published = listen(signals.after_task_publish, sender="sig.b")
    twice: list[object] = []

    def count(sender: object, **kwargs: object) -> None:
        twice.append(sender)

    signals.task_success.connect(count, dispatch_uid="count")
    signals.task_success.connect(lambda **kw: twice.append(kw), dispatch_uid="count")  # dup
    try:
        a.delay()
        b.delay()
        run(app)
    finally:
        assert signals.task_success.disconnect(dispatch_uid="count")
    assert [kwargs["result"] for _, kwargs in only_a] == [1]
    assert [kwargs["sender"] for _, kwargs in only_b_published] == ["sig.b"]
    assert sorted(t.name for t in twice if isinstance(t, Task)) == ["sig.a", "sig.b"]
    assert len(twice) == 2


def test_a_raising_receiver_is_logged_and_loses_nothing(
    app: Conveyor, listen: Callable[..., Calls], caplog: pytest.LogCaptureFixture
) -> None:
    def explode(**kwargs: object) -> None:
        raise RuntimeError("receiver")

    raising = (
        signals.before_task_publish,
        signals.after_task_publish,
        signals.task_prerun,
        signals.task_postrun,
        signals.task_success,
        signals.task_retry,
        signals.worker_init,
    )
    for signal in raising:
        signal.connect(explode)
    try:
        calls = listen(signals.task_success)  # connected after the raising one

        @app.task(name="sig.fine", bind=True)
        def fine(self: Task[..., object], x: int) -> int:
            if not self.request.retries:
                raise self.retry(countdown=0)
            return x * 2

        with caplog.at_level(logging.ERROR, logger="conveyor.signals"):
            results = [fine.delay(i) for i in range(5)]
            run(app)
    finally:
        for signal in raising:
            signal.disconnect(explode)
    assert [r.get(timeout=5) for r in results] == [0, 2, 4, 6, 8]
    assert len(calls) == 5
    assert app.broker.dead_letters() == []
    assert any("raised" in r.getMessage() for r in caplog.records)
    # A raising receiver's exception is its response (Celery's send too).
    signals.task_success.connect(explode)
    try:
        responses = dict(signals.task_success.send(sender=None, result=1))
    finally:
        signals.task_success.disconnect(explode)
    assert isinstance(responses[explode], RuntimeError)


# -- workers, beat, logging --------------------------------------------------------------------
def test_in_process_worker_sends_worker_init_ready_and_shutdown(
    app: Conveyor, listen: Callable[..., Calls]
) -> None:
    calls = listen(signals.worker_init, signals.worker_ready, signals.worker_shutdown)
    worker = TestWorker(app)
    with worker:
        assert names(calls) == ["worker_init", "worker_ready"]
    assert names(calls) == ["worker_init", "worker_ready", "worker_shutdown"]
    assert all(kwargs["sender"] is worker for _, kwargs in calls)


def test_beat_sends_beat_init_with_itself(app: Conveyor, listen: Callable[..., Calls]) -> None:
    calls = listen(signals.beat_init)
    beat = Beat(app)
    stop = threading.Event()
    stop.set()
    beat.run(stop)
    assert names(calls) == ["beat_init"] and calls[0][1]["sender"] is beat


def test_setup_logging_receiver_replaces_conveyors_logging_setup(
    listen: Callable[..., Calls],
) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        after = listen(signals.after_setup_logger, signals.after_setup_task_logger)
        marker = logging.NullHandler()
        root.handlers[:] = [marker]
        loading.setup_logging("warning")
        assert root.handlers != [marker]  # Conveyor configured logging ...
        assert names(after) == ["after_setup_logger", "after_setup_task_logger"]
        assert after[0][1]["logger"] is root and after[0][1]["loglevel"] == logging.WARNING
        assert after[0][1]["format"] == loading.LOG_FORMAT

        setup = listen(signals.setup_logging)
        root.handlers[:] = [marker]
        loading.setup_logging("info")
        assert root.handlers == [marker]  # ... but not with a setup_logging receiver
        assert setup[0][1]["loglevel"] == logging.INFO and setup[0][1]["logfile"] is None
        assert len(after) == 2
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)


def test_signal_class_is_shared_with_the_app() -> None:
    assert conveyor.Signal is Signal
    app = make_test_app()
    got: list[object] = []
    app.on_after_configure.connect(lambda sender, **kw: got.append(sender))
    app.finalize()
    assert got == [app]
    app.close()
