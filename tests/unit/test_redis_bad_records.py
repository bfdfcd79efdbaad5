"""RedisBroker with message hashes no script could use (written straight into Redis): each Lua
script checks what it will use before its first write, so such a message is dead-lettered as
``malformed`` - never half-moved, never lost - and nothing raises out of lease() or sweep()."""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from conveyor._redis_keys import RedisKeys
from conveyor.brokers.base import BrokerOptions, Message, QueueStats
from conveyor.brokers.redis import RedisBroker
from conveyor.brokers.redis.core import script_source
from conveyor.brokers.redis.publish import packed_value
from conveyor.exceptions import BrokerError
from tests import helpers
from tests.conftest import wait_until
from tests.helpers import redis_fixture
from tests.servers import RedisServer

pytestmark = pytest.mark.redis

Q = "default"
LEASE = 0.5

server = redis_fixture(appendonly=False)
admin = helpers.redis_admin


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def broker(server: RedisServer, prefix: str) -> Iterator[RedisBroker]:
    options = BrokerOptions(lease_timeout=LEASE, max_deliveries=3, key_prefix=prefix)
    broker = RedisBroker(server.url, options)
    yield broker
    broker.close()


def msg(body: bytes = b"x", **fields: Any) -> Message:
    return Message(uuid.uuid4().hex, Q, body, **fields)


def uid_of(admin: redis.Redis, prefix: str, message_id: str) -> str:
    """The uid of a message of today's layout (its ``Q:m`` value holds its id)."""
    absorb(admin, prefix)
    for uid, value in admin.hgetall(RedisKeys(prefix).queue_key(Q, "m")).items():
        _, length, rest = value.split(b" ", 2)
        size, _, position = length.partition(b":")  # the id in the body, or written before it
        start = int(position or 1) - 1
        if rest[start : start + int(size)] == message_id.encode():
            return str(uid.decode())
    raise AssertionError(f"no record for {message_id}")


def absorb(admin: redis.Redis, prefix: str) -> None:
    """Queue what small publishes left on the ingress list, as the next script would."""
    admin.eval(script_source("absorb"), 1, RedisKeys(prefix).shared("seq"))


def msg_key(prefix: str, uid: object) -> str:
    return RedisKeys(prefix).queue_key(Q, f"msg:{uid}")


def damage(admin: redis.Redis, prefix: str, message_id: str, field: str, value: str) -> None:
    """Give a message a bad field: ``p`` in its packed ``Q:m`` value, the others (what
    changes) in its hash."""
    uid = uid_of(admin, prefix, message_id)
    if field != "p":
        admin.hset(msg_key(prefix, uid), field, value)
        return
    packed_key = RedisKeys(prefix).queue_key(Q, "m")
    packed = admin.hget(packed_key, uid)
    assert packed is not None
    admin.hset(packed_key, uid, value.encode() + packed[packed.index(b" ") :])


def expire_leases(broker: RedisBroker) -> None:
    expired = broker.time() + LEASE + 0.05
    wait_until(lambda: broker.time() > expired, 5.0, "lease expiry")


def dead_reasons(broker: RedisBroker) -> dict[str, tuple[str, str]]:
    return {d.id: (d.reason, d.detail) for d in broker.dead_letters()}


BAD_FIELDS = [
    ("p", "abc", "priority 'abc' is not an integer 0-9"),
    ("p", "12", "priority '12' is not an integer 0-9"),
    ("p", "nan", "priority 'nan'"),
    ("n", "many", "lease count 'many' is not an integer"),
    ("u", "1.5", "release count '1.5' is not an integer"),
]


@pytest.mark.parametrize(("field", "value", "detail"), BAD_FIELDS)
def test_sweep_dead_letters_an_expired_message_with_a_bad_field(
    broker: RedisBroker, admin: redis.Redis, prefix: str, field: str, value: str, detail: str
) -> None:
    bad, good = msg(b"bad"), msg(b"good")
    broker.publish([bad, good])
    assert len(broker.lease([Q], 2, 0)) == 2
    damage(admin, prefix, bad.id, field, value)
    expire_leases(broker)
    assert broker.sweep() == 2
    [dead] = broker.dead_letters()
    assert (dead.id, dead.reason, dead.body) == (bad.id, "malformed", b"bad")
    assert detail in dead.detail
    assert broker.stats([Q])[Q] == QueueStats(ready=1, dead=1)
    assert [d.id for d in broker.lease([Q], 10, 0)] == [good.id]


@pytest.mark.parametrize(("field", "value", "detail"), BAD_FIELDS)
def test_lease_dead_letters_a_ready_message_with_a_bad_field(
    broker: RedisBroker, admin: redis.Redis, prefix: str, field: str, value: str, detail: str
) -> None:
    before, bad, after = msg(b"1"), msg(b"2"), msg(b"3")
    broker.publish([before, bad, after])
    damage(admin, prefix, bad.id, field, value)
    got = broker.lease([Q], 10, 0)
    assert [d.id for d in got] == [before.id, after.id]
    assert [(d.priority, d.delivery_count) for d in got] == [(5, 1), (5, 1)]
    [dead] = broker.dead_letters()
    assert (dead.id, dead.reason, dead.body) == (bad.id, "malformed", b"2")
    assert detail in dead.detail
    assert broker.stats([Q])[Q] == QueueStats(leased=2, dead=1)


