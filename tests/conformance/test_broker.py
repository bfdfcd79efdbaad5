"""The Broker promises (src/conveyor/brokers/base.py, DESIGN.md), run against every broker.
Its key/value storage (``broker.kv``) is checked by test_kv.py.

Receipt rule used throughout: a receipt is *held* from ``lease()`` until it is acked, released,
dead-lettered or retried, or until ``sweep()`` reclaims the expired lease. ``ack``/``extend``/
``release``/``dead_letter``/``retry_later`` with a receipt that is no longer held do nothing at
all, so a late worker can never remove, duplicate or bury a message that another worker holds.
"""

from __future__ import annotations

import threading
import time

import pytest

from conveyor.brokers.base import (
    Broker,
    DeadLetter,
    DeadLetterReason,
    Delivery,
    Message,
    QueueStats,
)

from .conftest import BrokerFactory
from .support import (
    EARLY_SLACK,
    LEASE_TIMEOUT,
    MAX_DELIVERIES,
    PROMPT,
    hold,
    new_id,
    run_together,
    start,
    wait_until,
    weaker,
)

Q = "default"


#: Enough time for an expired lease to be noticed by polling sweeps.
REDELIVERY_WAIT = LEASE_TIMEOUT + 5.0


def message(body: bytes = b"body", queue: str = Q, **fields: object) -> Message:
    return Message(new_id(), queue, body, **fields)  # type: ignore[arg-type]


def lease_one(broker: Broker, queues: list[str] | None = None) -> Delivery:
    got = broker.lease(queues or [Q], 1, 0)
    assert len(got) == 1, f"expected one ready message, got {got!r}"
    return got[0]


def ids(deliveries: list[Delivery]) -> list[str]:
    return [d.id for d in deliveries]


def drain(broker: Broker, queues: list[str], batch: int = 100) -> list[Delivery]:
    out: list[Delivery] = []
    while got := broker.lease(queues, batch, 0):
        out += got
    return out


def redelivered(broker: Broker, queues: list[str] | None = None) -> Delivery:
    """Sweep until an expired lease comes back, then lease it (one message)."""

    def attempt() -> list[Delivery]:
        broker.sweep()
        return broker.lease(queues or [Q], 1, 0)

    return wait_until(attempt, REDELIVERY_WAIT, "redelivery after lease expiry")[0]


def stats_of(broker: Broker, queue: str = Q) -> QueueStats:
    return broker.stats([queue])[queue]


# -- publish / lease / ack ---------------------------------------------------------------
def test_publish_lease_ack_round_trip(broker: Broker) -> None:
    body = b'{"task": "add", "args": [1, 2]}\x00\xff\xfe'
    sent = Message(new_id(), Q, body, priority=7)
    broker.publish([sent])

    [got] = broker.lease([Q], 10, 0)
    assert (got.id, got.queue, got.body, got.priority, got.delivery_count) == (
        sent.id,
        Q,
        body,
        7,
        1,
    )
    assert type(got.body) is bytes
    assert isinstance(got.receipt, str)
    assert got.receipt

    broker.ack([got])
    assert broker.lease([Q], 10, 0) == []
    assert stats_of(broker) == QueueStats()


def test_bodies_round_trip_byte_exact(broker: Broker) -> None:
    bodies = [b"", b"\x00", bytes(range(256)), "héllo ✓".encode(), b"x" * 300_000]
    sent = [message(body) for body in bodies]
    broker.publish(sent)
    got = drain(broker, [Q])
    assert [d.body for d in got] == bodies
    assert ids(got) == [m.id for m in sent]


def test_publish_empty_batch_is_noop(broker: Broker) -> None:
    broker.publish([])
    assert broker.lease([Q], 10, 0) == []


def test_publishing_a_message_id_twice_keeps_one_message(broker: Broker) -> None:
    """publish() is idempotent by id (a producer retries a publish whose reply was lost):
    again on its own, again in a batch, and again after the first copy was acked."""
    sent = message(b"first")
    other = message(b"other")
    broker.publish([sent])
    broker.publish([Message(sent.id, Q, b"second")])
    broker.publish([Message(sent.id, Q, b"third"), other])
    got = drain(broker, [Q])
    assert [(d.id, d.body) for d in got] == [(sent.id, b"first"), (other.id, b"other")]
    assert stats_of(broker) == QueueStats(leased=2)

    broker.ack(got)
    broker.publish([Message(sent.id, Q, b"late"), Message(other.id, Q, b"late", countdown=5)])
    assert stats_of(broker) == QueueStats()
    assert broker.lease([Q], 10, 0) == []


