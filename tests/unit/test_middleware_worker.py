"""Middleware in the worker: task hooks (which, when, with what) and lifecycle hooks."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from conveyor import Conveyor, states
from conveyor.brokers.base import Message
from conveyor.message import Envelope
from conveyor.middleware import Middleware, WorkerInfo
from conveyor.testing import TestWorker, make_test_app
from conveyor.worker.job import Action, Job, Outcome


class Recorder(Middleware):
    """Records every task hook call: (hook, task name or message id, state, thread)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []
        self.threads: dict[str, set[int]] = {}
        self.lifecycle: list[tuple[str, str]] = []

    def _add(self, hook: str, key: str, state: str = "") -> None:
        self.calls.append((hook, key, state))
        self.threads.setdefault(key, set()).add(threading.get_ident())

    def worker_start(self, worker: WorkerInfo) -> None:
        self.lifecycle.append(("worker_start", worker.hostname))

    def worker_stop(self, worker: WorkerInfo) -> None:
        self.lifecycle.append(("worker_stop", worker.hostname))

    def before_process(self, job: Job) -> None:
        self._add("before_process", job.task.name)

    def after_process(self, job: Job, outcome: Outcome) -> None:
        self._add("after_process", job.task.name, outcome.state)

    def on_retry(self, job: Job, outcome: Outcome) -> None:
        self._add("on_retry", job.task.name, outcome.state)

    def on_dead_letter(self, envelope: Envelope | None, outcome: Outcome) -> None:
        self._add("on_dead_letter", envelope.task if envelope else "?", outcome.reason)

    def on_revoked(self, envelope: Envelope, outcome: Outcome) -> None:
        self._add("on_revoked", envelope.task, outcome.state)

    def on_skip(self, envelope: Envelope, outcome: Outcome) -> None:
        self._add("on_skip", envelope.task, outcome.state)

    def of(self, key: str) -> list[tuple[str, str]]:
        return [(hook, state) for hook, k, state in self.calls if k == key]


class Raising(Middleware):
    """Raises in every hook."""

    def worker_start(self, worker: WorkerInfo) -> None:
        raise RuntimeError("worker_start")

    def worker_stop(self, worker: WorkerInfo) -> None:
        raise RuntimeError("worker_stop")

    def before_process(self, job: Job) -> None:
        raise RuntimeError("before_process")

    def after_process(self, job: Job, outcome: Outcome) -> None:
        raise RuntimeError("after_process")

    def on_retry(self, job: Job, outcome: Outcome) -> None:
        raise RuntimeError("on_retry")

    def on_dead_letter(self, envelope: Envelope | None, outcome: Outcome) -> None:
        raise RuntimeError("on_dead_letter")

    def on_revoked(self, envelope: Envelope, outcome: Outcome) -> None:
        raise RuntimeError("on_revoked")

    def on_skip(self, envelope: Envelope, outcome: Outcome) -> None:
        raise RuntimeError("on_skip")


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def app(recorder: Recorder) -> Iterator[Conveyor]:
    app = make_test_app(middleware=[recorder])
    yield app
    app.close()


def run(app: Conveyor, **options: object) -> None:
    with TestWorker(app, **options) as worker:  # type: ignore[arg-type]
        worker.run_until_idle(10, propagate=False)


def test_success_calls_before_and_after_process_in_the_task_thread(
    app: Conveyor, recorder: Recorder
) -> None:
    seen: list[int] = []

    @app.task(name="mw.ok")
    def ok() -> int:
        seen.append(threading.get_ident())
        return 42

    ok.delay()
    outcomes: list[Outcome] = []
    recorder.after_process = lambda job, outcome: (  # type: ignore[method-assign]
        outcomes.append(outcome),
        Recorder.after_process(recorder, job, outcome),
    )[-1]
    run(app)
    assert recorder.of("mw.ok") == [("before_process", ""), ("after_process", states.SUCCESS)]
    assert recorder.threads["mw.ok"] == set(seen)  # the hooks ran in the task's thread
    [outcome] = outcomes
    assert outcome.retval == 42 and outcome.runtime >= 0.0 and outcome.action is Action.ACK


def test_failure_and_retry(app: Conveyor, recorder: Recorder) -> None:
    @app.task(name="mw.bad")
    def bad() -> None:
        raise LookupError("no")

    @app.task(name="mw.again", bind=True, max_retries=1)
    def again(self) -> None:  # type: ignore[no-untyped-def]
        raise self.retry(countdown=0)

    bad.delay()
    again.delay()
    run(app)
    assert recorder.of("mw.bad") == [("before_process", ""), ("after_process", states.FAILURE)]
    assert recorder.of("mw.again") == [
        ("before_process", ""),
        ("after_process", states.RETRY),
        ("on_retry", states.RETRY),
        ("before_process", ""),
        ("after_process", states.FAILURE),
    ]