def test_lease_over_several_queues_dead_letters_a_bad_message(
    broker: RedisBroker, admin: redis.Redis, prefix: str
) -> None:
    bad, good = msg(b"bad"), Message(uuid.uuid4().hex, "other", b"good")
    broker.publish([bad, good])
    damage(admin, prefix, bad.id, "p", "x")
    assert [d.id for d in broker.lease([Q, "other"], 10, 0)] == [good.id]
    assert dead_reasons(broker)[bad.id][0] == "malformed"


def test_a_message_without_a_body_is_dead_lettered(
    broker: RedisBroker, admin: redis.Redis, prefix: str
) -> None:
    bad = msg(b"gone")
    broker.publish([bad])
    packed_key = RedisKeys(prefix).queue_key(Q, "m")
    # The id's length running past the end of the value: no body after it.
    admin.hset(packed_key, uid_of(admin, prefix, bad.id), f"5 999 {bad.id}")
    assert broker.lease([Q], 10, 0) == []
    [dead] = broker.dead_letters()
    assert (dead.id, dead.reason, dead.body) == (bad.id, "malformed", b"")
    assert "no body" in dead.detail


def test_promotion_dead_letters_a_delayed_message_with_a_bad_priority(
    broker: RedisBroker, admin: redis.Redis, prefix: str
) -> None:
    bad, good = msg(b"bad", countdown=0.2), msg(b"good", countdown=0.2)
    broker.publish([bad, good])
    damage(admin, prefix, bad.id, "p", "abc")
    got = wait_until(lambda: broker.lease([Q], 10, 0), 5.0, "the delayed message")
    assert [d.id for d in got] == [good.id]
    assert dead_reasons(broker)[bad.id][0] == "malformed"
    assert broker.stats([Q])[Q] == QueueStats(leased=1, dead=1)


def test_release_dead_letters_a_message_corrupted_while_leased(
    broker: RedisBroker, admin: redis.Redis, prefix: str
) -> None:
    broker.publish([msg(b"a")])
    [held] = broker.lease([Q], 1, 0)
    damage(admin, prefix, held.id, "u", "x")
    broker.release([held])
    assert dead_reasons(broker)[held.id][0] == "malformed"
    assert broker.stats([Q])[Q] == QueueStats(dead=1)


def test_an_injected_hash_is_dead_lettered_by_the_sweep_never_lost(
    broker: RedisBroker, admin: redis.Redis, prefix: str
) -> None:
    """The fault injection of issue 13: a leased message whose priority is not a number. The
    old sweep removed its lease, then failed on the priority: the message vanished."""
    uid = admin.incr(RedisKeys(prefix).seq(Q))
    admin.hset(
        msg_key(prefix, uid), mapping={"id": "injected", "q": Q, "p": "abc", "b": "{}", "n": 1}
    )
    admin.zadd(RedisKeys(prefix).queue_key(Q, "leased"), {f"{uid}:1": 0})  # expired long ago
    admin.sadd(RedisKeys(prefix).queues, Q)
    assert broker.sweep() == 1
    [dead] = broker.dead_letters()
    assert (dead.id, dead.reason, dead.body) == ("injected", "malformed", b"{}")
    assert "priority 'abc'" in dead.detail
    # Replayed, its priority is repaired: it can be leased again.
    assert broker.replay_dead(["injected"]) == 1
    [again] = broker.lease([Q], 1, 0)
    assert (again.id, again.priority, again.body) == ("injected", 5, b"{}")


def test_dead_letters_list_tolerates_damaged_fields(
    broker: RedisBroker, admin: redis.Redis, prefix: str
) -> None:
    broker.publish([msg(b"a")])
    [held] = broker.lease([Q], 1, 0)
    broker.dead_letter(held, "rejected", "because")
    key = msg_key(prefix, uid_of(admin, prefix, held.id))
    admin.hset(key, mapping={"at": "yesterday", "n": "x"})
    admin.hdel(key, "d")
    [dead] = broker.dead_letters()
    assert (dead.id, dead.reason, dead.detail, dead.dead_at) == (held.id, "rejected", "", 0.0)


@pytest.mark.parametrize(
    "bad",
    [
        msg(countdown=math.nan),
        msg(countdown=math.inf),
        msg(eta=math.inf),
    ],
)
def test_publish_checks_every_message_before_writing_any(broker: RedisBroker, bad: Message) -> None:
    with pytest.raises(BrokerError, match="bad priority, countdown or eta"):
        broker.publish([msg(b"fine"), bad])
    assert broker.stats([Q])[Q] == QueueStats()


@pytest.mark.parametrize("value", [b"x 4:1 body", b"12 4:1 body", b"7", b""])
def test_a_plain_publish_checks_that_each_value_starts_with_its_priority(
    broker: RedisBroker, admin: redis.Redis, prefix: str, value: bytes
) -> None:
    # Messages ready now go as (id, value) pairs, the priority read from the value's first
    # digit: a value without one fails the whole call.
    keys = RedisKeys(prefix)
    script = admin.register_script(script_source("ack_publish"))
    fine = packed_value(3, b"fine", b"fine body")
    args = [Q, "", 0, "0", 0, 2, b"fine", fine, b"bad", value]
    with pytest.raises(redis.ResponseError, match="bad priority, countdown or eta for bad"):
        script(keys=[keys.seq(Q), keys.queue(Q), keys.queue(Q)], args=args)
    assert broker.stats([Q])[Q] == QueueStats()
    args[-1] = packed_value(9, b"bad", b"bad body")  # both fine: both added, 9 first
    assert script(keys=[keys.seq(Q), keys.queue(Q), keys.queue(Q)], args=args) == 2
    assert [(d.id, d.priority) for d in broker.lease([Q], 5, 0)] == [("bad", 9), ("fine", 3)]