def test_retry_later_is_not_a_duplicate_publish(broker: Broker) -> None:
    sent = message(b"try 1")
    broker.publish([sent])
    held = lease_one(broker)
    broker.retry_later(held, Message(sent.id, Q, b"try 2"))  # same id, on purpose
    again = lease_one(broker)
    assert (again.id, again.body) == (sent.id, b"try 2")


def test_lease_limit_and_batch(broker: Broker) -> None:
    sent = [message(f"m{n}".encode()) for n in range(5)]
    broker.publish(sent)

    first = broker.lease([Q], 2, 0)
    assert ids(first) == [m.id for m in sent[:2]]
    rest = broker.lease([Q], 10, 0)
    assert ids(rest) == [m.id for m in sent[2:]]
    assert len({d.receipt for d in first + rest}) == 5, "receipts must be unique"
    assert all(d.delivery_count == 1 for d in first + rest)
    assert broker.lease([Q], 10, 0) == []


def test_lease_returns_available_messages_without_waiting_to_fill_batch(broker: Broker) -> None:
    broker.publish([message() for _ in range(3)])
    began = time.monotonic()
    got = broker.lease([Q], 10, 5.0)
    assert len(got) == 3
    assert time.monotonic() - began < PROMPT


def test_lease_wait_zero_returns_immediately_empty(broker: Broker) -> None:
    # The first call of a client connects and declares its queues (RabbitMQ: its topology):
    # that is set-up, not waiting, so it is not timed.
    assert broker.lease([Q, "other"], 10, 0) == []
    began = time.monotonic()
    assert broker.lease([Q, "other"], 10, 0) == []
    assert time.monotonic() - began < 0.25


def test_lease_wait_honours_timeout_when_nothing_comes(broker: Broker) -> None:
    began = time.monotonic()
    assert broker.lease([Q], 10, 0.5) == []
    elapsed = time.monotonic() - began
    assert 0.5 - EARLY_SLACK <= elapsed < 0.5 + PROMPT


@pytest.mark.parametrize("publisher", ["same", "peer"])
def test_blocking_lease_wakes_promptly_on_publish(
    broker: Broker, peer: Broker, publisher: str
) -> None:
    consumer = start(broker.lease, ["a", "b"], 10, 5.0)
    hold(0.3)  # let the consumer block inside lease()
    sent = message(queue="b")
    (broker if publisher == "same" else peer).publish([sent])
    published_at = time.monotonic()

    got = consumer.outcome()
    assert ids(got) == [sent.id]
    latency = consumer.finished_at - published_at
    assert latency < PROMPT, f"blocked lease returned {latency:.2f}s after the publish"


def test_release_wakes_blocked_lease(broker: Broker, peer: Broker) -> None:
    broker.publish([message()])
    held = lease_one(broker)
    consumer = start(peer.lease, [Q], 1, 5.0)
    hold(0.3)
    broker.release([held])
    released_at = time.monotonic()
    assert ids(consumer.outcome()) == [held.id]
    assert consumer.finished_at - released_at < PROMPT


# -- ordering ----------------------------------------------------------------------------
def test_fifo_within_one_priority(broker: Broker) -> None:
    sent = [message(f"{n}".encode()) for n in range(20)]
    broker.publish(sent[:10])
    for m in sent[10:]:
        broker.publish([m])
    got = [lease_one(broker) for _ in range(20)]
    assert ids(got) == [m.id for m in sent]


def test_priority_nine_first_across_queues_fifo_within_queue_and_priority(
    broker: Broker, broker_backend: str
) -> None:
    plan = [("a", 0), ("a", 9), ("b", 7), ("a", 5), ("b", 9), ("a", 9), ("b", 0), ("a", 0)]
    plan += [("b", 5), ("a", 7), ("b", 9), ("a", 5)]
    sent = [message(queue=queue, priority=prio) for queue, prio in plan]
    broker.publish(sent)

    got: list[Delivery] = []
    while batch := broker.lease(["a", "b"], 3, 0):  # several batches: order holds across them
        got += batch

    assert len(got) == len(sent)
    if weaker(broker_backend, "priority"):  # FIFO per queue, queues in the order given
        assert ids(got) == [m.id for m in sent if m.queue == "a"] + [
            m.id for m in sent if m.queue == "b"
        ]
        assert [d.priority for d in got] == [m.priority for m in sent if m.queue == "a"] + [
            m.priority for m in sent if m.queue == "b"
        ]
        return
    priorities = [d.priority for d in got]
    assert priorities == sorted(priorities, reverse=True), "9 must be served first"
    for queue in ("a", "b"):
        expected = sorted(
            (m for m in sent if m.queue == queue), key=lambda m: -m.priority
        )  # stable: FIFO within one priority
        assert [d.id for d in got if d.queue == queue] == [m.id for m in expected]


