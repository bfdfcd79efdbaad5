"""Announced fates (``brokers/amqp/fates.py``) on the session's rabbitmq-server: a lease reads
the fates of what it took only while one may be live, and a revocation that returned is seen
by the next lease of any client, even one that just trusted a reading that found none."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from conveyor.brokers import BrokerOptions, create_broker
from conveyor.brokers.amqp import AMQPBroker, fates
from conveyor.brokers.base import Delivery, Message
from conveyor.kv import KeyValue
from conveyor.kv.locks import Locks
from conveyor.kv.memory import MemoryKeyValue
from tests.conftest import wait_until
from tests.rabbit_server import RabbitServer

pytestmark = pytest.mark.amqp

BrokerMaker = Callable[[], AMQPBroker]


@pytest.fixture
def make_broker(rabbit_server: RabbitServer, tmp_path: Path) -> Iterator[BrokerMaker]:
    prefix = f"fates{uuid.uuid4().hex[:8]}"
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


class Counting:
    """A key/value store that counts the reads a lease makes (and passes everything on)."""

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv
        self.many: list[int] = []  # the number of keys of each get_values
        self.single: list[str] = []

    def get_values(self, keys: Sequence[str]) -> dict[str, bytes]:
        self.many.append(len(keys))
        return self._kv.get_values(keys)

    def get_value(self, key: str) -> bytes | None:
        self.single.append(key)
        return self._kv.get_value(key)

    # conveyor.kv.locks.Locks, spelled out: isinstance() of a protocol looks at the class
    def put_new(self, key: str, value: bytes, ttl: float | None = None) -> bytes | None:
        assert isinstance(self._kv, Locks)
        return self._kv.put_new(key, value, ttl)

    def swap(self, key: str, expected: bytes, value: bytes, ttl: float | None = None) -> bool:
        assert isinstance(self._kv, Locks)
        return self._kv.swap(key, expected, value, ttl)

    def delete_if(self, key: str, expected: bytes) -> bool:
        assert isinstance(self._kv, Locks)
        return self._kv.delete_if(key, expected)

    def __getattr__(self, name: str) -> object:
        return getattr(self._kv, name)


def counted(broker: AMQPBroker) -> Counting:
    kv = Counting(broker.kv)
    assert isinstance(kv, Locks)
    broker.kv = kv  # type: ignore[assignment]  # a proxy of the broker's own store
    broker._watch = fates.Watch(broker.kv)
    return kv


def lease(broker: AMQPBroker, queue: str, n: int) -> list[Delivery]:
    got: list[Delivery] = []

    def more() -> bool:
        got.extend(broker.lease([queue], n - len(got), 0.2))
        return len(got) >= n

    wait_until(more, 10.0)
    return got


def send(broker: AMQPBroker, queue: str, n: int) -> list[str]:
    sent = [Message(uuid.uuid4().hex, queue, b"x") for _ in range(n)]
    broker.publish(sent)
    return [m.id for m in sent]


def test_no_fate_read_per_lease_while_none_is_live(make_broker: BrokerMaker) -> None:
    broker = make_broker()
    kv = counted(broker)
    send(broker, "q", 40)
    got: list[Delivery] = []
    started = time.monotonic()
    while len(got) < 40:
        batch = broker.lease(["q"], 4, 1.0)
        got += batch
        broker.ack(batch)
    elapsed = time.monotonic() - started
    assert not any(d.revoked for d in got)
    assert kv.many == []  # no per-lease read of fate keys
    # one reading of LIVE per TRUST seconds at most (and the first)
    assert 1 <= kv.single.count(fates.LIVE) <= 2 + elapsed / fates.TRUST


def test_a_revocation_that_returned_is_seen_by_a_lease_trusting_no_fates(
    make_broker: BrokerMaker,
) -> None:
    revoker, consumer = make_broker(), make_broker()
    kv = counted(consumer)
    (doomed,) = send(revoker, "doomed", 1)
    send(revoker, "filler", 1)
    consumer.ack(lease(consumer, "filler", 1))  # it read LIVE just now: no fate anywhere
    assert kv.single == [fates.LIVE] and kv.many == []
    revoker.revoke([doomed], 60.0)
    (got,) = lease(consumer, "doomed", 1)  # within TRUST of its reading, without the wait
    assert (got.id, got.revoked) == (doomed, True)
    assert kv.many == [1]  # now it reads the fates of what it takes


def test_a_revocation_is_seen_by_a_lease_of_another_process_at_once(
    make_broker: BrokerMaker,
) -> None:
    """The same through a fresh client (no reading of its own yet)."""
    revoker = make_broker()
    ids = send(revoker, "q", 3)
    revoker.revoke(ids[1:2], 60.0)
    got = lease(make_broker(), "q", 3)
    assert {d.id: d.revoked for d in got} == {ids[0]: False, ids[1]: True, ids[2]: False}


def test_announcing_never_shortens_live() -> None:
    kv = MemoryKeyValue()
    watch = fates.Watch(kv)
    assert not watch.needed()
    fates.announce(kv, 600.0)
    fates.announce(kv, 1.0)  # a shorter fate after a longer one
    value = kv.get_value(fates.LIVE)
    assert value is not None and float(value) >= time.time() + 590.0
    kv.set_value(fates.LIVE, b"not a time", 5.0)  # not ours: replaced
    fates.announce(kv, 2.0)
    value = kv.get_value(fates.LIVE)
    assert value is not None and float(value) >= time.time() + 1.0
    assert fates.Watch(kv).needed()


def test_announcing_waits_out_a_trusted_reading() -> None:
    kv = MemoryKeyValue()
    started = time.monotonic()
    fates.announce(kv, 1.0)
    assert time.monotonic() - started >= fates.SETTLE > fates.TRUST


CHILD = """
import json, os, signal, sys
from conveyor.brokers import BrokerOptions, create_broker
broker = create_broker(sys.argv[1], BrokerOptions(key_prefix=sys.argv[2]))
got = []
while len(got) < 3:
    got += broker.lease(["q"], 3 - len(got), 1.0)
fields = [[d.id, d.queue, d.priority, d.receipt, d.delivery_count] for d in got]
print(json.dumps(fields), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_dead_child_s_messages_released_by_its_supervisor_come_back_uncharged(
    rabbit_server: RabbitServer, tmp_path: Path
) -> None:
    # A child leases three messages and dies: RabbitMQ puts them back charged a delivery.
    # Its supervisor releases them with the child's receipts (prefetched, never started):
    # the next lease gives each back with the count it had.
    prefix = f"fates{uuid.uuid4().hex[:8]}"
    url = f"{rabbit_server.url}?kv_url=sqlite:///{tmp_path}/kv.db"
    supervisor = create_broker(url, BrokerOptions(key_prefix=prefix))
    assert isinstance(supervisor, AMQPBroker)
    try:
        ids = send(supervisor, "q", 3)
        child = subprocess.run(
            [sys.executable, "-c", CHILD, url, prefix], capture_output=True, text=True, timeout=60
        )
        assert child.returncode == -signal.SIGKILL, child.stderr
        leased = [
            Delivery(id_, queue, b"", priority, receipt, count)
            for id_, queue, priority, receipt, count in json.loads(child.stdout)
        ]
        assert sorted(d.id for d in leased) == sorted(ids)
        assert [d.delivery_count for d in leased] == [1, 1, 1]
        supervisor.release(leased)
        again = lease(supervisor, "q", 3)
        assert sorted(d.id for d in again) == sorted(ids)
        assert [d.delivery_count for d in again] == [1, 1, 1]
        supervisor.ack(again)
    finally:
        supervisor.close()