def test_async_task_hooks_run_on_the_event_loop(app: Conveyor, recorder: Recorder) -> None:
    loops: list[int] = []

    @app.task(name="mw.async")
    async def job() -> int:
        loops.append(threading.get_ident())
        await asyncio.sleep(0)
        return 1

    job.delay()
    run(app)
    assert recorder.of("mw.async") == [("before_process", ""), ("after_process", states.SUCCESS)]
    assert recorder.threads["mw.async"] == set(loops)


def test_revoked_expired_unknown_and_malformed(app: Conveyor, recorder: Recorder) -> None:
    @app.task(name="mw.never")
    def never() -> None:
        raise AssertionError("must not run")

    revoked = never.delay()
    app.revoke(revoked.id)
    never.apply_async(expires=datetime.now(UTC) - timedelta(seconds=1))
    app.send_task("mw.unknown")
    app.broker.publish([Message("garbage-1", "default", b"not a message")])
    run(app)
    assert sorted(recorder.calls) == sorted(
        [
            ("on_revoked", "mw.never", states.REVOKED),
            ("on_dead_letter", "mw.never", "expired"),
            ("on_dead_letter", "mw.unknown", "unknown_task"),
            ("on_dead_letter", "?", "undecodable"),
        ]
    )


def test_rate_limit_deferral_is_a_skip(app: Conveyor, recorder: Recorder) -> None:
    @app.task(name="mw.limited", rate_limit="2/s")
    def limited() -> None:
        return None

    limited.delay()
    limited.delay()
    run(app, concurrency=1)
    calls = recorder.of("mw.limited")
    assert calls.count(("before_process", "")) == 2
    assert calls.count(("after_process", states.SUCCESS)) == 2
    assert ("on_skip", states.QUEUED) in calls


def test_a_raising_middleware_loses_nothing_and_settles_once() -> None:
    app = make_test_app(middleware=[Raising()])
    # Every way a delivery is settled reaches the broker as an ack (with or without records,
    # or sent with the next lease), a retry or a dead letter: count them by receipt.
    settled: list[str] = []
    broker = app.broker
    real_ack, real_retry, real_dead = broker.ack, broker.retry_later, broker.dead_letter

    def ack(deliveries):  # type: ignore[no-untyped-def]
        settled.extend(d.receipt for d in deliveries)
        return real_ack(deliveries)

    def retry_later(delivery, message):  # type: ignore[no-untyped-def]
        settled.append(delivery.receipt)
        return real_retry(delivery, message)

    def dead_letter(delivery, reason, detail=""):  # type: ignore[no-untyped-def]
        settled.append(delivery.receipt)
        return real_dead(delivery, reason, detail)

    broker.ack = ack  # type: ignore[method-assign]
    broker.retry_later = retry_later  # type: ignore[method-assign]
    broker.dead_letter = dead_letter  # type: ignore[method-assign]
    try:

        @app.task(name="mw.ok")
        def ok(x: int) -> int:
            return x

        @app.task(name="mw.bad")
        def bad() -> None:
            raise LookupError("no")

        @app.task(name="mw.again", bind=True, max_retries=1)
        def again(self) -> None:  # type: ignore[no-untyped-def]
            raise self.retry(countdown=0)

        oks = [ok.delay(i) for i in range(20)]
        failed = bad.delay()
        retried = again.delay()
        app.send_task("mw.unknown")
        revoked = ok.delay(99)
        app.revoke(revoked.id)
        with TestWorker(app) as worker:
            worker.run_until_idle(10, propagate=False)
        assert [r.get(timeout=1) for r in oks] == list(range(20))
        assert failed.state == states.FAILURE
        assert retried.state == states.FAILURE  # ran twice, then gave up
        assert revoked.state == states.REVOKED
        stats = app.broker.stats(["default"])["default"]
        assert (stats.ready, stats.leased, stats.delayed, stats.dead) == (0, 0, 0, 1)
        assert [d.reason for d in app.broker.dead_letters()] == ["unknown_task"]
        # 20 + the failure + 2 deliveries of the retried task + the unknown + the revoked one,
        # each settled once.
        assert len(settled) == len(set(settled)) == 25
    finally:
        app.close()


def test_lifecycle_hooks_of_an_in_process_worker(app: Conveyor, recorder: Recorder) -> None:
    worker = TestWorker(app, hostname="w1")
    worker.start()
    assert recorder.lifecycle == [("worker_start", "w1")]
    worker.stop(timeout=5)
    assert recorder.lifecycle == [("worker_start", "w1"), ("worker_stop", "w1")]


def test_unused_hooks_are_not_called(app: Conveyor) -> None:
    app.conf.worker_send_task_events = False  # events use every hook
    hooks = TestWorker(app).hooks
    assert hooks.on_retry and not hooks.child_start  # only the ones overridden
    plain = TestWorker(make_test_app(worker_log_tasks=False, worker_send_task_events=False)).hooks
    assert not (plain.before_process or plain.after_process or plain.on_skip)
