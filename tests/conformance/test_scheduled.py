"""Delayed messages for the dashboard (``scheduled``, ``run_scheduled``, ``cancel_scheduled``)
and counts per state and priority, against every broker. RabbitMQ cannot browse its shared TTL
delay queues: it lists its delayed messages without their bodies (from its markers), cancels
by revocation (the message is dropped, revoked, when it falls due), runs one early by
publishing a copy and dropping the TTL copy when it arrives (not within a margin of its due
time), and cannot split its ready messages by priority; that is what it is
held to (brokers/amqp/scheduled.py, brokers/amqp/counts.py)."""

from __future__ import annotations

import pytest

from conveyor.brokers.amqp import run_now
from conveyor.brokers.base import STATES, Broker, DeadLetterReason, Message, PriorityCounts

from .support import new_id, weaker

Q = "default"
OTHER = "other"


def delayed(broker: Broker, countdown: float, queue: str = Q, priority: int = 5) -> Message:
    message = Message(new_id(), queue, f"body-{countdown}".encode(), priority, countdown=countdown)
    broker.publish([message])
    return message


def test_scheduled_lists_soonest_first_and_filters_by_queue(
    broker: Broker, broker_backend: str
) -> None:
    later = delayed(broker, 600)
    sooner = delayed(broker, 300, priority=7)
    other = delayed(broker, 400, queue=OTHER)
    broker.publish([Message(new_id(), Q, b"ready now")])
    now = broker.time()
    listed = broker.scheduled()
    assert [s.id for s in listed] == [sooner.id, other.id, later.id]
    first = listed[0]
    body = b"" if weaker(broker_backend, "scheduled") else sooner.body  # RabbitMQ holds it
    assert (first.queue, first.body, first.priority) == (Q, body, 7)
    assert now + 295 < first.due < now + 305
    assert [s.id for s in broker.scheduled(queue=OTHER)] == [other.id]
    assert [s.id for s in broker.scheduled(limit=1)] == [sooner.id]
    assert broker.scheduled(limit=0) == []


def test_run_scheduled_makes_them_ready_behind_the_queue(
    broker: Broker, broker_backend: str
) -> None:
    waiting = delayed(broker, 600)
    kept = delayed(broker, 600)
    queued = Message(new_id(), Q, b"queued first")
    broker.publish([queued])
    assert broker.run_scheduled([waiting.id, "no-such-id"]) == 1
    assert broker.run_scheduled([waiting.id]) == 0  # ready now: no longer delayed
    got = broker.lease([Q], 10, 0)
    assert [d.id for d in got] == [queued.id, waiting.id]
    assert got[1].body == waiting.body and got[1].delivery_count == 1
    assert [s.id for s in broker.scheduled()] == [kept.id]
    assert broker.stats([Q])[Q].delayed == 1


def test_a_message_run_now_runs_once_and_its_retry_runs(
    broker: Broker, broker_backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run now, then the task fails and is retried under the same id: the retry runs, and
    the message never runs a second time when it falls due (RabbitMQ: its TTL copy arrives
    and is dropped as superseded)."""
    monkeypatch.setattr(run_now, "MARGIN", 0.3)  # RabbitMQ leaves messages due sooner alone
    soon = delayed(broker, 1.2)
    assert broker.run_scheduled([soon.id]) == 1
    (got,) = broker.lease([Q], 5, 5.0)
    assert (got.id, got.body) == (soon.id, soon.body)
    broker.retry_later(got, Message(soon.id, Q, b"retry", 5, countdown=0.2))
    (retry,) = broker.lease([Q], 5, 5.0)
    assert (retry.id, retry.body) == (soon.id, b"retry")
    broker.ack([retry])
    assert broker.lease([Q], 5, 1.5) == []  # past the first due time: nothing more
    if weaker(broker_backend, "scheduled"):
        assert broker.kv.get_value(f"{run_now.SUPERSEDED}{soon.id}") is None  # dropped


def test_run_now_leaves_a_message_due_within_the_margin_on_rabbitmq(
    broker: Broker, broker_backend: str
) -> None:
    if not weaker(broker_backend, "scheduled"):
        pytest.skip("RabbitMQ's margin (brokers/amqp/run_now.py)")
    soon = delayed(broker, run_now.MARGIN / 2)
    assert broker.run_scheduled([soon.id]) == 0
    (got,) = broker.lease([Q], 5, run_now.MARGIN)  # on time, once
    assert got.id == soon.id and got.delivery_count == 1


def test_cancel_scheduled_deletes_only_delayed_ones(broker: Broker, broker_backend: str) -> None:
    doomed = delayed(broker, 600)
    kept = delayed(broker, 600, queue=OTHER)
    ready = Message(new_id(), Q, b"ready")
    broker.publish([ready])
    assert broker.cancel_scheduled([doomed.id, ready.id]) == 1
    assert broker.cancel_scheduled([]) == 0
    assert [s.id for s in broker.scheduled()] == [kept.id]
    assert [d.id for d in broker.lease([Q], 10, 0)] == [ready.id]
    assert broker.stats([Q])[Q].delayed == 0


def test_a_cancelled_message_never_runs(broker: Broker, broker_backend: str) -> None:
    doomed = delayed(broker, 0.3)
    assert broker.cancel_scheduled([doomed.id]) == 1
    if weaker(broker_backend, "scheduled"):
        # Delivered when due, flagged revoked: the worker drops it.
        (got,) = broker.lease([Q], 1, 5.0)
        assert got.id == doomed.id and got.revoked
        broker.ack([got])
    else:
        assert broker.lease([Q], 1, 1.0) == []  # past its due time: deleted


def _split(counts: PriorityCounts) -> dict[str, dict[int, int] | None]:
    return {state: getattr(counts, state) for state in STATES}


def test_priority_counts(broker: Broker, broker_backend: str) -> None:
    broker.publish([Message(new_id(), Q, b"doomed", 4)])
    (doomed,) = broker.lease([Q], 1, 5.0)
    broker.dead_letter(doomed, DeadLetterReason.REJECTED, "no")
    broker.publish(
        [Message(new_id(), Q, b"x", p) for p in (9, 9, 5, 0)] + [Message(new_id(), OTHER, b"y", 3)]
    )
    (running,) = broker.lease([Q], 1, 5.0)
    assert running.priority == 9
    delayed(broker, 600, priority=1)
    delayed(broker, 600, priority=7)

    counts = broker.priority_counts([Q, OTHER, "empty", Q])
    assert list(counts) == [Q, OTHER, "empty"]
    ready: dict[int, int] | None = {9: 1, 5: 1, 0: 1}
    if weaker(broker_backend, "scheduled"):
        ready = None  # RabbitMQ reports one ready count per queue
    assert _split(counts[Q]) == {
        "ready": ready,
        "delayed": {1: 1, 7: 1},
        "leased": {9: 1},
        "dead": {4: 1},
    }
    assert _split(counts[OTHER]) == {
        "ready": None if ready is None else {3: 1},
        "delayed": {},
        "leased": {},
        "dead": {},
    }
    assert _split(counts["empty"]) == {
        "ready": None if ready is None else {},
        "delayed": {},
        "leased": {},
        "dead": {},
    }
    # the split adds up to stats()
    stats = broker.stats([Q])[Q]
    for state, split in _split(counts[Q]).items():
        if split is not None:
            assert sum(split.values()) == getattr(stats, state), state
    # no names: every known queue, as stats()
    every = broker.priority_counts()
    assert set(every) == set(broker.stats())
    assert {q: _split(every[q]) for q in (Q, OTHER)} == {q: _split(counts[q]) for q in (Q, OTHER)}
