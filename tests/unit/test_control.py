"""Remote control without processes: argument checks, request decoding, conf redaction, the
autoscale option, and the in-process worker obeying requests on the memory broker."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from conveyor import Conveyor
from conveyor.control import COMMANDS, ControlError, Request
from conveyor.control.protocol import check
from conveyor.testing import TestWorker, make_test_app
from conveyor.worker.autoscale import parse_autoscale
from tests.conftest import wait_until


@pytest.fixture
def app() -> Iterator[Conveyor]:
    app = make_test_app("control", broker_url="memory://", result_backend="memory://")
    yield app
    app.close()


@pytest.mark.parametrize(
    ("command", "arguments", "message"),
    [
        ("explode", {}, "unknown control command"),
        ("ping", {"x": 1}, "unexpected argument"),
        ("revoke", {}, "task id or a list"),
        ("revoke", {"task_id": [1]}, "task id or a list"),
        ("revoke", {"task_id": "a", "signal": "KILL ME"}, "signal name"),
        ("rate_limit", {"task_name": "t", "rate_limit": "fast"}, "invalid rate_limit"),
        ("rate_limit", {"task_name": "", "rate_limit": "1/s"}, "non-empty string"),
        ("time_limit", {"task_name": "t", "soft": -1}, "seconds"),
        ("time_limit", {"task_name": "t", "soft": 3, "hard": 1}, "must not exceed"),
        ("pool_grow", {"n": 0}, "integer >= 1"),
        ("pool_shrink", {"n": True}, "integer >= 1"),
        ("autoscale", {"max": 2, "min": 3}, "must not exceed"),
        ("add_consumer", {"queue": "  "}, "non-empty string"),
        ("query_task", {"ids": []}, "task id or a list"),
    ],
)
def test_bad_arguments_are_refused(
    command: str, arguments: dict[str, object], message: str
) -> None:
    with pytest.raises(ControlError, match=message):
        check(command, arguments)


def test_arguments_are_normalised() -> None:
    assert check("revoke", {"task_id": "a"})[1] == {
        "task_id": ["a"], "terminate": False, "signal": "SIGTERM",
    }  # fmt: skip
    assert check("pool_grow", {})[1] == {"n": 1}
    assert check("rate_limit", {"task_name": "t", "rate_limit": 10})[1]["rate_limit"] == "10"
    assert COMMANDS["shutdown"].node and not COMMANDS["active"].node


@pytest.mark.parametrize(
    "body", [b"{", b"[]", b'{"id": 1, "command": "ping", "arguments": {}}',
             b'{"id": "a", "command": "ping", "arguments": []}',
             b'{"id": "a", "command": "ping", "arguments": {}, "destination": "w"}'],
)  # fmt: skip
def test_malformed_requests_do_not_decode(body: bytes) -> None:
    with pytest.raises(ValueError, match=r"."):  # JSON errors and our own
        Request.decode(body)


def test_addresses_processes_by_name_or_node() -> None:
    request = Request.new("ping", {}, ["host.1"], True)
    assert request.addresses("host.1/2") and request.addresses("host.1")
    assert not request.addresses("host.2/1")
    assert Request.decode(request.encode()) == request


def test_autoscale_option() -> None:
    assert parse_autoscale("10,2") == (10, 2)
    assert parse_autoscale("4") == (4, 1)
    for bad in ("", "a,b", "2,5", "0,0", "1,2,3"):
        with pytest.raises(ValueError, match="--autoscale"):
            parse_autoscale(bad)


def test_conf_replies_hide_secrets(app: Conveyor) -> None:
    app.conf.broker_transport_options = {"password": "hunter2", "poll_interval": 0.1}
    app.conf.result_backend = "redis://user:hunter2@localhost:6379/1"
    with TestWorker(app, hostname="w") as worker:
        wait_until(lambda: "w" in app.control.workers(), 5)
        conf = app.control.inspect(timeout=5).conf()
        assert worker.started
    assert conf is not None
    text = str(conf)
    assert "hunter2" not in text and "***" in text


def test_add_consumer_and_pause_in_process(app: Conveyor) -> None:
    @app.task(name="add")
    def add(x: int, y: int) -> int:
        return x + y

    with TestWorker(app, hostname="w") as worker:
        wait_until(lambda: "w" in app.control.workers(), 5)
        app.control.add_consumer("extra", reply=True, timeout=5)
        assert worker.queues == ["default", "extra"]
        assert add.apply_async((1, 1), queue="extra").get(timeout=5) == 2
        app.control.pause_queue("extra")
        wait_until(lambda: app.control.inspect(timeout=5).active_queues() == {
            "w": [{"name": "default", "paused": False}, {"name": "extra", "paused": True}]
        }, 5)  # fmt: skip
        held = add.apply_async((2, 2), queue="extra")
        assert add.delay(3, 3).get(timeout=5) == 6
        assert app.broker.stats(["extra"])["extra"].ready == 1
        app.control.resume_queue("extra")
        assert held.get(timeout=5) == 4
        replies = app.control.shutdown(reply=True, timeout=5)
        assert replies == [{"w": {"ok": "shutting down"}}]
        wait_until(lambda: worker.stopped, 10, "the remote shutdown")
