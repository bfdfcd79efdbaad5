"""Upgrading from the key names without hash tags (``<p>:ready:<q>``, ``<p>:msg:<uid>``, ...):
a worker's first sweep moves queued, delayed, leased and dead messages, the counter and the
revocations to today's names, and nothing is lost."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis

from conveyor.brokers.base import BrokerOptions, QueueStats
from conveyor.brokers.redis import RedisBroker
from tests.helpers import redis_fixture
from tests.servers import RedisServer

pytestmark = pytest.mark.redis

server = redis_fixture(appendonly=False)
BAND = 10**14


@pytest.fixture
def admin(server: RedisServer) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(server.url) as client:
        yield client


def old_layout(admin: redis.Redis, p: str) -> None:
    """What Conveyor wrote before hash tags: two queues, a ready message of priority 9 and one
    of 0, a delayed one, one leased long ago (lease expired), one dead letter, a revocation."""
    admin.set(f"{p}:seq", 10)
    admin.sadd(f"{p}:queues", "default", "other")
    messages = {
        1: ("ready-0", "default", 0),
        2: ("ready-9", "default", 9),
        3: ("delayed", "default", 5),
        4: ("leased", "other", 5),
        5: ("dead", "other", 5),
    }
    for uid, (task_id, queue, priority) in messages.items():
        fields = {"id": task_id, "q": queue, "p": priority, "b": f"body-{task_id}"}
        admin.hset(f"{p}:msg:{uid}", mapping=fields)  # type: ignore[arg-type]
    admin.zadd(f"{p}:ready:default", {"1": 9 * BAND + 1, "2": 0 * BAND + 2})
    admin.zadd(f"{p}:delayed:default", {"3": 1})  # due long ago
    admin.hset(f"{p}:msg:4", "n", 1)
    admin.zadd(f"{p}:leased:other", {"4:1": 1})  # the lease ran out long ago
    admin.hset(f"{p}:msg:5", mapping={"n": 1, "r": "rejected", "d": "no", "at": "1.5"})
    admin.zadd(f"{p}:dead:other", {"5": 7})
    admin.rpush(f"{p}:wake:default", 1)
    admin.set(f"{p}:revoked:ready-0", 1, px=60_000)


def test_first_sweep_moves_everything_to_the_new_names(
    server: RedisServer, admin: redis.Redis
) -> None:
    p = f"m{uuid.uuid4().hex[:8]}"
    old_layout(admin, p)
    broker = RedisBroker(server.url, BrokerOptions(key_prefix=p, lease_timeout=30))
    try:
        assert broker.stats() == {}  # nothing under the new names yet
        assert broker.sweep() == 2  # the leased message back, the delayed one ready
        assert [k.decode() for k in admin.scan_iter(match=f"{p}:*")] == []
        assert broker.stats() == {
            "default": QueueStats(ready=3),
            "other": QueueStats(ready=1, dead=1),
        }
        got = broker.lease(["default"], 10, 0)
        assert [(d.id, d.revoked) for d in got] == [
            ("ready-9", False),
            ("delayed", False),  # priority 5
            ("ready-0", True),
        ]
        [again] = broker.lease(["other"], 10, 0)
        assert (again.id, again.delivery_count, again.body) == ("leased", 2, b"body-leased")
        [dead] = broker.dead_letters()
        assert (dead.id, dead.reason) == ("dead", "rejected")
        assert 0 < admin.pttl(broker.keys.revoked("ready-0")) <= 60_000
        # New uids continue after the old counter: no message hash is overwritten.
        assert int(admin.get(broker.keys.shared("seq")) or 0) >= 10
        broker.ack([*got, again])
        assert broker.sweep() == 0  # once
    finally:
        broker.close()
