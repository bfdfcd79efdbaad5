"""The worker's heartbeat thread survives its own unexpected errors (issue 13, item 1): it
logs the first of each kind with its traceback, goes on extending leases, and the worker
neither stops nor runs a long task twice."""

from __future__ import annotations

import time
from typing import Any

import pytest

from conveyor import Conveyor
from conveyor.testing import TestWorker


def test_heartbeat_survives_unexpected_errors_and_keeps_extending_leases(
    app: Conveyor, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    runs: list[float] = []

    @app.task
    def long() -> str:
        runs.append(time.monotonic())
        time.sleep(3.0)  # three lease timeouts (1 s): only extensions keep it leased
        return "done"

    real = app.broker.sweep
    failures = [ValueError("injected sweep failure"), ValueError("injected sweep failure")]

    def flaky() -> Any:
        if failures:
            raise failures.pop()
        return real()

    monkeypatch.setattr(app.broker, "sweep", flaky)
    with TestWorker(app) as worker:
        assert long.delay().get(timeout=20) == "done"
        assert not failures and not worker.stopped
    assert len(runs) == 1  # never redelivered: the heartbeat went on extending its lease
    assert caplog.text.count("heartbeat: unexpected error; going on") == 1
    assert "heartbeat: unexpected error (again)" in caplog.text
