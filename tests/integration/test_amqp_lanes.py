"""RabbitMQ's first-served lanes (``P.b.<queue>``, brokers/amqp/topology.py): a delayed message
of priority 9 - a worker's put-back holding a booked rate-limit token - comes due into its
queue's lane, which a lease serves before the queue (quorum queues are FIFO). The lane is a
queue like the others: declared with the same arguments, counted by stats(), purged into the
departures, and its messages dead-letter under their Conveyor queue."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import amqp
import pytest

from conveyor.brokers import BrokerOptions, create_broker
from conveyor.brokers.amqp import attempts
from conveyor.brokers.amqp.broker import AMQPBroker
from conveyor.brokers.base import PURGED, Message
from tests.conftest import wait_until
from tests.rabbit_server import RabbitServer

pytestmark = pytest.mark.amqp

Q = "default"


@pytest.fixture(name="broker")
def broker_fixture(rabbit_server: RabbitServer, tmp_path: Path) -> Iterator[AMQPBroker]:
    options = BrokerOptions(key_prefix=f"ln{uuid.uuid4().hex[:8]}")
    broker = create_broker(f"{rabbit_server.url}?kv_url=sqlite:///{tmp_path}/kv.db", options)
    assert isinstance(broker, AMQPBroker)
    yield broker
    broker.close()


def message(priority: int = 5, **options: float) -> Message:
    return Message(uuid.uuid4().hex, Q, b"x", priority, **options)  # type: ignore[arg-type]


def ready(broker: AMQPBroker, count: int) -> None:
    wait_until(lambda: broker.stats([Q])[Q].ready == count, 10, f"{count} ready")


@pytest.mark.parametrize("wait", [0.0, 2.0], ids=["poll", "pushed"])
def test_a_due_top_priority_delayed_message_is_leased_before_the_queue(
    broker: AMQPBroker, wait: float
) -> None:
    backlog = [message() for _ in range(3)]
    plain_nine = message(9)  # not delayed: the queue's FIFO order, as before
    delayed_five = message(5, countdown=0.05)  # delayed, not top priority: the queue
    booked = message(9, countdown=0.05)
    broker.publish([*backlog, plain_nine])
    broker.publish([delayed_five, booked])
    ready(broker, 6)  # stats() counts the lane's ready messages with the queue's
    got = broker.lease([Q], 1, wait)
    assert [d.id for d in got] == [booked.id]
    assert (got[0].queue, got[0].priority) == (Q, 9)
    leased = broker.priority_counts([Q])[Q]
    assert leased.leased == {9: 1}
    rest = broker.lease([Q], 10, 0)
    order = [m.id for m in [*backlog, plain_nine, delayed_five]]
    if wait:  # the consumers' pushed messages were given back (to the queue's tail)
        assert sorted(d.id for d in rest) == sorted(order)
    else:
        assert [d.id for d in rest] == order
    broker.ack([*got, *rest])
    assert broker.stats([Q])[Q].ready == 0


def test_a_put_back_due_before_it_was_published_still_takes_the_lane(
    broker: AMQPBroker,
) -> None:
    backlog = [message() for _ in range(2)]
    broker.publish(backlog)
    late = message(9, eta=time.time() - 1.0)  # a booking published after its due time
    broker.publish([late])
    ready(broker, 3)
    got = broker.lease([Q], 3, 0)
    assert [d.id for d in got] == [late.id, *(m.id for m in backlog)]
    broker.ack(got)


def test_pushed_lane_messages_given_back_stay_in_the_lane(broker: AMQPBroker) -> None:
    broker.publish([message() for _ in range(2)])
    booked = [message(9, countdown=0.01) for _ in range(3)]
    broker.publish(booked)
    ready(broker, 5)
    first = broker.lease([Q], 1, 2.0)  # consumers start: the other lane messages are pushed
    assert [d.id for d in first] == [booked[0].id]
    # a lease that does not wait stops the consumers and gives back what they pushed: the
    # lane's messages go back to the lane (still served first), not behind the queue; each
    # copy joins the back of the lane, so their order among themselves may change
    got = broker.lease([Q], 2, 0)
    assert sorted(d.id for d in got) == sorted(m.id for m in booked[1:])
    assert all(d.delivery_count == 1 for d in got)  # given back uncharged
    broker.ack([*first, *got])


def test_purge_moves_the_lane_into_the_departures(broker: AMQPBroker) -> None:
    queued, booked = message(), message(9, countdown=0.01)
    broker.publish([queued, booked])
    ready(broker, 2)
    assert broker.purge([Q]) == 2
    assert broker.stats([Q])[Q].ready == 0
    departures = broker.take_departures(10)
    assert sorted((d.id, d.queue, d.reason) for d in departures) == sorted(
        [(queued.id, Q, PURGED), (booked.id, Q, PURGED)]
    )
    broker.forget_departures(departures)


def test_a_lane_message_dead_letters_under_its_queue(broker: AMQPBroker) -> None:
    booked = message(9, countdown=0.01)
    broker.publish([booked])
    ready(broker, 1)
    got = broker.lease([Q], 1, 0)
    broker.dead_letter(got[0], "rejected", "no")
    (dead,) = broker.dead_letters(10, Q)
    assert (dead.id, dead.queue, dead.reason) == (booked.id, Q, "rejected")
    assert broker.priority_counts([Q])[Q].dead == {9: 1}


def take_and_die(server: RabbitServer, physical: str) -> None:
    """A consumer of the RabbitMQ queue ``physical`` takes a message and its connection
    closes with it unacked."""
    with amqp.Connection(f"127.0.0.1:{server.port}", "guest", "guest") as connection:
        channel = connection.channel()
        assert wait_until(lambda: channel.basic_get(physical), 10, "a message")


def test_a_lane_message_whose_consumers_died_is_dead_lettered_by_rabbitmq(
    rabbit_server: RabbitServer, tmp_path: Path
) -> None:
    """The lane's delivery limit (the backstop above the worker's limit, for deaths no
    kept count explains) and dead-letter exchange: RabbitMQ dead-letters it into ``P.dead``
    and records its departure, under its Conveyor queue."""
    options = BrokerOptions(key_prefix=f"ld{uuid.uuid4().hex[:8]}", max_deliveries=2)
    broker = create_broker(f"{rabbit_server.url}?kv_url=sqlite:///{tmp_path}/kv.db", options)
    assert isinstance(broker, AMQPBroker)
    try:
        booked = message(9, countdown=0.01)
        broker.publish([booked])
        ready(broker, 1)
        limit = broker._topology.queue_arguments()["x-delivery-limit"]
        assert limit == options.max_deliveries - 1 + attempts.SPURIOUS_MARGIN
        for _ in range(limit + 1):  # a consumer's connection dies with it unacked, each time
            take_and_die(rabbit_server, broker.names.lane(Q))
        wait_until(lambda: broker.dead_letters(10, Q), 10, "the dead letter")
        (dead,) = broker.dead_letters(10, Q)
        assert (dead.id, dead.queue, dead.reason) == (booked.id, Q, "worker_lost")
        departures = broker.take_departures(10)
        assert [(d.id, d.queue, d.reason) for d in departures] == [(booked.id, Q, "worker_lost")]
        broker.forget_departures(departures)
    finally:
        broker.close()


def test_the_lane_is_declared_like_its_queue(
    broker: AMQPBroker, rabbit_server: RabbitServer
) -> None:
    broker.publish([message()])  # declares the queue and its lane
    lane = broker.names.lane(Q)
    connection = amqp.Connection(f"127.0.0.1:{rabbit_server.port}", "guest", "guest")
    connection.connect()
    try:
        channel = connection.channel()
        arguments = broker._topology.queue_arguments()
        assert arguments["x-queue-type"] == "quorum"  # the delivery limit and the DLX too
        # RabbitMQ accepts a declaration only with the arguments the queue has
        channel.queue_declare(lane, durable=True, auto_delete=False, arguments=arguments)
        other = {**arguments, "x-delivery-limit": 99}
        with pytest.raises(amqp.exceptions.PreconditionFailed):
            channel.queue_declare(lane, durable=True, auto_delete=False, arguments=other)
    finally:
        connection.close()
