"""The Redis broker's per-priority counts of delayed, leased and dead messages (``Q:tally``,
kept by the scripts that move messages: brokers/redis/counts.py) against the truth read
from the queue's sorted sets and message hashes, after seeded random sequences of every
transition: publish (ready and delayed), lease, ack, release, dead-letter, retry, leases of
a killed worker reclaimed by sweep (requeued, or dead-lettered at max_deliveries), replay,
purge, run now, cancel. Also a queue written by a version without the tally (no counts, no
marks, receipts without their priority) is recounted in small steps while it keeps
changing, and then counts exactly. On Redis and Redis Cluster."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import cast

import pytest
from msgspec.structs import replace
from redis import Redis

from conveyor.brokers.base import STATES, Broker, DeadLetterReason, Delivery, Message
from conveyor.brokers.redis import RedisBroker
from conveyor.brokers.redis import counts as redis_counts

from .support import new_id

Q = "tally"
OTHER = "tally-other"
Split = dict[str, dict[int, int] | None]


@pytest.fixture
def redis_broker(broker_backend: str, request: pytest.FixtureRequest) -> RedisBroker:
    if not broker_backend.startswith("redis"):  # before building the broker: skip at once
        pytest.skip("Q:tally is the Redis broker's (brokers/redis/counts.py)")
    return cast(RedisBroker, request.getfixturevalue("broker"))


def truth(broker: RedisBroker, queue: str) -> Split:
    """Each state's messages by the priority in their records (as the dashboard did before)."""
    client = cast(Redis, broker.client)
    broker.absorb_ingress()  # the raw keys, as every script sees them
    out: Split = {}
    for state in STATES:
        counts: dict[int, int] = {}
        for member in client.zrange(broker.keys.queue_key(queue, state), 0, -1):
            uid = member.decode().split(":")[0]
            priority = client.hget(broker.keys.queue_key(queue, f"msg:{uid}"), "p")
            packed = client.hget(broker.keys.queue_key(queue, "m"), uid)  # '<p> <length> ...'
            priority = priority or (packed and packed.split(b" ", 1)[0])
            assert priority is not None, f"{state} member {member!r} has no record"
            counts[int(priority)] = counts.get(int(priority), 0) + 1
        out[state] = counts
    return out


def split(broker: RedisBroker, queue: str) -> Split:
    counts = broker.priority_counts([queue])[queue]
    return {state: getattr(counts, state) for state in STATES}


class Driver:
    """Random transitions on Q (and retries to OTHER) by a worker and a killed worker."""

    def __init__(self, broker: RedisBroker, killed: Broker, seed: int) -> None:
        self.broker, self.killed = broker, killed
        self.rng = random.Random(seed)
        self.held: list[Delivery] = []

    def message(self, queue: str = Q) -> Message:
        rng = self.rng
        countdown = rng.choice([0.0, 0.0, 0.001, 0.02, 600.0])
        return Message(new_id(), queue, b"x", rng.randrange(10), countdown=countdown)

    def step(self) -> None:
        rng, broker, held = self.rng, self.broker, self.held
        moves: list[Callable[[], None]] = [
            lambda: broker.publish([self.message() for _ in range(rng.randint(1, 4))]),
            lambda: held.extend(broker.lease([Q], rng.randint(1, 3), 0.0)),
            lambda: self.killed.lease([Q], rng.randint(1, 2), 0.0),  # never acked: swept
            lambda: broker.ack(self.take(2)),
            lambda: broker.release(self.take(1)),
            lambda: broker.dead_letter_many(
                [(d, DeadLetterReason.REJECTED, "") for d in self.take(1)]
            ),
            lambda: [
                broker.retry_later(d, self.message(rng.choice([Q, OTHER]))) for d in self.take(1)
            ],
            lambda: broker.sweep(),
            lambda: broker.replay_dead(self.some_dead()),
            lambda: broker.purge_dead(self.some_dead()),
            lambda: broker.run_scheduled(self.some_scheduled()),
            lambda: broker.cancel_scheduled(self.some_scheduled()),
        ]
        weights = [6, 5, 2, 4, 2, 2, 2, 2, 1, 1, 1, 1]
        if rng.random() < 0.02:
            moves.append(lambda: broker.purge([Q]))
            weights.append(50)
        rng.choices(moves, weights)[0]()

    def take(self, most: int) -> list[Delivery]:
        taken = self.held[: self.rng.randint(0, most)]
        del self.held[: len(taken)]
        return taken

    def some_dead(self) -> list[str]:
        letters = self.broker.dead_letters(50, Q)
        return [d.id for d in letters if self.rng.random() < 0.5]

    def some_scheduled(self) -> list[str]:
        waiting = self.broker.scheduled(50, Q)
        return [s.id for s in waiting if self.rng.random() < 0.3]


