"""The oldest-message age: ``Broker.oldest_ready`` on the memory, SQLite and Redis brokers, and
the gauge ``conveyor metrics`` computes from it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from conveyor import Conveyor
from conveyor.brokers.base import Message
from conveyor.message import Envelope, encode_envelope
from conveyor.metrics import ClusterCollector
from conveyor.metrics.collectors import ready_since
from tests.conftest import wait_until
from tests.helpers import redis_fixture
from tests.servers import RedisServer

redis_server = redis_fixture(appendonly=False)


@pytest.fixture(params=["memory", "sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Conveyor]:
    kind = request.param
    options: dict[str, object] = {}
    if kind == "memory":
        url = "memory://"
    elif kind == "sqlite":
        url = f"sqlite:///{tmp_path}/b.db"
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        url = server.url
        options["broker_transport_options"] = {"key_prefix": f"old{uuid.uuid4().hex[:8]}"}
    app = Conveyor("oldest", broker=url, **options)  # type: ignore[arg-type]
    yield app
    app.close()


def message(created_at: float, priority: int = 5, queue: str = "q", **when: float) -> Message:
    envelope = Envelope(id=uuid.uuid4().hex, task="t", queue=queue, created_at=created_at)
    if "eta" in when:
        envelope.eta = when["eta"]
    return Message(envelope.id, queue, encode_envelope(envelope), priority, **when)


def since(app: Conveyor, queue: str = "q") -> float | None:
    return ready_since(app.broker.oldest_ready([queue]).get(queue, []))


def test_oldest_ready_finds_the_longest_waiting_message_across_priorities(app: Conveyor) -> None:
    broker = app.broker
    assert broker.oldest_ready(["q"]) == {}
    broker.publish([message(1000.0), message(2000.0, priority=9), message(3000.0)])
    broker.publish([message(50.0, queue="other")])
    assert since(app) == 1000.0
    assert since(app, "other") == 50.0
    [first] = broker.lease(["q"], 1, 0)  # priority 9 first: the 2000 one
    assert since(app) == 1000.0
    broker.ack([first])
    [second] = broker.lease(["q"], 1, 0)  # then the 1000 one
    broker.ack([second])
    assert since(app) == 3000.0


def test_due_delayed_messages_count_from_their_due_time(app: Conveyor) -> None:
    broker = app.broker
    due = broker.time() + 0.3
    broker.publish([message(10.0, eta=due)])
    assert since(app) is None  # not due yet
    wait_until(lambda: since(app) is not None, 5, "the delayed message to be due")
    assert since(app) == pytest.approx(due)


def test_exporter_gauge_and_malformed_bodies(app: Conveyor) -> None:
    now = app.broker.time()
    app.broker.publish([message(now - 120.0), Message("junk", "q", b"\xff not json", 9)])
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ClusterCollector(app))
    text = generate_latest(registry).decode()
    [line] = [x for x in text.splitlines() if x.startswith("conveyor_queue_oldest_message_age")]
    assert 119.0 <= float(line.split()[-1]) < 180.0