def test_default_priority_is_five_and_out_of_range_is_clamped(
    broker: Broker, broker_backend: str
) -> None:
    default = message()
    high = message(priority=42)
    low = message(priority=-3)
    eight = message(priority=8)
    one = message(priority=1)
    broker.publish([low, one, default, eight, high])
    got = drain(broker, [Q])
    if weaker(broker_backend, "priority"):  # FIFO, priorities still clamped and reported
        assert ids(got) == [low.id, one.id, default.id, eight.id, high.id]
        assert [d.priority for d in got] == [0, 1, 5, 8, 9]
        return
    assert ids(got) == [high.id, eight.id, default.id, one.id, low.id]
    assert [d.priority for d in got] == [9, 8, 5, 1, 0]


def test_queue_isolation(broker: Broker) -> None:
    in_a = [message(queue="a") for _ in range(3)]
    in_b = [message(queue="b") for _ in range(2)]
    broker.publish([in_a[0], in_b[0], in_a[1], in_b[1], in_a[2]])
    assert ids(broker.lease(["a"], 10, 0)) == [m.id for m in in_a]
    assert broker.lease(["a"], 10, 0) == []
    assert ids(broker.lease(["b"], 10, 0)) == [m.id for m in in_b]
    assert broker.lease(["c"], 10, 0) == []


def test_blocked_lease_ignores_other_queues(broker: Broker, peer: Broker) -> None:
    consumer = start(broker.lease, ["a"], 10, 0.8)
    hold(0.2)
    peer.publish([message(queue="b")])
    assert consumer.outcome() == []
    assert len(broker.lease(["b"], 10, 0)) == 1


# -- delayed messages --------------------------------------------------------------------
def test_delayed_not_leasable_before_due_and_leasable_after(
    broker: Broker, broker_backend: str
) -> None:
    now = broker.time()
    by_countdown = message(b"countdown", countdown=0.5)
    by_eta = message(b"eta", eta=now + 0.7)
    eta_later = message(b"eta wins", countdown=0.2, eta=now + 0.6)  # the later of both wins
    countdown_later = message(b"countdown wins", countdown=0.6, eta=now + 0.1)
    broker.publish([by_countdown, by_eta, eta_later, countdown_later])
    due = {
        by_countdown.id: now + 0.5,
        by_eta.id: now + 0.7,
        eta_later.id: now + 0.6,
        countdown_later.id: now + 0.6,
    }
    assert broker.lease([Q], 10, 0) == []
    assert stats_of(broker).delayed == 4

    leased_at: dict[str, float] = {}

    def collect() -> bool:
        for d in broker.lease([Q], 10, 0.05):
            leased_at[d.id] = broker.time()
        return len(leased_at) == 4

    wait_until(collect, 5.0, "all delayed messages leased")
    for message_id, when in leased_at.items():
        assert when >= due[message_id] - EARLY_SLACK, "a delayed message was served early"


def test_delayed_messages_ordered_by_due_time(broker: Broker) -> None:
    now = broker.time()
    last = message(eta=now + 0.5)
    first = message(eta=now + 0.3)
    middle = message(eta=now + 0.4)
    broker.publish([last, first, middle])
    wait_until(lambda: broker.time() > now + 0.55, 5.0, "all due")
    broker.sweep()
    assert ids(drain(broker, [Q], batch=10)) == [first.id, middle.id, last.id]


def test_past_eta_is_ready_now(broker: Broker) -> None:
    sent = message(eta=broker.time() - 60)
    broker.publish([sent])
    assert ids(broker.lease([Q], 10, 0)) == [sent.id]


def test_delayed_message_does_not_block_ready_ones(broker: Broker, broker_backend: str) -> None:
    delayed = message(priority=9, countdown=60)
    ready = [message(priority=0), message(priority=5)]
    broker.publish([delayed, *ready])
    expected = ready if weaker(broker_backend, "priority") else [ready[1], ready[0]]
    assert ids(broker.lease([Q], 10, 0)) == [m.id for m in expected]
    assert broker.lease([Q], 10, 0) == []
    assert stats_of(broker) == QueueStats(ready=0, delayed=1, leased=2, dead=0)


