"""Queues written by the layout before the per-queue record hash (``Q:msg:<uid>`` holding a
whole message: id, priority, body) keep working beside today's messages (``Q:m`` values, a
``Q:msg:<uid>`` hash only for what changes): records written with that version's script text
(``redis_layout_2026_12/``) - queued, delayed, leased, dead-lettered - are leased, swept,
listed, replayed and purged by today's broker, mixed with today's in one queue."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from conveyor.brokers.base import BrokerOptions, Delivery, Message
from conveyor.brokers.redis import RedisBroker
from tests import helpers
from tests.helpers import redis_fixture
from tests.servers import RedisServer

pytestmark = pytest.mark.redis

server = redis_fixture(appendonly=False)
OLD = Path(__file__).parent / "redis_layout_2026_12"
Q = "mixed"
LEASE = 0.3


admin = helpers.redis_admin


@pytest.fixture
def broker(server: RedisServer) -> Iterator[RedisBroker]:
    options = BrokerOptions(
        key_prefix=f"r{uuid.uuid4().hex[:8]}", lease_timeout=LEASE, max_deliveries=5
    )
    b = RedisBroker(server.url, options)
    yield b
    b.close()


def old_call(admin: redis.Redis, broker: RedisBroker, name: str, args: list[object]) -> Any:
    """Run the old version's script ``name`` on Q (its text, its arguments)."""
    source = "\n".join((OLD / f"{n}.lua").read_text("utf-8") for n in ("common", name))
    keys = broker.keys
    extra = [keys.queue(Q)] if name == "ack_publish" else []
    return admin.register_script(source)(keys=[keys.seq(Q), keys.queue(Q), *extra], args=args)


def old_publish(admin: redis.Redis, broker: RedisBroker, messages: list[Message]) -> None:
    admin.sadd(broker.keys.queues, Q)
    args = helpers.old_publish_args(broker, Q, messages)
    assert old_call(admin, broker, "ack_publish", args) == len(messages)


def old_lease(admin: redis.Redis, broker: RedisBroker, limit: int) -> list[Delivery]:
    args = [limit, LEASE * 1000, 1000, "", Q, broker.keys.wake(Q)]
    reply = old_call(admin, broker, "lease", args)[1:]
    return [
        Delivery(
            reply[i + 1].decode(), Q, reply[i + 4], int(reply[i + 3]), reply[i].decode(),
            int(reply[i + 5]),
        )
        for i in range(0, len(reply), 7)
    ]  # fmt: skip


def message(name: str, priority: int = 5, **options: Any) -> Message:
    """A message whose body holds its id (as an envelope does) when its name says so."""
    body = f'{{"id":"{name}"}}' if name.startswith("in-body") else f"body of {name}"
    return Message(name, Q, body.encode(), priority, **options)


def expire_leases(broker: RedisBroker) -> None:
    until = broker.time() + LEASE + 0.05
    while broker.time() < until:
        time.sleep(0.05)


