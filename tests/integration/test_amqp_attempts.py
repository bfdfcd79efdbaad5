"""The delivery count Conveyor keeps on RabbitMQ (``brokers/amqp/attempts.py``), on the
session's rabbitmq-server: a recorded attempt that killed its process counts once, whatever
RabbitMQ charged meanwhile (a return without a failed run), the limit applies to the kept
count, and a settlement forgets it."""

from __future__ import annotations

import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import amqp
import pytest

from conveyor.brokers import BrokerOptions, create_broker
from conveyor.brokers.amqp import AMQPBroker, attempts
from conveyor.brokers.base import Delivery, Message
from tests.conftest import wait_until
from tests.rabbit_server import RabbitServer

pytestmark = pytest.mark.amqp

Q = "q"

# A worker process that records the attempt of what it leased, then dies running it.
DIES_RUNNING = """
import os, signal, sys
from conveyor.brokers import BrokerOptions, create_broker
options = BrokerOptions(key_prefix=sys.argv[2], transport_options={"queue_type": sys.argv[3]})
broker = create_broker(sys.argv[1], options)
got = []
while not got:
    got = broker.lease(["q"], 1, 1.0)
broker.record_attempts(got)
print(got[0].delivery_count, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


@dataclass
class Setup:
    server: RabbitServer
    url: str
    prefix: str
    queue_type: str
    broker: AMQPBroker

    def die_running(self) -> int:
        """A process leases the message, records the attempt and is killed: its count."""
        child = subprocess.run(
            [sys.executable, "-c", DIES_RUNNING, self.url, self.prefix, self.queue_type],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert child.returncode == -signal.SIGKILL, child.stderr
        return int(child.stdout)

    def charge_without_a_run(self, times: int) -> None:
        """Returns RabbitMQ charges though no task ran (as for a delivery on its way to a
        consumer being cancelled): a bare client takes the message and rejects it."""
        physical = self.broker.names.queue(Q)
        with amqp.Connection(f"127.0.0.1:{self.server.port}", "guest", "guest") as connection:
            channel = connection.channel()
            for _ in range(times):
                msg = wait_until(lambda: channel.basic_get(physical), 10.0, "the message")
                channel.basic_reject(msg.delivery_info["delivery_tag"], True)

    def rabbit_count(self) -> int:
        """RabbitMQ's own count of the next delivery of the one message in the queue."""
        physical = self.broker.names.queue(Q)
        with amqp.Connection(f"127.0.0.1:{self.server.port}", "guest", "guest") as connection:
            channel = connection.channel()
            msg = wait_until(lambda: channel.basic_get(physical), 10.0, "the message")
            headers = msg.properties.get("application_headers") or {}
            count = headers.get("x-acquired-count", headers.get("x-delivery-count", 0))
            channel.basic_reject(msg.delivery_info["delivery_tag"], True)
            return int(count) + 1

    def lease_one(self) -> Delivery:
        got = wait_until(lambda: self.broker.lease([Q], 1, 0.2), 10.0, "a lease")
        assert len(got) == 1
        return got[0]

    def record_of(self, message_id: str) -> bytes | None:
        return self.broker.kv.get_value(attempts.key(message_id))


def make_setup(
    server: RabbitServer, tmp_path: Path, queue_type: str, lease_timeout: float = 30.0
) -> Setup:
    prefix = f"tries{uuid.uuid4().hex[:8]}"
    url = f"{server.url}?kv_url=sqlite:///{tmp_path}/kv.db"
    options = BrokerOptions(
        key_prefix=prefix,
        lease_timeout=lease_timeout,
        transport_options={"queue_type": queue_type},
    )
    broker = create_broker(url, options)
    assert isinstance(broker, AMQPBroker)
    return Setup(server, url, prefix, queue_type, broker)


@pytest.fixture
def setup(rabbit_server: RabbitServer, tmp_path: Path) -> Iterator[Setup]:
    made = make_setup(rabbit_server, tmp_path, "quorum")
    yield made
    made.broker.close()


@pytest.fixture(params=["quorum", "classic"])
def each_queue_type(
    request: pytest.FixtureRequest, rabbit_server: RabbitServer, tmp_path: Path
) -> Iterator[Setup]:
    made = make_setup(rabbit_server, tmp_path, request.param)
    yield made
    made.broker.close()