def test_blocking_lease_returns_delayed_message_once_due(broker: Broker) -> None:
    due = broker.time() + 0.4
    sent = message(eta=due)
    broker.publish([sent])
    began = time.monotonic()
    got = broker.lease([Q], 1, 5.0)
    assert ids(got) == [sent.id]
    assert broker.time() >= due - EARLY_SLACK
    assert time.monotonic() - began < 0.4 + PROMPT, "lease slept past the due time"


# -- leases: expiry, extend, release -----------------------------------------------------
def test_redelivery_after_lease_expiry_counts_deliveries(broker: Broker, peer: Broker) -> None:
    sent = message(b"payload", priority=6)
    broker.publish([sent])
    first = lease_one(broker)
    leased_at = time.monotonic()

    second = redelivered(peer)
    assert time.monotonic() - leased_at >= LEASE_TIMEOUT - EARLY_SLACK, "redelivered early"
    assert (second.id, second.queue, second.body, second.priority) == (sent.id, Q, b"payload", 6)
    assert second.delivery_count == 2
    assert second.receipt != first.receipt
    peer.ack([second])
    peer.sweep()
    assert peer.lease([Q], 10, 0) == []


def test_expired_lease_returns_to_its_place_in_the_queue(
    broker: Broker, peer: Broker, broker_backend: str
) -> None:
    """A message swept back from a dead worker's lease is leased before the messages that
    were queued behind it (a killed worker's tasks are not sent to the back of the line)."""
    first, second = message(priority=4), message(priority=4)
    broker.publish([first, second])
    assert lease_one(broker).id == first.id
    behind = [message(priority=4) for _ in range(20)]
    broker.publish(behind)
    expired = broker.time() + LEASE_TIMEOUT + EARLY_SLACK
    wait_until(lambda: broker.time() > expired, REDELIVERY_WAIT, "lease expiry")
    if weaker(broker_backend, "holder_returns"):  # the holder's own timer returns it
        wait_until(lambda: stats_of(peer).ready == 22, REDELIVERY_WAIT, "lease returned")
    else:
        assert peer.sweep() >= 1
    again = drain(peer, [Q])
    assert ids(again) == [first.id, second.id, *(m.id for m in behind)]
    assert again[0].delivery_count == 2


def test_concurrent_sweeps_move_each_expired_lease_once(
    broker: Broker, peer: Broker, broker_backend: str
) -> None:
    sent = [message() for _ in range(10)]
    broker.publish(sent)
    assert len(broker.lease([Q], 10, 0)) == 10
    deadline = broker.time() + LEASE_TIMEOUT + EARLY_SLACK
    wait_until(lambda: broker.time() > deadline, REDELIVERY_WAIT, "lease expiry")

    moved = run_together([broker.sweep if n % 2 else peer.sweep for n in range(8)])
    if weaker(broker_backend, "holder_returns"):  # the holder's timer may have been first
        assert sum(moved) <= 10, f"sweeps reported {moved}"
        wait_until(lambda: stats_of(peer).ready == 10, REDELIVERY_WAIT, "leases returned")
    else:
        assert sum(moved) == 10, f"sweeps reported {moved}"
    again = drain(peer, [Q])
    assert sorted(ids(again)) == sorted(m.id for m in sent)
    assert {d.delivery_count for d in again} == {2}


def test_extend_keeps_message_leased_past_several_timeouts(broker: Broker, peer: Broker) -> None:
    broker.publish([message()])
    held = lease_one(broker)
    stop = threading.Event()

    def heartbeat() -> None:
        while not stop.wait(LEASE_TIMEOUT / 5):
            broker.extend([held])

    beating = start(heartbeat)
    until = time.monotonic() + 2.5 * LEASE_TIMEOUT
    while time.monotonic() < until:
        peer.sweep()
        assert peer.lease([Q], 1, 0.1) == [], "an extended lease was redelivered"
    stop.set()
    beating.outcome()
    stopped_at = time.monotonic()

    again = redelivered(peer)  # without heartbeats the lease runs out again
    assert time.monotonic() - stopped_at >= LEASE_TIMEOUT - LEASE_TIMEOUT / 5 - EARLY_SLACK
    assert again.id == held.id
    assert again.delivery_count == 2


