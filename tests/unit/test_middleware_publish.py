"""Middleware on the producer side: publish hooks, and how hooks are collected and called."""

from __future__ import annotations

import logging
import uuid

import pytest

from conveyor import Conveyor
from conveyor.message import Envelope, from_json_value
from conveyor.middleware import Hooks, Middleware, call_each
from conveyor.task import current_request
from conveyor.testing import make_test_app
from tests.unit.test_tasks import lease_one


class Recorder(Middleware):
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def before_publish(self, app: Conveyor, envelope: Envelope) -> None:
        self.seen.append(("before", envelope.task))
        envelope.headers["trace"] = "abc"
        envelope.headers["when"] = uuid.UUID(int=7)  # tagged like any other header

    def after_publish(self, app: Conveyor, envelope: Envelope) -> None:
        # The broker has the message by now.
        assert app.broker.stats([envelope.queue])[envelope.queue].ready >= 1
        self.seen.append(("after", envelope.id))


def test_publish_hooks_see_and_extend_each_message() -> None:
    recorder = Recorder()
    app = make_test_app(middleware=[recorder])
    try:
        add = app.task(lambda x, y: x + y, name="add")
        result = add.delay(1, 2)
        _, envelope = lease_one(app)
        assert envelope.headers["trace"] == "abc"
        assert recorder.seen == [("before", "add"), ("after", result.id)]
        results = app.send_many([add.s(3, 4), add.s(5, 6)])
        assert recorder.seen[2:] == [
            ("before", "add"),
            ("before", "add"),
            ("after", results[0].id),
            ("after", results[1].id),
        ]
    finally:
        app.close()


def test_header_values_added_by_a_hook_round_trip() -> None:
    app = make_test_app(middleware=[Recorder()])
    seen: list[object] = []

    @app.task(name="show")
    def show() -> None:
        request = current_request()
        assert request is not None
        seen.append(from_json_value(request.headers["when"]))

    try:
        show.apply()
        assert seen == [uuid.UUID(int=7)]
    finally:
        app.close()


def test_a_raising_publish_hook_is_logged_and_the_message_is_sent(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken(Middleware):
        def before_publish(self, app: Conveyor, envelope: Envelope) -> None:
            raise RuntimeError("boom before")

        def after_publish(self, app: Conveyor, envelope: Envelope) -> None:
            raise RuntimeError("boom after")

    app = make_test_app()
    app.add_middleware(Broken())
    try:
        job = app.task(lambda: None, name="job")
        with caplog.at_level(logging.ERROR, logger="conveyor.middleware"):
            job.delay()
        assert lease_one(app) is not None
        messages = [r.getMessage() for r in caplog.records]
        assert any("before_publish" in m and "raised" in m for m in messages)
        assert any("after_publish" in m and "raised" in m for m in messages)
    finally:
        app.close()


def test_hooks_keep_only_overridden_methods() -> None:
    class OnlyAfter(Middleware):
        def after_process(self, job: object, outcome: object) -> None:  # type: ignore[override]
            pass

    plain, after = Middleware(), OnlyAfter()
    hooks = Hooks([plain, after])
    assert hooks.after_process == (after.after_process,)
    assert hooks.before_process == ()
    assert hooks.before_publish == ()
    assert Hooks().on_retry == ()


def test_call_each_calls_in_order_and_survives_errors() -> None:
    calls: list[int] = []

    def first(x: int) -> None:
        calls.append(x)
        raise ValueError("first fails")

    def second(x: int) -> None:
        calls.append(x * 10)

    call_each((first, second), 4)
    assert calls == [4, 40]
