"""Remote control over every broker in BACKENDS: a request reaches an in-process worker on
the broker and its reply comes back; queue pause is durable in the broker's ``kv``; bad
requests are refused before anything is stored."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor import Conveyor
from conveyor.brokers import scheme_of
from conveyor.control import ControlError
from conveyor.control.protocol import STREAM
from conveyor.testing import TestWorker

from .support import wait_until


@pytest.fixture
def app(broker_url: str, key_prefix: str, tmp_path: Path) -> Iterator[Conveyor]:
    # RabbitMQ keeps no key/value data: the result store does (by default a file beside the
    # app's module, here in the test's directory).
    amqp = scheme_of(broker_url) == "amqp"
    results = f"sqlite:///{tmp_path / 'results.sqlite3'}" if amqp else None
    app = Conveyor(
        "control",
        broker=broker_url,
        result_backend=results,
        broker_transport_options={"key_prefix": key_prefix},
        broker_lease_timeout=1.0,
    )

    @app.task(name="add")
    def add(x: int, y: int) -> int:
        return x + y

    yield app
    app.close()


def test_ping_and_commands_round_trip(app: Conveyor) -> None:
    with TestWorker(app, hostname="node/1", queues=["default", "spare"]) as worker:
        wait_until(lambda: "node/1" in app.control.workers(), 10, "the worker's announcement")
        assert app.control.ping(timeout=10) == [{"node/1": {"ok": "pong"}}]
        assert app.control.inspect(destination="node", timeout=10).registered() == {
            "node/1": sorted(app.tasks)
        }
        reply = app.control.rate_limit("add", "5/s", reply=True, timeout=10)
        assert reply == [{"node/1": {"ok": "new rate limit of add set to 5/s"}}]
        assert app.tasks["add"].rate_limit == "5/s"
        app.control.time_limit("add", soft=2, hard=3, reply=True, timeout=10)
        assert worker.time_limits["add"] == (2.0, 3.0)
        app.control.cancel_consumer("spare", reply=True, timeout=10)
        assert worker.queues == ["default"]
        refused = app.control.cancel_consumer("default", reply=True, timeout=10)
        assert refused is not None and "last queue" in str(refused[0]["node/1"])
        shrink = app.control.pool_shrink(1, reply=True, timeout=10)
        assert shrink is not None and "no pool" in str(shrink[0]["node/1"])


def test_pause_is_durable_and_obeyed(app: Conveyor) -> None:
    app.control.pause_queue("default")
    if not app.broker_url.startswith("memory"):  # memory:// lives in one app object
        options = app.conf.broker_transport_options
        other = Conveyor(
            "other",
            broker=app.broker_url,
            result_backend=app.conf.result_backend,
            broker_transport_options=options,
        )
        try:
            assert other.control.paused_queues() == ["default"]  # kept in the broker
        finally:
            other.close()
    result = app.tasks["add"].delay(1, 2)
    with TestWorker(app) as worker:
        wait_until(lambda: worker.inflight.consumer_active, 5, "the consumer")
        assert app.broker.stats(["default"])["default"].ready == 1
        app.control.resume_queue("default")
        assert result.get(timeout=10) == 3
    assert app.control.paused_queues() == []


def test_bad_requests_store_nothing(app: Conveyor) -> None:
    before = app.broker.streams.last(STREAM)
    for call in (
        lambda: app.control.broadcast("nope"),
        lambda: app.control.autoscale(1, 5),
        lambda: app.control.ping(destination="ghost"),
        lambda: app.control.pause_queue(""),
        lambda: app.control.time_limit("add", soft=5, hard=1),
    ):
        with pytest.raises(ControlError):
            call()
    assert app.broker.streams.last(STREAM) == before
    assert app.control.paused_queues() == []