def test_release_returns_message_at_once_without_charging_a_delivery(
    broker: Broker, broker_backend: str
) -> None:
    sent = message(b"kept")
    other = message()
    broker.publish([sent, other])
    held = lease_one(broker)
    assert held.id == sent.id
    back_of_queue = weaker(broker_backend, "holder_returns")
    if back_of_queue:  # a released message joins the back: take `other` out of the way
        first_other = lease_one(broker)
        assert first_other.id == other.id

    for _ in range(MAX_DELIVERIES + 2):  # releases never count towards max_deliveries
        broker.release([held])
        again = lease_one(broker)
        assert (again.id, again.body, again.delivery_count) == (sent.id, b"kept", 1)
        assert again.receipt != held.receipt
        held = again

    broker.release([])
    if back_of_queue:
        broker.release([first_other])
    assert stats_of(broker) == QueueStats(ready=1, leased=1)


def test_released_receipt_is_stale(broker: Broker, peer: Broker) -> None:
    broker.publish([message()])
    old = lease_one(broker)
    broker.release([old])
    current = lease_one(peer)

    broker.ack([old])
    broker.release([old])
    broker.extend([old])
    assert stats_of(peer) == QueueStats(leased=1), "a stale receipt touched the new lease"
    assert peer.lease([Q], 10, 0) == []
    peer.ack([current])
    assert stats_of(peer) == QueueStats()


# -- ack ---------------------------------------------------------------------------------
def test_ack_is_idempotent(broker: Broker) -> None:
    sent = [message(), message()]
    broker.publish(sent)
    got = broker.lease([Q], 10, 0)
    broker.ack(got)
    broker.ack(got)
    broker.ack([got[0]])
    broker.ack([])
    broker.extend([])
    assert broker.lease([Q], 10, 0) == []
    assert stats_of(broker) == QueueStats()


def test_ack_after_expiry_before_reclaim_succeeds(broker: Broker) -> None:
    broker.publish([message()])
    held = lease_one(broker)
    expired = broker.time() + LEASE_TIMEOUT + EARLY_SLACK
    wait_until(lambda: broker.time() > expired, REDELIVERY_WAIT, "lease expiry")
    broker.ack([held])  # nobody reclaimed it yet: the late ack still counts
    broker.sweep()
    assert broker.lease([Q], 10, 0) == []
    assert stats_of(broker) == QueueStats()


def test_stale_ack_does_not_remove_redelivered_message(broker: Broker, peer: Broker) -> None:
    broker.publish([message()])
    old = lease_one(broker)
    current = redelivered(peer)
    assert current.delivery_count == 2

    broker.ack([old])  # the first worker finishes late
    assert stats_of(peer) == QueueStats(leased=1), "a stale ack removed the new holder's lease"
    peer.release([current])  # the message still exists: its holder can hand it back
    back = lease_one(peer)
    assert (back.id, back.delivery_count) == (current.id, 2)
    peer.ack([back])
    assert stats_of(peer) == QueueStats()


def test_stale_release_and_extend_are_noops(broker: Broker, peer: Broker) -> None:
    broker.publish([message()])
    old = lease_one(broker)
    current = redelivered(peer)

    broker.release([old])
    broker.extend([old])
    assert peer.lease([Q], 10, 0) == [], "a stale release duplicated a held message"
    assert stats_of(peer) == QueueStats(leased=1)
    peer.ack([current])
    assert stats_of(peer) == QueueStats()


def test_stale_dead_letter_and_retry_later_are_noops(broker: Broker, peer: Broker) -> None:
    sent = message()
    broker.publish([sent])
    old = lease_one(broker)
    current = redelivered(peer)

    broker.dead_letter(old, DeadLetterReason.REJECTED, "late")
    broker.retry_later(old, Message(sent.id, Q, b"retry", countdown=0))
    assert broker.dead_letters() == [], "a stale dead_letter buried a held message"
    assert peer.lease([Q], 10, 0) == [], "a stale retry_later published a duplicate"
    assert stats_of(peer) == QueueStats(leased=1)
    peer.ack([current])
    assert stats_of(peer) == QueueStats()


# -- bounded redelivery and dead letters -------------------------------------------------
def test_max_deliveries_dead_letters_worker_lost_then_replay_resets_count(
    broker: Broker,
) -> None:
    sent = message(b"poison")
    broker.publish([sent])
    got = lease_one(broker)
    assert got.delivery_count == 1
    for count in range(2, MAX_DELIVERIES + 1):
        got = redelivered(broker)
        assert got.delivery_count == count

    def buried() -> list[DeadLetter]:
        broker.sweep()
        assert broker.lease([Q], 10, 0) == [], "redelivered beyond max_deliveries"
        return broker.dead_letters(queue=Q)

    [dead] = wait_until(buried, REDELIVERY_WAIT, "dead letter after max_deliveries")
    assert (dead.id, dead.queue, dead.body, dead.reason, dead.delivery_count) == (
        sent.id,
        Q,
        b"poison",
        "worker_lost",
        MAX_DELIVERIES,
    )
    broker.sweep()
    assert broker.lease([Q], 10, 0) == []
    assert stats_of(broker) == QueueStats(dead=1)

    assert broker.replay_dead([sent.id]) == 1
    again = lease_one(broker)
    assert (again.id, again.body, again.delivery_count) == (sent.id, b"poison", 1)


