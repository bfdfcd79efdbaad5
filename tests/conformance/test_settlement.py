"""Settlements (conveyor.settlement), run on every broker: ``ack`` (store results, then
ack), ``ack_and_lease`` (that, then the next lease) and ``publish`` (records, then messages),
with a result store on the broker's own URL (same server or file: the fast pairs) and with
one elsewhere; and revocation flags on leases.

A broker's settlement may do these in fewer round trips (one pipeline, one transaction); the
promises are the same as doing the parts one after the other: records are stored before any
ack takes effect, acks take effect before the lease waits, stale receipts change nothing, and
a failure of the result store acks nothing.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from conveyor.brokers.base import Broker, Delivery, Message, QueueStats
from conveyor.exceptions import ResultStoreError
from conveyor.results import create_result_store
from conveyor.results.base import ResultRecord, ResultStore
from conveyor.results.memory import MemoryResultStore
from conveyor.settlement import Settlement, open_settlement
from conveyor.settlement.postgres import PostgresSettlement
from conveyor.settlement.redis import RedisSettlement
from conveyor.settlement.sqlite import SQLiteSettlement

from .conftest import _BY_NAME as BY_NAME
from .conftest import RESULT_EXPIRES
from .support import LEASE_TIMEOUT, PROMPT, hold, new_id, start, wait_until, weaker

Q = "default"
REDELIVERY_WAIT = LEASE_TIMEOUT + 5.0


def message(body: bytes = b"body", queue: str = Q) -> Message:
    return Message(new_id(), queue, body)


def stats_of(broker: Broker, queue: str = Q) -> QueueStats:
    return broker.stats([queue])[queue]


def done(delivery: Delivery, state: str = "SUCCESS") -> ResultRecord:
    return ResultRecord(id=delivery.id, state=state, result=delivery.body.decode())


def own_store_url(broker_backend: str, broker_url: str, tmp_path: Path) -> str:
    """The broker's own URL, or a SQLite file for a broker that stores no results (amqp)."""
    if BY_NAME[broker_backend].results:
        return broker_url
    return f"sqlite:///{tmp_path}/results.db"


@pytest.fixture
def store(
    broker_backend: str, broker_url: str, key_prefix: str, tmp_path: Path
) -> Iterator[ResultStore]:
    """A result store on the broker's own URL: same server (Redis) or file (SQLite), where a
    broker may settle records and acks in one round trip."""
    url = own_store_url(broker_backend, broker_url, tmp_path)
    built = create_result_store(url, expires=RESULT_EXPIRES, key_prefix=key_prefix)
    yield built
    built.close()


@pytest.fixture
def settlement(broker: Broker, store: ResultStore) -> Settlement:
    """The broker's settlement with a result store it can write in the same round trip."""
    return open_settlement(broker, store)


@pytest.fixture
def peer_settlement(peer: Broker, store: ResultStore) -> Settlement:
    return open_settlement(peer, store)


def elsewhere(broker: Broker, store: ResultStore | None = None) -> Settlement:
    """The broker's settlement with a result store it cannot share round trips with."""
    return open_settlement(broker, store or MemoryResultStore())


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


# -- which settlement ------------------------------------------------------------------------
def test_each_broker_gets_its_settlement(
    broker: Broker, broker_backend: str, tmp_path: Path
) -> None:
    own = {
        "sqlite": SQLiteSettlement,
        "redis": RedisSettlement,
        "redis-cluster": RedisSettlement,
        "postgres": PostgresSettlement,
    }.get(broker_backend, Settlement)
    url = own_store_url(broker_backend, broker.url, tmp_path)
    pair = open_settlement(broker, create_result_store(url, expires=60, key_prefix="p"))
    apart = elsewhere(broker)
    assert type(pair) is own
    assert type(apart) is own
    # Dead letters cost no round trip of their own where they ride with the lease.
    assert pair.dead_letters_ride is (broker_backend in ("sqlite", "redis", "redis-cluster"))
    if isinstance(pair, RedisSettlement | SQLiteSettlement | PostgresSettlement):
        assert pair.together is pair.results
        assert isinstance(apart, RedisSettlement | SQLiteSettlement | PostgresSettlement)
        assert apart.together is None
    pair.results.close()


# -- revocation flags ----------------------------------------------------------------------
def test_lease_flags_revoked_ids(broker: Broker, peer: Broker, settlement: Settlement) -> None:
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
    (third,) = settlement.ack_and_lease(got, [], [Q], 5, 0)
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


# -- publish -------------------------------------------------------------------------------
def test_publish_stores_records_then_publishes(
    broker: Broker, settlement: Settlement, store: ResultStore
) -> None:
    sent = [message(b"one"), message(b"two")]
    records = [ResultRecord(m.id, "QUEUED") for m in sent]
    settlement.publish(sent, records)
    assert store.get_many([m.id for m in sent]) == records
    assert [d.id for d in broker.lease([Q], 10, 0)] == [m.id for m in sent]
    settlement.publish([], [ResultRecord("alone", "QUEUED")])  # records without messages
    assert store.get("alone") == ResultRecord("alone", "QUEUED")
    later = message()
    settlement.publish([later], [])  # messages without records
    assert [d.id for d in broker.lease([Q], 10, 0)] == [later.id]


