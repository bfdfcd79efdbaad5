"""The Redis broker's ingress list (``lua/common.lua``): a publish of a few messages ready now
is one RPUSH, and the first script of any queue after it queues them. Nothing a reader sees
changes: FIFO across queues and publish paths, exact priorities, the publish dedupe, counts;
producers keep the list short; an entry no script can use is never lost and never stops a
lease (a malformed value is dead-lettered, an entry naming no queue is set aside)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conveyor import Conveyor
from conveyor.brokers.base import BrokerOptions, Message
from conveyor.brokers.redis import RedisBroker, publish
from conveyor.doctor import Level, diagnose, startup_warnings
from conveyor.exceptions import BrokerError
from tests import helpers
from tests.helpers import redis_fixture
from tests.servers import RedisServer

pytestmark = pytest.mark.redis

server = redis_fixture(appendonly=False)
admin = helpers.redis_admin


@pytest.fixture
def broker(server: RedisServer) -> Iterator[RedisBroker]:
    options = BrokerOptions(lease_timeout=30, key_prefix=f"t{uuid.uuid4().hex[:10]}")
    broker = RedisBroker(server.url, options)
    yield broker
    broker.close()


def msg(queue: str = "a", priority: int = 0, message_id: str | None = None) -> Message:
    return Message(message_id or uuid.uuid4().hex, queue, b'{"x":1}', priority)


def leased_ids(broker: RedisBroker, queues: list[str], limit: int = 1000) -> list[str]:
    deliveries = broker.lease(queues, limit, 0)
    broker.ack(deliveries)
    return [d.id for d in deliveries]


def test_a_small_publish_is_one_entry_until_the_next_script(
    broker: RedisBroker, admin: redis.Redis
) -> None:
    message = msg()
    broker.publish([message])
    assert admin.llen(broker.keys.ingress) == 1
    assert admin.hlen(broker.keys.queue_key("a", "m")) == 0
    assert broker.stats(["a"])["a"].ready == 1  # counted, and queued by the reading
    assert admin.llen(broker.keys.ingress) == 0
    assert leased_ids(broker, ["a"]) == [message.id]


def test_fifo_across_queues_and_both_publish_paths(broker: RedisBroker) -> None:
    order: list[Message] = []
    for queue in ["a", "b", "a"]:  # ingress
        order.append(msg(queue))
        broker.publish(order[-1:])
    bulk = [msg("b") for _ in range(publish.INGRESS_MAX + 4)]  # ack_publish.lua
    broker.publish(bulk)
    order += bulk
    order.append(msg("a"))
    broker.publish(order[-1:])
    assert leased_ids(broker, ["a", "b"]) == [m.id for m in order]


def test_priorities_are_exact_over_both_paths(broker: RedisBroker) -> None:
    singles = [msg(priority=p) for p in (3, 9, 0, 5)]
    for m in singles:
        broker.publish([m])
    bulk = [msg(priority=p) for p in (5, 9, 1) * 7]
    broker.publish(bulk)
    everything = singles + bulk
    expected = sorted(everything, key=lambda m: -m.priority)  # stable: FIFO per priority
    assert leased_ids(broker, ["a"]) == [m.id for m in expected]


def test_a_publish_retried_after_a_lost_reply_queues_once(broker: RedisBroker) -> None:
    message = msg()
    broker.publish([message])
    broker.publish([message])  # the retry: a second entry
    broker.publish([message, msg("a", message_id=message.id)])  # and twice in one push
    assert leased_ids(broker, ["a"]) == [message.id]
    # Across the two paths: a batch that repeats an id queued through the ingress.
    again = [msg() for _ in range(publish.INGRESS_MAX + 1)]
    broker.publish([again[0]])
    broker.publish(again)
    assert leased_ids(broker, ["a"]) == [m.id for m in again]


def test_producers_keep_the_list_short(
    broker: RedisBroker, admin: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(publish, "INGRESS_LIMIT", 5)
    sent = [msg() for _ in range(5)]
    for m in sent:
        broker.publish([m])
    assert admin.llen(broker.keys.ingress) == 5
    sent.append(msg())
    broker.publish(sent[-1:])  # found 6 > 5: queued them all
    assert admin.llen(broker.keys.ingress) == 0
    assert admin.zcard(broker.keys.queue_key("a", "ready")) == 6
    assert leased_ids(broker, ["a"]) == [m.id for m in sent]


def test_a_publish_stands_when_queueing_the_list_after_it_fails(
    broker: RedisBroker, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(publish, "INGRESS_LIMIT", 0)

    def unreachable() -> None:
        raise BrokerError("connection lost")

    monkeypatch.setattr(broker, "absorb_ingress", unreachable)
    sent = msg()
    broker.publish([sent])  # published: only the queueing it triggered failed
    assert "could not queue the ingress list: connection lost" in caplog.text
    assert leased_ids(broker, ["a"]) == [sent.id]  # the next script queued it


def test_the_queueing_leaves_one_wake_up_token(broker: RedisBroker, admin: redis.Redis) -> None:
    for _ in range(5):
        broker.publish([msg()])  # a token each: keeping one would cost a command more
    assert admin.llen(broker.keys.wake("a")) == 5
    broker.stats(["a"])  # any script queues the entries and the tokens become one
    assert admin.llen(broker.keys.wake("a")) == 1
    assert len(leased_ids(broker, ["a"])) == 5


def test_delays_and_big_batches_skip_the_list(broker: RedisBroker, admin: redis.Redis) -> None:
    broker.publish([Message("d", "a", b"{}", countdown=60)])
    broker.publish([msg() for _ in range(publish.INGRESS_MAX + 1)])
    assert admin.llen(broker.keys.ingress) == 0


def test_entries_no_script_can_use_are_set_aside_or_dead_lettered(
    broker: RedisBroker, admin: redis.Redis
) -> None:
    wake = broker.keys.wake("a").encode()
    no_queue = [b"", b"garbage", b"60000 999 " + wake, b"60000 3 abc" + b"9 1 x{}"]
    no_queue.append(b"60000 %d %s" % (len(wake) - 2, wake[:-2]) + b"9 1 x{}")  # no queue name
    other = b"{elsewhere}:wake:a"  # another prefix's queue: keys this one does not own
    no_queue.append(b"60000 %d %s" % (len(other), other) + b"9 1 x{}")
    admin.rpush(broker.keys.ingress, *no_queue)
    header = b"60000 %d %s" % (len(wake), wake)
    # A priority that is not one, and twice a value of no shape (no id: never deduplicated).
    admin.rpush(broker.keys.ingress, header + b"p 8 " + b"z" * 8, header + b"?", header + b"?")
    good = msg(priority=4)
    broker.publish([good])
    assert leased_ids(broker, ["a"]) == [good.id]
    assert admin.lrange(broker.keys.unroutable, 0, -1) == no_queue
    assert broker.unroutable() == len(no_queue)
    dead = broker.dead_letters(10, "a")
    assert sorted((d.id, d.reason) for d in dead) == [
        ("", "malformed"),
        ("", "malformed"),
        ("z" * 8, "malformed"),
    ], dead


def test_a_list_key_of_another_type_fails_small_publishes_not_the_workers(
    broker: RedisBroker, admin: redis.Redis
) -> None:
    queued = msg()
    broker.publish([queued])
    broker.absorb_ingress()
    admin.set(broker.keys.ingress, "not a list")
    with pytest.raises(BrokerError, match="WRONGTYPE"):
        broker.publish([msg()])
    assert leased_ids(broker, ["a"]) == [queued.id]  # every script still runs
    admin.delete(broker.keys.ingress)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=40),
            st.tuples(st.integers(0, 10**6), st.binary(max_size=30)),
        ),
        max_size=5,
    )
)
def test_any_entry_leaves_good_messages_leased_once(
    broker: RedisBroker, admin: redis.Redis, entries: list[bytes | tuple[int, bytes]]
) -> None:
    wake = broker.keys.wake("a").encode()
    raw = [
        e if isinstance(e, bytes) else b"%d %d %s%s" % (e[0], len(wake), wake, e[1])
        for e in entries
    ]
    before = msg(priority=2)
    broker.publish([before])
    if raw:
        admin.rpush(broker.keys.ingress, *raw)
    after = msg(priority=2)
    broker.publish([after])
    got: list[str] = []
    for _ in range(len(raw) + 2):  # each malformed entry costs a lease at most one pick
        got += leased_ids(broker, ["a"])
    good = [i for i in got if i in {before.id, after.id}]
    assert good == [before.id, after.id]
    assert admin.llen(broker.keys.ingress) == 0
    stats = broker.stats(["a"])["a"]
    assert stats.ready == stats.leased == 0
    broker.purge_dead([d.id for d in broker.dead_letters(100, "a")])


def test_the_doctor_and_the_worker_start_report_entries_set_aside(
    server: RedisServer, admin: redis.Redis
) -> None:
    prefix = f"t{uuid.uuid4().hex[:10]}"
    app = Conveyor("t", broker=server.url, broker_transport_options={"key_prefix": prefix})
    broker = app.broker
    assert isinstance(broker, RedisBroker)
    [clean] = [f for f in diagnose(app) if f.check == "broker: redis ingress"]
    assert clean.level is Level.OK
    admin.rpush(broker.keys.ingress, b"garbage")
    broker.stats(["a"])  # a script ran: set aside
    [found] = [f for f in startup_warnings(app) if f.check == "broker: redis ingress"]
    assert found.level is Level.WARNING
    assert "1 entries" in found.message and broker.keys.unroutable in found.fix