def test_dead_letter_keeps_reason_detail_and_raw_body(broker: Broker) -> None:
    raw = b"\xff\xfe\x00\x80not utf-8\xc3\x28\xed\xa0\x80"
    first = message(raw)
    second = message(b"{}", queue="other")
    broker.publish([first, second])
    d1 = lease_one(broker)
    d2 = lease_one(broker, ["other"])
    before = broker.time()
    broker.dead_letter(d1, DeadLetterReason.UNDECODABLE, "invalid start byte at 0 — détail ✓\n2")
    broker.dead_letter(d2, "custom_reason")
    after = broker.time()

    one, two = broker.dead_letters()
    assert one == DeadLetter(
        first.id,
        Q,
        raw,
        "undecodable",
        "invalid start byte at 0 — détail ✓\n2",
        one.dead_at,
        1,
    )
    assert type(one.body) is bytes
    assert (two.id, two.queue, two.body, two.reason, two.detail) == (
        second.id,
        "other",
        b"{}",
        "custom_reason",
        "",
    )
    for dead in (one, two):
        assert before - EARLY_SLACK <= dead.dead_at <= after + EARLY_SLACK
    assert broker.lease([Q, "other"], 10, 0) == []
    assert stats_of(broker) == QueueStats(dead=1)
    assert stats_of(broker, "other") == QueueStats(dead=1)


def bury(broker: Broker, queues: list[str]) -> list[Message]:
    """Dead-letter one message per entry of ``queues``, in that order."""
    out = []
    for queue in queues:
        sent = message(f"dead in {queue}".encode(), queue=queue)
        broker.publish([sent])
        broker.dead_letter(lease_one(broker, [queue]), DeadLetterReason.REJECTED, sent.id)
        out.append(sent)
    return out


def test_dead_letters_oldest_first_with_limit_and_queue_filter(broker: Broker) -> None:
    a1, b1, a2, b2, a3 = bury(broker, ["a", "b", "a", "b", "a"])
    everything = broker.dead_letters()
    assert [d.id for d in everything] == [a1.id, b1.id, a2.id, b2.id, a3.id]
    assert [d.dead_at for d in everything] == sorted(d.dead_at for d in everything)
    assert [d.detail for d in everything] == [d.id for d in everything]
    assert [d.id for d in broker.dead_letters(limit=2)] == [a1.id, b1.id]
    assert [d.id for d in broker.dead_letters(queue="a")] == [a1.id, a2.id, a3.id]
    assert [d.id for d in broker.dead_letters(limit=2, queue="b")] == [b1.id, b2.id]
    assert [d.id for d in broker.dead_letters(limit=1, queue="a")] == [a1.id]
    assert broker.dead_letters(queue="nope") == []


def test_replay_dead_by_ids_and_all(broker: Broker) -> None:
    a1, b1, a2 = bury(broker, ["a", "b", "a"])
    assert broker.replay_dead(["unknown"]) == 0
    assert broker.replay_dead([b1.id]) == 1
    assert [d.id for d in broker.dead_letters()] == [a1.id, a2.id]
    got = lease_one(broker, ["b"])
    assert (got.id, got.queue, got.body, got.delivery_count) == (b1.id, "b", b1.body, 1)
    assert broker.lease(["a"], 10, 0) == []

    assert broker.replay_dead() == 2
    assert broker.dead_letters() == []
    again = broker.lease(["a"], 10, 0)
    assert sorted(ids(again)) == sorted([a1.id, a2.id])
    assert {d.delivery_count for d in again} == {1}
    assert broker.replay_dead() == 0


def test_purge_dead_by_ids_and_all(broker: Broker) -> None:
    a1, b1, a2 = bury(broker, ["a", "b", "a"])
    assert broker.purge_dead(["unknown"]) == 0
    assert broker.purge_dead([a1.id]) == 1
    assert [d.id for d in broker.dead_letters()] == [b1.id, a2.id]
    assert broker.purge_dead() == 2
    assert broker.dead_letters() == []
    assert broker.purge_dead() == 0
    assert broker.lease(["a", "b"], 10, 0) == []
    assert broker.stats(["a", "b"]) == {"a": QueueStats(), "b": QueueStats()}