def test_publish_with_a_store_elsewhere_and_a_failing_one(broker: Broker) -> None:
    other = MemoryResultStore()
    sent = message()
    elsewhere(broker, other).publish([sent], [ResultRecord(sent.id, "QUEUED")])
    assert other.get(sent.id) == ResultRecord(sent.id, "QUEUED")
    assert [d.id for d in broker.lease([Q], 10, 0)] == [sent.id]
    with pytest.raises(ResultStoreError):
        elsewhere(broker, FailingStore()).publish([message()], [ResultRecord("x", "QUEUED")])
    assert stats_of(broker) == QueueStats(leased=1), "published without its record"


# -- ack -----------------------------------------------------------------------------------
def test_ack_stores_then_acks(broker: Broker, settlement: Settlement, store: ResultStore) -> None:
    broker.publish([message(b"one"), message(b"two"), message(b"three")])
    got = broker.lease([Q], 3, 0)
    settlement.ack(got[:2], [done(d) for d in got[:2]])
    assert [store.get(d.id) for d in got[:2]] == [done(d) for d in got[:2]]
    assert stats_of(broker) == QueueStats(leased=1)
    settlement.ack(got[:2], [])  # acked already: a no-op
    assert redelivered_ids(broker) == [got[2].id]


def test_ack_records_without_acks_and_nothing(
    broker: Broker, settlement: Settlement, store: ResultStore
) -> None:
    broker.publish([message()])
    (held,) = broker.lease([Q], 1, 0)
    settlement.ack([], [done(held, "STARTED")])
    assert store.get(held.id) == done(held, "STARTED")
    settlement.ack([], [])
    assert stats_of(broker) == QueueStats(leased=1)
    settlement.ack([held], [])
    assert stats_of(broker) == QueueStats()


def test_ack_with_a_store_elsewhere(broker: Broker) -> None:
    other = MemoryResultStore()
    broker.publish([message()])
    (held,) = broker.lease([Q], 1, 0)
    elsewhere(broker, other).ack([held], [done(held)])
    assert other.get(held.id) == done(held)
    assert stats_of(broker) == QueueStats()


def test_ack_acks_nothing_when_the_store_fails(broker: Broker) -> None:
    broker.publish([message()])
    (held,) = broker.lease([Q], 1, 0)
    failing = elsewhere(broker, FailingStore())
    with pytest.raises(ResultStoreError):
        failing.ack([held], [done(held)])
    assert stats_of(broker) == QueueStats(leased=1)
    with pytest.raises(ResultStoreError):
        failing.ack_and_lease([held], [done(held)], [Q], 1, 0)
    assert stats_of(broker) == QueueStats(leased=1)


def test_ack_with_a_stale_receipt_keeps_the_new_lease(
    broker: Broker,
    peer: Broker,
    settlement: Settlement,
    peer_settlement: Settlement,
    store: ResultStore,
    broker_backend: str,
) -> None:
    broker.publish([message()])
    (first,) = broker.lease([Q], 1, 0)
    deadline = broker.time() + LEASE_TIMEOUT + 0.05
    wait_until(lambda: broker.time() > deadline, REDELIVERY_WAIT, "lease expiry")
    peer.sweep()
    if weaker(broker_backend, "holder_returns"):  # the holder's timer returns it
        (second,) = wait_until(lambda: peer.lease([Q], 1, 0), REDELIVERY_WAIT, "redelivery")
    else:
        (second,) = peer.lease([Q], 1, 0)
    settlement.ack([first], [done(first)])  # the late worker's result is kept
    assert store.get(first.id) == done(first)
    assert stats_of(peer) == QueueStats(leased=1)
    assert peer_settlement.ack_and_lease([first], [], [Q], 1, 0) == []
    assert stats_of(peer) == QueueStats(leased=1)
    peer.ack([second])
    assert stats_of(peer) == QueueStats()


# -- ack_and_lease -------------------------------------------------------------------------
def test_ack_and_lease_acks_then_leases(
    broker: Broker, peer: Broker, settlement: Settlement, store: ResultStore, broker_backend: str
) -> None:
    sent = [message(b"1"), message(b"2"), message(b"3")]
    peer.publish(sent)
    first = broker.lease([Q], 1, 0)
    assert [d.id for d in first] == [sent[0].id]
    got = settlement.ack_and_lease(first, [done(first[0])], [Q], 5, 0)
    assert [d.id for d in got] == [sent[1].id, sent[2].id]
    assert [(d.body, d.delivery_count) for d in got] == [(b"2", 1), (b"3", 1)]
    assert store.get(sent[0].id) == done(first[0])
    counts_leases = broker if weaker(broker_backend, "leased_per_client") else peer
    assert stats_of(counts_leases) == QueueStats(leased=2)
    assert settlement.ack_and_lease(got, [], [Q], 5, 0) == []
    assert stats_of(peer) == QueueStats()


