"""The Broker's combined operations, run against every broker: revocation flags on leases,
``ack_recorded`` (store results, then ack) and ``ack_and_lease`` (that, then the next lease).

Each broker may do these in fewer round trips (one pipeline, one transaction); the promises
are the same as doing the parts one after the other: records are stored before any ack takes
effect, acks take effect before the lease waits, stale receipts change nothing, and a
failure of the result store acks nothing.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

import pytest

from conveyor.brokers.base import Broker, Delivery, Message, QueueStats
from conveyor.exceptions import ResultStoreError
from conveyor.results import create_result_store
from conveyor.results.base import ResultRecord, ResultStore
from conveyor.results.memory import MemoryResultStore

from .conftest import RESULT_EXPIRES
from .support import LEASE_TIMEOUT, PROMPT, hold, new_id, start, wait_until

Q = "default"
REDELIVERY_WAIT = LEASE_TIMEOUT + 5.0


def message(body: bytes = b"body", queue: str = Q) -> Message:
    return Message(new_id(), queue, body)


def stats_of(broker: Broker, queue: str = Q) -> QueueStats:
    return broker.stats([queue])[queue]


def done(delivery: Delivery, state: str = "SUCCESS") -> ResultRecord:
    return ResultRecord(id=delivery.id, state=state, result=delivery.body.decode())


@pytest.fixture
def store(broker_url: str, key_prefix: str) -> Iterator[ResultStore]:
    """A result store on the broker's own URL: same server (Redis) or file (SQLite), where a
    broker may settle records and acks in one round trip."""
    built = create_result_store(broker_url, expires=RESULT_EXPIRES, key_prefix=key_prefix)
    yield built
    built.close()


class FailingStore(MemoryResultStore):
    """A result store that is down."""

    def store(self, records: Sequence[ResultRecord]) -> None:
        raise ResultStoreError("result store is down")


def redelivered_ids(broker: Broker) -> list[str]:
    """Let every lease run out, sweep, and lease what came back."""
    deadline = broker.time() + LEASE_TIMEOUT + 0.05
    wait_until(lambda: broker.time() > deadline, REDELIVERY_WAIT, "lease expiry")
    broker.sweep()
    return [d.id for d in broker.lease([Q], 100, 0)]


# -- revocation flags ----------------------------------------------------------------------
def test_lease_flags_revoked_ids(broker: Broker, peer: Broker, store: ResultStore) -> None:
    sent = [message(b"a"), message(b"b"), message(b"c")]
    broker.revoke([sent[0].id], ttl=60)
    broker.revoke([sent[2].id], ttl=0.2)
    peer.publish(sent)
    hold(0.3)  # the short revocation has expired
    got = broker.lease([Q], 2, 0)
    assert [d.id for d in got] == [sent[0].id, sent[1].id]
    expected = [True, False] if broker.lease_checks_revoked else [False, False]
    assert [d.revoked for d in got] == expected
    # the same through ack_and_lease
    (third,) = broker.ack_and_lease(got, store, [], [Q], 5, 0)
    assert (third.id, third.revoked) == (sent[2].id, False)
    assert broker.revoked([sent[0].id]) == {sent[0].id}  # a lease does not consume it


def test_revoked_flag_is_current_on_redelivery(broker: Broker, peer: Broker) -> None:
    sent = message()
    broker.publish([sent])
    first = broker.lease([Q], 1, 0)[0]
    assert not first.revoked
    peer.revoke([sent.id], ttl=60)  # revoked while leased: the next delivery says so
    deadline = broker.time() + LEASE_TIMEOUT + 0.05
    wait_until(lambda: broker.time() > deadline, REDELIVERY_WAIT, "lease expiry")
    broker.sweep()
    (again,) = peer.lease([Q], 1, 0)
    assert again.id == sent.id
    assert again.revoked is peer.lease_checks_revoked


# -- ack_recorded ------------------------------------------------------------------------
def test_ack_recorded_stores_then_acks(broker: Broker, store: ResultStore) -> None:
    broker.publish([message(b"one"), message(b"two"), message(b"three")])
    got = broker.lease([Q], 3, 0)
    broker.ack_recorded(got[:2], store, [done(d) for d in got[:2]])
    assert [store.get(d.id) for d in got[:2]] == [done(d) for d in got[:2]]
    assert stats_of(broker) == QueueStats(leased=1)
    broker.ack_recorded(got[:2], store, [])  # acked already: a no-op
    assert redelivered_ids(broker) == [got[2].id]


def test_ack_recorded_records_without_acks_and_nothing(broker: Broker, store: ResultStore) -> None:
    broker.publish([message()])
    (held,) = broker.lease([Q], 1, 0)
    broker.ack_recorded([], store, [done(held, "STARTED")])
    assert store.get(held.id) == done(held, "STARTED")
    broker.ack_recorded([], store, [])
    assert stats_of(broker) == QueueStats(leased=1)
    broker.ack_recorded([held], store, [])
    assert stats_of(broker) == QueueStats()


def test_ack_recorded_with_a_store_elsewhere(broker: Broker) -> None:
    elsewhere = MemoryResultStore()
    broker.publish([message()])
    (held,) = broker.lease([Q], 1, 0)
    broker.ack_recorded([held], elsewhere, [done(held)])
    assert elsewhere.get(held.id) == done(held)
    assert stats_of(broker) == QueueStats()


def test_ack_recorded_acks_nothing_when_the_store_fails(broker: Broker) -> None:
    broker.publish([message()])
    (held,) = broker.lease([Q], 1, 0)
    with pytest.raises(ResultStoreError):
        broker.ack_recorded([held], FailingStore(), [done(held)])
    assert stats_of(broker) == QueueStats(leased=1)
    with pytest.raises(ResultStoreError):
        broker.ack_and_lease([held], FailingStore(), [done(held)], [Q], 1, 0)
    assert stats_of(broker) == QueueStats(leased=1)


def test_ack_recorded_with_a_stale_receipt_keeps_the_new_lease(
    broker: Broker, peer: Broker, store: ResultStore
) -> None:
    broker.publish([message()])
    (first,) = broker.lease([Q], 1, 0)
    deadline = broker.time() + LEASE_TIMEOUT + 0.05
    wait_until(lambda: broker.time() > deadline, REDELIVERY_WAIT, "lease expiry")
    peer.sweep()
    (second,) = peer.lease([Q], 1, 0)
    broker.ack_recorded([first], store, [done(first)])  # the late worker's result is kept
    assert store.get(first.id) == done(first)
    assert stats_of(peer) == QueueStats(leased=1)
    assert peer.ack_and_lease([first], store, [], [Q], 1, 0) == []
    assert stats_of(peer) == QueueStats(leased=1)
    peer.ack([second])
    assert stats_of(peer) == QueueStats()


# -- ack_and_lease -----------------------------------------------------------------------
def test_ack_and_lease_acks_then_leases(broker: Broker, peer: Broker, store: ResultStore) -> None:
    sent = [message(b"1"), message(b"2"), message(b"3")]
    peer.publish(sent)
    first = broker.lease([Q], 1, 0)
    assert [d.id for d in first] == [sent[0].id]
    got = broker.ack_and_lease(first, store, [done(first[0])], [Q], 5, 0)
    assert [d.id for d in got] == [sent[1].id, sent[2].id]
    assert [(d.body, d.delivery_count) for d in got] == [(b"2", 1), (b"3", 1)]
    assert store.get(sent[0].id) == done(first[0])
    assert stats_of(peer) == QueueStats(leased=2)
    assert broker.ack_and_lease(got, store, [], [Q], 5, 0) == []
    assert stats_of(peer) == QueueStats()


def test_ack_and_lease_settles_before_it_waits(
    broker: Broker, peer: Broker, store: ResultStore
) -> None:
    broker.publish([message(b"first")])
    held = broker.lease([Q], 1, 0)
    call = start(broker.ack_and_lease, held, store, [done(held[0])], [Q], 1, 5.0)
    wait_until(lambda: stats_of(peer) == QueueStats(), PROMPT, "the ack of a waiting lease")
    assert store.get(held[0].id) == done(held[0])
    assert call.is_alive(), "ack_and_lease returned without waiting"
    sent = message(b"next")
    published_at = time.monotonic()
    peer.publish([sent])
    got = call.outcome()
    assert [d.id for d in got] == [sent.id]
    assert call.finished_at - published_at < PROMPT


def test_ack_and_lease_with_a_store_elsewhere_and_limit_zero(broker: Broker) -> None:
    elsewhere = MemoryResultStore()
    broker.publish([message(), message()])
    held = broker.lease([Q], 1, 0)
    got = broker.ack_and_lease(held, elsewhere, [done(held[0])], [Q], 1, 0)
    assert elsewhere.get(held[0].id) == done(held[0])
    assert stats_of(broker) == QueueStats(leased=1)
    assert broker.ack_and_lease(got, elsewhere, [done(got[0])], [Q], 0, 0) == []
    assert broker.ack_and_lease([], elsewhere, [], [], 5, 0) == []
    assert elsewhere.get(got[0].id) == done(got[0])
    assert stats_of(broker) == QueueStats()