# -- retry_later -------------------------------------------------------------------------
def test_retry_later_acks_and_schedules_fresh_message(broker: Broker, broker_backend: str) -> None:
    sent = message(b"try 1", priority=3)
    broker.publish([sent])
    lease_one(broker)
    second = redelivered(broker)
    assert second.delivery_count == 2
    original_expiry = broker.time() + LEASE_TIMEOUT

    due = broker.time() + 0.5
    retry = Message(sent.id, Q, b"try 2", priority=3, eta=due)  # retries keep the task id
    broker.retry_later(second, retry)
    assert broker.lease([Q], 10, 0) == []
    assert stats_of(broker) == QueueStats(delayed=1)

    got = wait_until(lambda: broker.lease([Q], 1, 0.05), 5.0, "retry due")[0]
    assert broker.time() >= due - EARLY_SLACK, "retry served before its due time"
    assert (got.id, got.body, got.priority, got.delivery_count) == (sent.id, b"try 2", 3, 1)
    broker.ack([got])

    # the acked delivery never comes back, not even after its old lease would have run out
    wait_until(lambda: broker.time() > original_expiry + EARLY_SLACK, REDELIVERY_WAIT, "expiry")
    broker.sweep()
    assert broker.lease([Q], 10, 0) == []
    assert stats_of(broker) == QueueStats()


def test_retry_later_without_delay_is_ready_now(broker: Broker) -> None:
    sent = message()
    broker.publish([sent])
    held = lease_one(broker)
    broker.retry_later(held, Message(sent.id, Q, b"again"))
    got = lease_one(broker)
    assert (got.id, got.body, got.delivery_count) == (sent.id, b"again", 1)


def test_retry_later_many_settles_each_pair_and_skips_stale_receipts(
    broker: Broker, peer: Broker
) -> None:
    broker.publish([message(b"first")])
    stale = lease_one(broker)
    current = redelivered(peer)  # its lease expired: another receipt holds it now
    broker.publish([message(f"try {i}".encode()) for i in range(3)])
    held = broker.lease([Q], 3, 0)
    assert len(held) == 3
    due = broker.time() + 0.5
    retries = [
        (held[0], Message(held[0].id, Q, b"now", priority=7)),
        (held[1], Message(held[1].id, Q, b"later", eta=due)),
        (held[2], Message(held[2].id, Q, b"again")),
        (held[2], Message(held[2].id, Q, b"twice")),  # one receipt is retried once
        (stale, Message(stale.id, Q, b"stale")),  # no longer held: publishes nothing
    ]
    broker.retry_later_many(retries)
    broker.retry_later_many([])
    ready = broker.lease([Q], 10, 0)
    assert sorted((d.body, d.delivery_count) for d in ready) == [(b"again", 1), (b"now", 1)]
    assert stats_of(broker).delayed == 1
    later = wait_until(lambda: broker.lease([Q], 1, 0.05), 5.0, "the delayed retry")[0]
    assert broker.time() >= due - EARLY_SLACK, "retry served before its due time"
    assert (later.id, later.body) == (held[1].id, b"later")
    broker.ack([*ready, later])
    peer.ack([current])
    assert stats_of(broker) == QueueStats()


# -- revocation --------------------------------------------------------------------------
def test_revoke_with_ttl(broker: Broker, peer: Broker) -> None:
    revoked_at = time.monotonic()
    broker.revoke((i for i in ["a", "b"]), ttl=0.5)  # any iterable, consumed once
    broker.revoke(["long"], ttl=0.2)
    broker.revoke(["long"], ttl=60)  # revoking again renews the TTL
    assert broker.revoked(["a", "b", "c", "long"]) == {"a", "b", "long"}
    assert peer.revoked(i for i in ["b", "c"]) == {"b"}
    assert broker.revoked([]) == set()

    wait_until(lambda: not broker.revoked(["a", "b"]), 5.0, "revocation expiry")
    assert time.monotonic() - revoked_at >= 0.5 - EARLY_SLACK, "revocation expired early"
    assert broker.revoked(["a", "long"]) == {"long"}