@pytest.mark.parametrize("seed", [1, 2])
def test_tally_matches_the_truth_after_random_transitions(
    redis_broker: RedisBroker, make_broker: Callable[..., Broker], seed: int
) -> None:
    driver = Driver(redis_broker, make_broker(lease_timeout=0.0), seed)
    seen: set[str] = set()
    for n in range(300):
        driver.step()
        if n % 25 == 24:
            expected = truth(redis_broker, Q)
            assert split(redis_broker, Q) == expected, f"after step {n}"
            seen |= {state for state, counts in expected.items() if counts}
    redis_broker.sweep()
    assert split(redis_broker, Q) == truth(redis_broker, Q)
    assert split(redis_broker, OTHER) == truth(redis_broker, OTHER)
    assert seen == set(STATES)  # the checks saw every state non-empty: not vacuous


def forget_tally(broker: RedisBroker, driver: Driver, queue: str) -> None:
    """Make ``queue`` look written by a version without Q:tally: no counts, no marks, leases
    with '<uid>:<n>' receipts (the driver's held deliveries follow)."""
    client = cast(Redis, broker.client)
    client.delete(broker.keys.queue_key(queue, "tally"))
    leased = broker.keys.queue_key(queue, "leased")
    renamed: dict[str, str] = {}
    for member, deadline in client.zrange(leased, 0, -1, withscores=True):
        old = ":".join(member.decode().split(":")[:2])
        client.zrem(leased, member)
        client.zadd(leased, {old: deadline})
        renamed[member.decode()] = old
    for state in ("ready", "delayed", "dead"):
        for uid in client.zrange(broker.keys.queue_key(queue, state), 0, -1):
            client.hdel(broker.keys.queue_key(queue, f"msg:{uid.decode()}"), "c")
    for member in renamed.values():
        client.hdel(broker.keys.queue_key(queue, f"msg:{member.split(':')[0]}"), "c")
    driver.held = [replace(d, receipt=renamed.get(d.receipt, d.receipt)) for d in driver.held]


def test_a_queue_of_an_older_version_is_recounted_in_steps_while_it_changes(
    redis_broker: RedisBroker, make_broker: Callable[..., Broker], monkeypatch: pytest.MonkeyPatch
) -> None:
    driver = Driver(redis_broker, make_broker(lease_timeout=0.0), 3)
    for _ in range(150):
        driver.step()
    # Over 128 members a sorted set is a hash table, which ZSCAN walks in COUNT-sized steps.
    redis_broker.publish([Message(new_id(), Q, b"x", n % 10, countdown=600.0) for n in range(200)])
    held = redis_broker.lease([Q], 5, 0.0)
    driver.held += held
    forget_tally(redis_broker, driver, Q)
    assert any(d.receipt.count(":") == 1 for d in driver.held)
    # Two members per call, one call per request: the recount spans many requests.
    monkeypatch.setattr(redis_counts, "RECOUNT_STEP", 2)
    monkeypatch.setattr(redis_counts, "RECOUNT_BUDGET", 0.0)
    unsplit = split(redis_broker, Q)
    assert unsplit["ready"] is not None
    assert [unsplit[s] for s in ("delayed", "leased", "dead")] == [None, None, None]
    calls = 1
    while None in split(redis_broker, Q).values():
        calls += 1
        driver.step()
        assert calls < 2_000, "the recount never completes"
    assert calls > 20
    for n in range(100):
        driver.step()
        if n % 10 == 9:
            assert split(redis_broker, Q) == truth(redis_broker, Q), f"after step {n}"
    # The old leases are settled and counted out too.
    redis_broker.ack(driver.held)
    driver.held.clear()
    assert split(redis_broker, Q) == truth(redis_broker, Q)


def test_a_state_that_does_not_add_up_is_not_split(redis_broker: RedisBroker) -> None:
    """A delayed member whose hash is gone (not counted, cannot be): the page never guesses."""
    redis_broker.publish([Message(new_id(), Q, b"x", 3, countdown=600.0)])
    client = cast(Redis, redis_broker.client)
    client.zadd(redis_broker.keys.queue_key(Q, "delayed"), {"999999999": 1e15})
    assert split(redis_broker, Q)["delayed"] is None
    client.zrem(redis_broker.keys.queue_key(Q, "delayed"), "999999999")
    assert split(redis_broker, Q)["delayed"] == {3: 1}
