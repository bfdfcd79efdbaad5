"""Acks in runs (``brokers/amqp/acks.py``) and pushed messages nobody asked for
(``brokers/amqp/pushed.py``, ``STALE``) on the session's rabbitmq-server: a ``multiple=True``
ack covers exactly the finished messages, never one still held or pushed."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conveyor.brokers import BrokerOptions, create_broker
from conveyor.brokers.amqp import AMQPBroker
from conveyor.brokers.amqp.acks import Settled
from conveyor.brokers.amqp.pushed import HEADROOM
from conveyor.brokers.base import Delivery, Message, QueueStats
from tests.conftest import wait_until
from tests.rabbit_server import RabbitServer

pytestmark = pytest.mark.amqp

Q = "default"
BrokerMaker = Callable[[], AMQPBroker]


@pytest.fixture
def make_broker(rabbit_server: RabbitServer, tmp_path: Path) -> Iterator[BrokerMaker]:
    prefix = f"acks{uuid.uuid4().hex[:8]}"
    made: list[AMQPBroker] = []

    def make() -> AMQPBroker:
        options = BrokerOptions(key_prefix=prefix)
        broker = create_broker(f"{rabbit_server.url}?kv_url=sqlite:///{tmp_path}/kv.db", options)
        assert isinstance(broker, AMQPBroker)
        made.append(broker)
        return broker

    yield make
    for broker in made:
        broker.close()


def publish(broker: AMQPBroker, n: int) -> list[str]:
    sent = [Message(uuid.uuid4().hex, Q, f"{i}".encode()) for i in range(n)]
    broker.publish(sent)
    return [m.id for m in sent]


def lease_all(broker: AMQPBroker, n: int) -> list[Delivery]:
    got: list[Delivery] = []
    wait_until(lambda: got.extend(broker.lease([Q], n - len(got), 0.2)) or len(got) >= n, 10.0)
    return got


class Frames:
    """Records the ack frames :class:`Settled` sends (its planning, not RabbitMQ's part)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, int, bool]] = []

    def basic_ack(self, tag: int, multiple: bool = False) -> None:
        self.sent.append(("ack", tag, multiple))

    def basic_reject(self, tag: int, requeue: bool) -> None:
        self.sent.append(("reject", tag, requeue))


def test_settled_sends_one_frame_for_a_run_and_single_acks_past_a_gap() -> None:
    settled, frames = Settled(), Frames()
    assert settled.ack(frames, [3, 1, 2]) == 1
    assert frames.sent == [("ack", 3, True)]
    assert settled.floor == 3
    frames.sent.clear()
    assert settled.ack(frames, [5, 7]) == 2  # 4 and 6 still held
    assert frames.sent == [("ack", 5, False), ("ack", 7, False)]
    frames.sent.clear()
    settled.reject(frames, [4], requeue=True)
    assert settled.floor == 5
    assert settled.ack(frames, [8, 6]) == 1  # 7 was acked: 6..8 a run
    assert frames.sent == [("reject", 4, True), ("ack", 8, True)]
    assert settled.floor == 8
    assert settled.ack(frames, []) == 0


def test_a_multiple_ack_covers_only_the_finished_messages(make_broker: BrokerMaker) -> None:
    worker, other = make_broker(), make_broker()
    ids = publish(worker, 6)
    held = lease_all(worker, 6)
    assert [d.id for d in held] == ids
    # finished out of order, the 4th still running: 1-3 in one frame, then the 5th alone
    worker.ack([held[1], held[0], held[2], held[4]])
    assert worker._session.settled.floor == 3
    worker._session.drop()  # the worker dies: RabbitMQ puts back what it had not acked
    rest = lease_all(other, 2)
    assert sorted(d.id for d in rest) == sorted([ids[3], ids[5]])
    other.ack(rest)
    assert other.lease([Q], 10, 0.2) == []


def test_pushed_messages_no_lease_asked_for_go_back_uncharged(
    make_broker: BrokerMaker,
) -> None:
    worker, other = make_broker(), make_broker()
    # consuming, with a window of HEADROOM x 2 (a lease of more than one prefetches)
    assert worker.lease([Q], 2, 0.01) == []
    publish(worker, 5)
    held = worker.lease([Q], 1, 5.0)  # one task runs long: the worker leases no more
    assert len(held) == 1

    assert worker._pushed.consuming()
    with worker._session.lock:  # (held: the lease thread cannot give it back meanwhile)
        assert worker._pushed._windows[Q] == 2 * HEADROOM  # the held one and 3 more

        def pushed() -> bool:
            worker._session.pump()
            return worker._pushed.buffered([Q]) == 2 * HEADROOM - 1

        wait_until(pushed, 10.0, "a push into the buffer")
        # RabbitMQ counts the pushed one out of its ready ones: the client counts it back
        assert worker.stats([Q])[Q] == QueueStats(ready=4, delayed=0, leased=1, dead=0)

    def stopped() -> bool:
        with worker._session.lock:
            return not worker._pushed.consuming() and worker._pushed.buffered([Q]) == 0

    # only the lease thread's give-back stops consuming here (no lease, release or close)
    wait_until(stopped, 10.0, "the pushed message given back")
    rest = lease_all(other, 4)
    assert {d.delivery_count for d in rest} == {1}, "a pushed, unleased message was charged"
    other.ack(rest)
    worker.ack(held)  # still held by the worker all along
    assert worker.lease([Q], 1, 0.2) == []
