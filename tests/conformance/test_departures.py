"""Departures (``Broker.take_departures`` / ``forget_departures``): what left a broker without
a worker settling it - dead-lettered by ``sweep()`` or deleted by ``purge()`` - is recorded
in the same step, for a worker's bookkeeping (unique keys, batches); every broker."""

from __future__ import annotations

from conveyor.brokers.base import PURGED, Broker, DeadLetter, DeadLetterReason, Departure

from .support import MAX_DELIVERIES, wait_until, weaker
from .test_broker import REDELIVERY_WAIT, Q, lease_one, message, redelivered


def all_departures(broker: Broker) -> list[Departure]:
    taken: list[Departure] = []
    while got := broker.take_departures(100):
        taken += got
    return taken


def test_sweep_dead_letter_is_a_departure_taken_once_until_forgotten(
    broker: Broker, peer: Broker
) -> None:
    sent = message(b"\xffpoison")
    broker.publish([sent])
    lease_one(broker)
    for _ in range(2, MAX_DELIVERIES + 1):
        redelivered(broker)

    def buried() -> list[DeadLetter]:
        broker.sweep()
        return broker.dead_letters(queue=Q)

    wait_until(buried, REDELIVERY_WAIT, "dead letter after max_deliveries")
    [departure] = broker.take_departures(10)
    assert (departure.id, departure.queue, departure.body, departure.reason) == (
        sent.id,
        Q,
        b"\xffpoison",
        DeadLetterReason.WORKER_LOST,
    )
    assert broker.take_departures(10) == [], "a claimed departure was taken twice"
    assert peer.take_departures(10) == [], "another worker took a claimed departure"
    broker.forget_departures([departure])
    broker.forget_departures([departure])  # forgetting again changes nothing
    assert broker.take_departures(10) == []
    assert [d.id for d in broker.dead_letters(queue=Q)] == [sent.id], "the dead letter stays"


def test_a_workers_own_dead_letter_is_not_a_departure(broker: Broker) -> None:
    broker.publish([message()])
    broker.dead_letter(lease_one(broker), DeadLetterReason.WORKER_LOST, "its hooks ran")
    assert broker.take_departures(10) == []


def test_purge_records_each_removed_message(broker: Broker, broker_backend: str) -> None:
    ready = [message(f"r{i}".encode()) for i in range(3)]
    broker.publish(ready)
    delayed = message(b"later", countdown=60)
    broker.publish([delayed])
    broker.publish([message(queue="other")])
    held = lease_one(broker)
    purged = broker.purge([Q])

    taken = all_departures(broker)
    assert len(taken) == purged
    assert {d.reason for d in taken} == {PURGED}
    assert {d.queue for d in taken} == {Q}
    expected = {m.id: m.body for m in ready if m.id != held.id}
    if not weaker(broker_backend, "purge_delayed"):
        expected[delayed.id] = b"later"
    assert {d.id: d.body for d in taken} == expected
    broker.forget_departures(taken)
    assert broker.take_departures(10) == []
    broker.ack([held])