def test_old_records_beside_new_ones_in_one_queue(admin: redis.Redis, broker: RedisBroker) -> None:
    base = broker.keys.queue(Q)
    old_publish(
        admin,
        broker,
        [
            message("old-acked", 9),
            message("old-lost", 9),
            message("old-dead", 9),
            message("old-ready", 1),
            message("old-later", countdown=3600),
            message("old-due", 2, countdown=0.1),
            message("old-cancelled", countdown=3600),
        ],
    )
    # The old layout, as written: whole messages in their hashes, no Q:m.
    assert not admin.exists(f"{base}:m")
    acked, lost, dead = old_lease(admin, broker, 3)
    assert [d.id for d in (acked, lost, dead)] == ["old-acked", "old-lost", "old-dead"]
    assert old_call(admin, broker, "dead_letter", [dead.receipt, "rejected", "old no"]) == 1

    broker.publish(
        [
            message("new-ready", 1),
            message("in-body-ready", 1),
            message("in-body-later", 3, countdown=3600),
            message("new-cancelled", countdown=3600),
        ]
    )
    assert admin.hlen(f"{base}:m") == 4
    packed = admin.hget(f"{base}:m", admin.zrange(f"{base}:ready", -1, -1)[0])
    assert packed == b'1 13:8 {"id":"in-body-ready"}'  # the id written once

    # Acked by today's broker: the old hash goes.
    broker.ack([acked])
    assert not admin.exists(f"{base}:msg:{acked.receipt.split(':')[0]}")

    scheduled = broker.scheduled(queue=Q)
    assert {(s.id, s.body) for s in scheduled} == {
        (m.id, m.body)
        for m in [
            message("old-later"),
            message("old-due"),
            message("old-cancelled"),
            message("in-body-later"),
            message("new-cancelled"),
        ]
    }
    assert broker.cancel_scheduled(["old-cancelled", "new-cancelled"]) == 2
    assert broker.run_scheduled(["in-body-later"]) == 1

    # The old lease expires: the sweep puts it back at its place, its count kept.
    expire_leases(broker)
    assert broker.sweep() >= 1
    oldest = broker.oldest_ready([Q])[Q]  # the first of each priority: of both layouts
    firsts = ("old-lost", "in-body-later", "old-due", "old-ready")
    assert oldest == [message(n).body for n in firsts]

    got = broker.lease([Q], 10, 0)
    assert [(d.id, d.priority, d.delivery_count, d.body) for d in got] == [
        ("old-lost", 9, 2, message("old-lost").body),
        ("in-body-later", 3, 1, message("in-body-later").body),
        ("old-due", 2, 1, message("old-due").body),
        ("old-ready", 1, 1, message("old-ready").body),
        ("new-ready", 1, 1, message("new-ready").body),
        ("in-body-ready", 1, 1, message("in-body-ready").body),
    ]
    by_id = {d.id: d for d in got}
    broker.dead_letter(by_id["in-body-ready"], "rejected", "new no")
    broker.release([by_id["old-ready"]])
    broker.ack([d for d in got if d.id not in {"in-body-ready", "old-ready"}])
    # What is left: old-ready (released, ready), old-later (delayed), two dead letters.
    letters = {(d.id, d.body, d.reason, d.detail) for d in broker.dead_letters(queue=Q)}
    assert letters == {
        ("old-dead", message("old-dead").body, "rejected", "old no"),
        ("in-body-ready", message("in-body-ready").body, "rejected", "new no"),
    }
    counts = broker.priority_counts([Q])[Q]
    assert counts.dead is not None and (counts.dead[9], counts.dead[1]) == (1, 1)

    assert broker.replay_dead(["old-dead", "in-body-ready"]) == 2
    again = broker.lease([Q], 10, 0)
    assert [(d.id, d.delivery_count) for d in again] == [
        ("old-dead", 1),
        ("old-ready", 1),
        ("in-body-ready", 1),
    ]
    broker.dead_letter_many([(d, "rejected", "again") for d in again])
    assert broker.purge_dead() == 3
    assert broker.purge([Q]) == 1  # old-later
    stats = broker.stats([Q])[Q]
    assert (stats.ready, stats.delayed, stats.leased, stats.dead) == (0, 0, 0, 0)
    # Nothing of any message is left behind.
    assert not list(admin.scan_iter(f"{base}:msg:*"))
    assert not admin.exists(f"{base}:m")


def test_a_purge_and_a_sweep_record_departures_of_both_layouts(
    admin: redis.Redis, broker: RedisBroker
) -> None:
    old_publish(admin, broker, [message("old-one"), message("old-two")])
    broker.publish([message("in-body-new"), message("new")])
    assert broker.purge([Q]) == 4
    departed = {(d.id, d.body, d.reason) for d in broker.take_departures()}
    names = ("old-one", "old-two", "in-body-new", "new")
    assert departed == {(name, message(name).body, "purged") for name in names}

    old_publish(admin, broker, [message("old-lost")])
    broker.publish([message("in-body-lost")])
    for _ in range(5):  # max_deliveries: the fifth expiry dead-letters each
        assert len(broker.lease([Q], 10, 0)) == 2
        expire_leases(broker)
        broker.sweep()
    lost = {(d.id, d.body, d.reason) for d in broker.take_departures()}
    assert lost == {(n, message(n).body, "worker_lost") for n in ("old-lost", "in-body-lost")}
    assert {d.id for d in broker.dead_letters(queue=Q)} == {"old-lost", "in-body-lost"}
