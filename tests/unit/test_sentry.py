"""Sentry with the real SDK and a transport that keeps envelopes in memory: final failures
with task context and redacted arguments, retries only when asked, dead letters, and beat
entries as cron check-ins."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import sentry_sdk
from sentry_sdk.envelope import Envelope as SentryEnvelope
from sentry_sdk.transport import Transport

from conveyor import Conveyor, Task, crontab, every
from conveyor.beat.scheduler import Beat
from conveyor.exceptions import Reject, TimeLimitExceeded
from conveyor.integrations.sentry import SentryMiddleware, monitor_config, monitor_slug
from conveyor.testing import TestWorker, make_test_app
from conveyor.utils.redaction import REDACTED
from conveyor.worker.execution import TaskRunner
from conveyor.worker.lost import LostTasks, RunningTask


class Captured(Transport):
    """Keeps every envelope the SDK would send."""

    envelopes: list[SentryEnvelope] = []

    def capture_envelope(self, envelope: SentryEnvelope) -> None:
        Captured.envelopes.append(envelope)

    @classmethod
    def items(cls, kind: str) -> list[dict[str, Any]]:
        return [
            item.payload.json
            for envelope in cls.envelopes
            for item in envelope.items
            if item.type == kind and item.payload.json is not None
        ]


@pytest.fixture
def sentry() -> Iterator[type[Captured]]:
    Captured.envelopes = []
    sentry_sdk.init(dsn="http://public@127.0.0.1:9/1", transport=Captured)
    try:
        yield Captured
    finally:
        sentry_sdk.get_client().close()
        sentry_sdk.get_global_scope().set_client(None)


def run(app: Conveyor) -> None:
    worker = TestWorker(app)
    try:
        worker.run_until_idle(propagate=False)
    finally:
        worker.stop(timeout=10)


def test_final_failure_is_reported_once_with_context_and_redacted_arguments(
    sentry: type[Captured],
) -> None:
    app = make_test_app("s", middleware=[SentryMiddleware()])

    @app.task(name="s.charge", bind=True, max_retries=2)
    def charge(self: Task[..., None], user: str, password: str, card: dict[str, str]) -> None:
        if self.request.retries < 2:
            raise self.retry(countdown=0, exc=TimeoutError("bank slow"))
        raise ValueError("card declined")

    result = charge.delay("ann", password="hunter2", card={"number": "4242", "token": "tok-5ec7e7"})
    run(app)
    app.close()
    events = sentry.items("event")
    assert len(events) == 1  # the two retries are not reported, nor the failure's log line
    [event] = events
    [exception] = event["exception"]["values"]
    assert exception["type"] == "ValueError" and exception["value"] == "card declined"
    assert event["level"] == "error" and event["transaction"] == "s.charge"
    assert event["tags"]["conveyor.task"] == "s.charge"
    assert event["tags"]["conveyor.queue"] == "default"
    assert event["tags"]["conveyor.retries"] == "2"
    context = event["contexts"]["conveyor"]
    assert context["id"] == result.id and context["retries"] == 2
    assert context["args"] == ["ann"]
    assert context["kwargs"] == {
        "password": REDACTED,
        "card": {"number": "4242", "token": REDACTED},
    }
    frames = exception["stacktrace"]["frames"]
    assert any("vars" in frame for frame in frames)
    for frame in frames:  # the source lines around may show the test's literal; data may not
        for source in ("pre_context", "context_line", "post_context"):
            frame.pop(source, None)
    assert "hunter2" not in json.dumps(event) and "tok-5ec7e7" not in json.dumps(event)


def test_retries_reported_when_asked_and_all_arguments_hidden(sentry: type[Captured]) -> None:
    app = make_test_app("s", middleware=[SentryMiddleware(report_retries=True, arguments="all")])

    @app.task(name="s.flaky", bind=True)
    def flaky(self: Task[[str], str], who: str) -> str:
        if self.request.retries == 0:
            raise self.retry(countdown=0, exc=ConnectionError("try again"))
        return who

    flaky.delay("bob")
    run(app)
    app.close()
    [event] = sentry.items("event")
    assert event["level"] == "warning"
    assert event["exception"]["values"][-1]["type"] == "ConnectionError"
    assert event["contexts"]["conveyor"]["args"] == [REDACTED]


def test_expected_errors_and_tasks_that_succeed_are_not_reported(sentry: type[Captured]) -> None:
    app = make_test_app("s", middleware=[SentryMiddleware()])

    @app.task(name="s.lookup", throws=(KeyError,))
    def lookup() -> None:
        raise KeyError("missing")

    @app.task(name="s.ok")
    def ok() -> int:
        logging.getLogger("conveyor.worker.tasks").error("a line Sentry must not send")
        return 1

    lookup.delay()
    ok.delay()
    run(app)
    app.close()
    assert sentry.items("event") == []


def test_dead_lettered_messages_are_reported_when_asked(sentry: type[Captured]) -> None:
    app = make_test_app("s", middleware=[SentryMiddleware(report_dead_letters=True)])
    sent = app.send_task("s.nobody_knows_me")
    run(app)
    app.close()
    [event] = [
        e for e in sentry.items("event") if "conveyor.dead_letter_reason" in e.get("tags", {})
    ]
    assert event["tags"]["conveyor.dead_letter_reason"] == "unknown_task"
    assert "s.nobody_knows_me dead-lettered (unknown_task)" in event["message"]
    assert event["contexts"]["conveyor"]["id"] == sent.id


def test_beat_runs_are_cron_check_ins(
    sentry: type[Captured], monkeypatch: pytest.MonkeyPatch
) -> None:
    schedule = {
        "Nightly Report": {"task": "s.report", "schedule": crontab(minute=30, hour=2)},
        "poll": {"task": "s.poll", "schedule": every(120)},
    }
    app = make_test_app("s", middleware=[SentryMiddleware()], beat_schedule=schedule)

    @app.task(name="s.report")
    def report() -> str:
        return "done"

    @app.task(name="s.poll")
    def poll() -> None:
        raise RuntimeError("feed down")

    clock = [datetime(2026, 1, 1, 2, 29, 59, tzinfo=UTC).timestamp()]
    with monkeypatch.context() as patch:
        patch.setattr(app.broker, "time", lambda: clock[0])
        beat = Beat(app, name="test-beat")
        beat.tick()
        clock[0] += 1.5  # 02:30:00.5: both entries are due
        beat.tick()
    run(app)
    app.close()
    check_ins = sentry.items("check_in")
    by_slug: dict[str, list[dict[str, Any]]] = {}
    for check_in in check_ins:
        by_slug.setdefault(check_in["monitor_slug"], []).append(check_in)
    report_runs = by_slug["nightly-report"]
    assert [c["status"] for c in report_runs] == ["in_progress", "ok"]
    assert report_runs[0]["check_in_id"] == report_runs[1]["check_in_id"]
    assert report_runs[0]["monitor_config"]["schedule"] == {
        "type": "crontab",
        "value": "30 2 * * *",
    }
    assert [c["status"] for c in by_slug["poll"]] == ["in_progress", "error"]
    assert by_slug["poll"][0]["monitor_config"]["schedule"] == {
        "type": "interval",
        "value": 2,
        "unit": "minute",
    }


def test_monitor_helpers() -> None:
    app = Conveyor("m", broker="memory://", beat_schedule={"fast": {"task": "x", "schedule": 5}})
    assert monitor_slug("Send Emails: hourly!") == "send-emails-hourly"
    assert monitor_config(app, "fast") is None  # Sentry has no interval under a minute
    assert monitor_config(app, "missing") is None
    with pytest.raises(ValueError, match="arguments must be"):
        SentryMiddleware(arguments="some")  # type: ignore[arg-type]
    app.close()


def test_a_task_the_supervisor_kills_at_its_hard_limit_is_reported_once(
    sentry: type[Captured],
) -> None:
    app = make_test_app("s", middleware=[SentryMiddleware()])

    @app.task(name="s.slow", time_limit=1.0)
    def slow(token: str) -> None:
        return None

    sent = slow.delay(token="tok-5ec7e7-secret")
    [delivery] = app.broker.lease(["default"], 1, 0)
    lost = LostTasks(app, TaskRunner(app, "supervisor"))
    running = RunningTask(sent.id, delivery, True, 1.0, time.monotonic() - 1.0)
    lost.fail(running, TimeLimitExceeded("hard time limit (1.0s) exceeded"), "time_limit")
    assert sent.state == "FAILURE"
    app.close()
    [event] = sentry.items("event")
    assert event["exception"]["values"][-1]["type"] == "TimeLimitExceeded"
    assert event["tags"]["conveyor.task"] == "s.slow"
    assert event["contexts"]["conveyor"]["kwargs"] == {"token": REDACTED}


def test_a_rejected_task_is_reported_once(sentry: type[Captured]) -> None:
    app = make_test_app("s", middleware=[SentryMiddleware()])

    @app.task(name="s.refuse")
    def refuse() -> None:
        raise Reject("bad input")

    refuse.delay()
    run(app)
    app.close()
    [event] = sentry.items("event")
    assert event["exception"]["values"][-1]["type"] == "Reject"