# -- inspection and maintenance ----------------------------------------------------------
def test_stats_counts_ready_delayed_leased_dead(broker: Broker, broker_backend: str) -> None:
    broker.publish([message() for _ in range(4)])
    broker.publish([message(countdown=60), message(countdown=60)])
    broker.publish([message(queue="other")])
    one, _two = broker.lease([Q], 2, 0)
    broker.dead_letter(one, DeadLetterReason.REJECTED)

    expected = {
        Q: QueueStats(ready=2, delayed=2, leased=1, dead=1),
        "other": QueueStats(ready=1),
        "empty": QueueStats(),
    }
    assert broker.stats([Q, "other", "empty"]) == expected
    everything = broker.stats()
    assert everything[Q] == expected[Q]
    assert everything["other"] == expected["other"]


def test_purge_deletes_ready_and_delayed_only(broker: Broker, broker_backend: str) -> None:
    broker.publish([message()])
    broker.dead_letter(lease_one(broker), DeadLetterReason.REJECTED)
    broker.publish([message() for _ in range(4)])
    broker.publish([message(countdown=60), message(eta=broker.time() + 60)])
    broker.publish([message(queue="other"), message(queue="other")])
    held = lease_one(broker)

    if weaker(broker_backend, "purge_delayed"):  # the two delayed ones stay
        assert broker.purge([Q]) == 3
        assert stats_of(broker) == QueueStats(delayed=2, leased=1, dead=1)
        broker.ack([held])
        return
    assert broker.purge([Q]) == 5
    assert stats_of(broker) == QueueStats(leased=1, dead=1)
    assert stats_of(broker, "other") == QueueStats(ready=2)
    assert broker.lease([Q], 10, 0) == []
    broker.ack([held])
    assert stats_of(broker) == QueueStats(dead=1)
    assert broker.purge([Q]) == 0
    assert broker.purge(["nope"]) == 0


def test_time_is_close_to_wall_clock(broker: Broker) -> None:
    first = broker.time()
    assert isinstance(first, float)
    assert abs(first - time.time()) < 0.5
    assert broker.time() >= first - 0.01


# -- isolation, persistence, concurrency -------------------------------------------------
def test_key_prefix_isolates_brokers(broker: Broker, make_broker: BrokerFactory) -> None:
    other = make_broker(key_prefix=f"{broker.options.key_prefix}x")
    broker.publish([message(), message(countdown=60)])
    bury(broker, [Q])
    broker.revoke(["t"], 60)

    assert other.lease([Q], 10, 0) == []
    assert other.stats([Q]) == {Q: QueueStats()}
    assert other.dead_letters() == []
    assert other.revoked(["t"]) == set()


def test_state_survives_a_new_client(
    broker: Broker, broker_backend: str, make_broker: BrokerFactory
) -> None:
    if broker_backend == "memory":
        pytest.skip("memory:// state lives in one broker object by design")
    ready = message(b"ready")
    broker.publish([ready, message(countdown=60)])
    [dead] = bury(broker, ["dlq"])
    broker.revoke(["t"], 60)
    broker.close()

    fresh = make_broker()
    assert fresh.stats([Q, "dlq"]) == {
        Q: QueueStats(ready=1, delayed=1),
        "dlq": QueueStats(dead=1),
    }
    assert [d.id for d in fresh.dead_letters()] == [dead.id]
    assert fresh.revoked(["t"]) == {"t"}
    assert ids(fresh.lease([Q], 10, 0)) == [ready.id]


def test_concurrent_consumers_never_share_a_message_and_lose_none(
    broker: Broker, peer: Broker
) -> None:
    total = 300
    sent = [message(f"{n}".encode(), priority=n % 10) for n in range(total)]
    seen: list[Delivery] = []
    lock = threading.Lock()
    stop = threading.Event()

    def consume(client: Broker) -> None:
        while not stop.is_set():
            got = client.lease([Q], 7, 0.05)
            client.ack(got)
            with lock:
                seen.extend(got)

    def produce(chunk: list[Message]) -> None:
        for start_at in range(0, len(chunk), 10):
            (broker if start_at % 20 else peer).publish(chunk[start_at : start_at + 10])

    consumers = [start(consume, broker if n % 2 else peer) for n in range(8)]
    producers = [start(produce, sent[n::3]) for n in range(3)]
    for producer in producers:
        producer.outcome(20.0)
    wait_until(lambda: len(seen) >= total, 20.0, "all messages consumed")
    stop.set()
    for consumer in consumers:
        consumer.outcome(10.0)

    assert len(seen) == total, "a message was delivered twice"
    assert sorted(ids(seen)) == sorted(m.id for m in sent)
    assert {d.delivery_count for d in seen} == {1}
    assert broker.lease([Q], 10, 0) == []
    assert stats_of(broker) == QueueStats()