def send_one(broker: AMQPBroker) -> str:
    message = Message(uuid.uuid4().hex, Q, b"x")
    broker.publish([message])
    return message.id


def test_a_recorded_attempt_counts_once_whatever_rabbitmq_charged(setup: Setup) -> None:
    message_id = send_one(setup.broker)
    assert setup.die_running() == 1
    assert setup.record_of(message_id) == b"1"
    setup.charge_without_a_run(2)
    assert setup.rabbit_count() >= 4  # RabbitMQ: three returns (a fourth for rabbit_count)
    delivery = setup.lease_one()
    assert delivery.id == message_id
    assert delivery.delivery_count == 2
    setup.broker.ack([delivery])
    assert setup.record_of(message_id) is None  # settled: the kept count is forgotten


def test_the_delivery_after_the_last_allowed_recorded_one_is_dead_lettered(
    each_queue_type: Setup,
) -> None:
    # A classic queue only flags a redelivery: past 2, the kept count is the only count.
    setup = each_queue_type
    most = setup.broker.options.max_deliveries
    message_id = send_one(setup.broker)
    counts = [setup.die_running() for _ in range(most)]
    assert counts == list(range(1, most + 1))
    # The queue's own limit is a backstop above the kept count: returns without a run do
    # not dead-letter the message there.
    setup.charge_without_a_run(attempts.SPURIOUS_MARGIN - 1)
    assert setup.broker.lease([Q], 1, 0.5) == []  # not handed out: dead-lettered
    dead = wait_until(lambda: setup.broker.dead_letters(queue=Q), 10.0, "the dead letter")
    assert [(d.id, d.reason, d.delivery_count) for d in dead] == [
        (message_id, "worker_lost", most + 1)
    ]
    assert setup.record_of(message_id) is None


def test_without_a_record_rabbitmq_s_count_applies(setup: Setup) -> None:
    message_id = send_one(setup.broker)
    setup.charge_without_a_run(2)
    delivery = setup.lease_one()
    assert (delivery.id, delivery.delivery_count) == (message_id, 3)
    setup.broker.ack([delivery])


def test_a_recorded_lease_released_comes_back_with_its_count(setup: Setup) -> None:
    message_id = send_one(setup.broker)
    setup.die_running()
    setup.charge_without_a_run(1)
    delivery = setup.lease_one()
    setup.broker.record_attempts([delivery])
    assert setup.record_of(message_id) == b"2"
    setup.broker.release([delivery])
    assert setup.record_of(message_id) is None  # the copy carries its count
    again = setup.lease_one()
    assert (again.id, again.delivery_count) == (message_id, 2)
    setup.broker.ack([again])


def test_a_record_never_counts_past_rabbitmq(setup: Setup) -> None:
    # A record about another message with the same id (published again) says more than
    # RabbitMQ counted for this one: RabbitMQ's count is the upper bound.
    message_id = send_one(setup.broker)
    setup.broker.kv.set_value(attempts.key(message_id), b"3", 60)
    setup.charge_without_a_run(1)
    delivery = setup.lease_one()
    assert delivery.delivery_count == 2
    setup.broker.ack([delivery])


def test_record_attempts_ignores_receipts_this_client_does_not_hold(setup: Setup) -> None:
    message_id = send_one(setup.broker)
    delivery = setup.lease_one()
    setup.broker.ack([delivery])
    setup.broker.record_attempts([delivery])
    assert setup.record_of(message_id) is None


@pytest.mark.parametrize("queue_type", ["quorum", "classic"])
def test_expired_leases_count_on_every_queue_type(
    rabbit_server: RabbitServer, tmp_path: Path, queue_type: str
) -> None:
    setup = make_setup(rabbit_server, tmp_path, queue_type, lease_timeout=0.2)
    try:
        most = setup.broker.options.max_deliveries
        message_id = send_one(setup.broker)
        counts = []
        for _ in range(most):
            delivery = setup.lease_one()
            counts.append(delivery.delivery_count)  # its lease expires: the reaper returns it
        assert counts == list(range(1, most + 1))
        dead = wait_until(lambda: setup.broker.dead_letters(queue=Q), 10.0, "the dead letter")
        assert [(d.id, d.reason, d.delivery_count) for d in dead] == [
            (message_id, "worker_lost", most)
        ]
        # the reaper deletes the record after the dead letter is published
        wait_until(lambda: setup.record_of(message_id) is None, 10.0, "the record deleted")
    finally:
        setup.broker.close()