def test_ack_and_lease_settles_before_it_waits(
    broker: Broker, peer: Broker, settlement: Settlement, store: ResultStore
) -> None:
    broker.publish([message(b"first")])
    held = broker.lease([Q], 1, 0)
    call = start(settlement.ack_and_lease, held, [done(held[0])], [Q], 1, 5.0)
    wait_until(lambda: stats_of(peer) == QueueStats(), PROMPT, "the ack of a waiting lease")
    assert store.get(held[0].id) == done(held[0])
    assert call.is_alive(), "ack_and_lease returned without waiting"
    sent = message(b"next")
    published_at = time.monotonic()
    peer.publish([sent])
    got = call.outcome()
    assert [d.id for d in got] == [sent.id]
    assert call.finished_at - published_at < PROMPT


def test_ack_and_lease_with_limit_zero_or_no_queues_only_settles(
    broker: Broker, settlement: Settlement, store: ResultStore
) -> None:
    broker.publish([message(), message()])
    held = broker.lease([Q], 2, 0)
    assert settlement.ack_and_lease(held[:1], [done(held[0])], [Q], 0, 0) == []
    assert settlement.ack_and_lease(held[1:], [done(held[1])], [], 5, 0) == []
    assert store.get_many([d.id for d in held]) == [done(d) for d in held]
    assert settlement.ack_and_lease([], [], [], 5, 0) == []
    assert stats_of(broker) == QueueStats()


def test_ack_and_lease_with_a_store_elsewhere_and_limit_zero(broker: Broker) -> None:
    other = MemoryResultStore()
    settlement = elsewhere(broker, other)
    broker.publish([message(), message()])
    held = broker.lease([Q], 1, 0)
    got = settlement.ack_and_lease(held, [done(held[0])], [Q], 1, 0)
    assert other.get(held[0].id) == done(held[0])
    assert stats_of(broker) == QueueStats(leased=1)
    assert settlement.ack_and_lease(got, [done(got[0])], [Q], 0, 0) == []
    assert settlement.ack_and_lease([], [], [], 5, 0) == []
    assert other.get(got[0].id) == done(got[0])
    assert stats_of(broker) == QueueStats()


def test_ack_and_lease_dead_letters_with_the_acks(
    broker: Broker, peer: Broker, settlement: Settlement, store: ResultStore
) -> None:
    sent = [message(b"ok"), message(b"{bad"), message(b"unknown"), message(b"next")]
    peer.publish(sent)
    ok, bad, unknown = broker.lease([Q], 3, 0)
    failed = done(unknown, "FAILURE")
    dead = [(bad, "malformed", "not JSON"), (unknown, "unknown_task", "task 'x' is not registered")]
    got = settlement.ack_and_lease([ok], [done(ok), failed], [Q], 5, 0, dead)
    assert [d.id for d in got] == [sent[3].id]
    assert store.get_many([ok.id, unknown.id]) == [done(ok), failed]
    letters = {d.id: (d.reason, d.detail, d.body) for d in peer.dead_letters()}
    assert letters == {
        bad.id: ("malformed", "not JSON", b"{bad"),
        unknown.id: ("unknown_task", "task 'x' is not registered", b"unknown"),
    }
    # Called again (its reply was lost): the dead letters are not written twice.
    assert settlement.ack_and_lease([ok], [], [Q], 5, 0, dead) == []
    assert len(peer.dead_letters()) == 2
    settlement.ack(got, [])
    assert stats_of(peer) == QueueStats(dead=2)


def test_ack_and_lease_with_limit_zero_dead_letters_only(
    broker: Broker, settlement: Settlement
) -> None:
    broker.publish([message(b"x"), message(b"left")])
    (held,) = broker.lease([Q], 1, 0)
    assert settlement.ack_and_lease([], [], [Q], 0, 0, [(held, "malformed", "bad")]) == []
    [dead] = broker.dead_letters()
    assert (dead.id, dead.reason, dead.detail) == (held.id, "malformed", "bad")
    assert stats_of(broker) == QueueStats(ready=1, dead=1)


def test_ack_and_lease_dead_letters_nothing_when_the_store_fails(broker: Broker) -> None:
    broker.publish([message()])
    (held,) = broker.lease([Q], 1, 0)
    failing = elsewhere(broker, FailingStore())
    with pytest.raises(ResultStoreError):  # records first: the dead letter waits for them
        failing.ack_and_lease([], [done(held, "FAILURE")], [Q], 1, 0, [(held, "unknown_task", "")])
    assert stats_of(broker) == QueueStats(leased=1)
    assert broker.dead_letters() == []


# -- retry_later / dead_letter -------------------------------------------------------------
def test_retry_later_and_dead_letter_go_to_the_broker(
    broker: Broker, settlement: Settlement
) -> None:
    broker.publish([message(b"retried"), message(b"buried")])
    retried, buried = broker.lease([Q], 2, 0)
    again = message(b"again")
    settlement.retry_later(retried, again)
    settlement.dead_letter(buried, "rejected", "no")
    assert [d.id for d in broker.lease([Q], 5, 0)] == [again.id]
    [dead] = broker.dead_letters()
    assert (dead.id, dead.reason, dead.detail) == (buried.id, "rejected", "no")
