"""Queues written by the layout before 2026-12 (one ``Q:published:<id>`` key per message, a
``q`` field in each message hash) keep working: messages published with that version's script
text (``redis_layout_2026_11/``) are served, listed and dead-lettered by today's broker; and
today's publish dedupe (``Q:pub:<slot>`` sets) keeps a publish idempotent by id."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from conveyor._redis_calls import Calls
from conveyor.brokers.base import PUBLISH_DEDUPE_WINDOW, BrokerOptions, Message
from conveyor.brokers.redis import RedisBroker
from tests import helpers
from tests.helpers import redis_fixture
from tests.servers import RedisServer

pytestmark = pytest.mark.redis

server = redis_fixture(appendonly=False)
OLD = Path(__file__).parent / "redis_layout_2026_11"
Q = "upgrade"


admin = helpers.redis_admin


@pytest.fixture
def broker(server: RedisServer) -> Iterator[RedisBroker]:
    b = RedisBroker(server.url, BrokerOptions(key_prefix=f"u{uuid.uuid4().hex[:8]}"))
    yield b
    b.close()


def old_publish(admin: redis.Redis, broker: RedisBroker, messages: list[Message]) -> int:
    """Publish as the version before 2026-12 did (its script, its arguments, dedupe on)."""
    source = "\n".join((OLD / f"{n}.lua").read_text("utf-8") for n in ("common", "ack_publish"))
    keys = broker.keys
    args = helpers.old_publish_args(broker, Q, messages)
    admin.sadd(keys.queues, Q)
    script = admin.register_script(source)
    return int(script(keys=[keys.seq(Q), keys.queue(Q), keys.queue(Q)], args=args))


def test_old_layout_messages_are_served_and_listed(admin: redis.Redis, broker: RedisBroker) -> None:
    low = Message(id="old-low", queue=Q, body=b"low", priority=0)
    high = Message(id="old-high", queue=Q, body=b"high", priority=9)
    later = Message(id="old-later", queue=Q, body=b"later", countdown=3600)
    assert old_publish(admin, broker, [low, high, later]) == 3
    base = broker.keys.queue(Q)
    assert admin.exists(f"{base}:published:old-low")  # the old layout, as written
    assert admin.hget(f"{base}:msg:{admin.zrange(f'{base}:ready', 0, 0)[0].decode()}", "q")

    # Today's broker publishes beside them; it no longer reads the old per-id keys (they
    # expire within the minute), only its own per-slot sets.
    broker.publish([Message(id="new", queue=Q, body=b"new", priority=9)])
    assert broker.stats([Q])[Q].ready == 3

    scheduled = broker.scheduled(queue=Q)
    assert [(s.id, s.queue, s.body) for s in scheduled] == [("old-later", Q, b"later")]

    leased = broker.lease([Q], 10, 0)
    assert [(d.id, d.queue, d.body, d.priority) for d in leased] == [
        ("old-high", Q, b"high", 9),
        ("new", Q, b"new", 9),
        ("old-low", Q, b"low", 0),
    ]
    assert all(d.delivery_count == 1 for d in leased)
    broker.dead_letter(leased[2], "rejected", "old one")
    broker.ack(leased[:2])
    [dead] = broker.dead_letters(queue=Q)
    assert (dead.id, dead.queue, dead.body, dead.reason) == ("old-low", Q, b"low", "rejected")
    counts = broker.priority_counts([Q])[Q]
    assert counts.dead is not None and counts.dead[0] == 1
    assert broker.stats([Q])[Q].delayed == 1


def test_publish_dedupe_keeps_ids_in_one_set_per_slot(
    admin: redis.Redis, broker: RedisBroker
) -> None:
    one = Message(id="a", queue=Q, body=b"1", priority=9)
    two = Message(id="b", queue=Q, body=b"2", countdown=3600)
    broker.publish([one, two, one])  # an id twice in one call is added once
    broker.publish([one, two])  # a retried publish whose reply was lost adds nothing
    stats = broker.stats([Q])[Q]
    assert (stats.ready, stats.delayed) == (1, 1)

    base = broker.keys.queue(Q)
    assert not list(admin.scan_iter(f"{base}:published:*"))
    [slot] = [k.decode() for k in admin.scan_iter(f"{base}:pub:*")]
    assert admin.smembers(slot) == {b"a", b"b"}
    window_ms = PUBLISH_DEDUPE_WINDOW * 1000
    assert window_ms < admin.pttl(slot) <= 2 * window_ms  # remembered a window at least

    # Today's messages carry no queue name; what reads them says the queue all the same.
    [uid] = admin.zrange(f"{base}:ready", 0, -1)
    assert admin.hget(f"{base}:msg:{uid.decode()}", "q") is None
    assert [(s.id, s.queue) for s in broker.scheduled(queue=Q)] == [("b", Q)]
    [delivery] = broker.lease([Q], 10, 0)
    assert (delivery.id, delivery.queue) == ("a", Q)
    broker.dead_letter(delivery, "rejected", "")
    assert [(d.id, d.queue) for d in broker.dead_letters(queue=Q)] == [("a", Q)]

    # The slot before the current one is consulted too: an id remembered there is skipped.
    slot_number = int(slot.rsplit(":", 1)[1])
    admin.rename(slot, f"{base}:pub:{slot_number - 1}")
    broker.publish([Message(id="a", queue=Q, body=b"again", priority=9)])
    assert broker.stats([Q])[Q].ready == 0
    # With no dedupe (a retry's publish is not deduped), the same id is added.
    broker.publish_with(Calls(), [Message(id="a", queue=Q, body=b"x")], dedupe=False)
    assert broker.stats([Q])[Q].ready == 1
