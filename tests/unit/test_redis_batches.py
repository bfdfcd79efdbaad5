"""Large batches on one Redis server. A publish of more than a chunk is streamed (``Stream``):
each chunk's script call is written as soon as it is built; it lands whole and in order,
survives a script cache flush, and a connection lost on the way sends everything again, added
once. A large lease keeps the queue's leases in a skiplist (cheap inserts)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis

from conveyor._redis_calls import Calls, Connections, Stream
from conveyor.brokers.base import BrokerOptions, Message
from conveyor.brokers.redis import CHUNK, RedisBroker
from conveyor.brokers.redis import publish as redis_publish
from tests import helpers
from tests.conftest import wait_until
from tests.helpers import redis_fixture
from tests.servers import RedisServer

pytestmark = pytest.mark.redis

server = redis_fixture(appendonly=False)
admin = helpers.redis_admin
Q = "streamed"


@pytest.fixture
def broker(server: RedisServer) -> Iterator[RedisBroker]:
    b = RedisBroker(server.url, BrokerOptions(key_prefix=f"s{uuid.uuid4().hex[:8]}"))
    yield b
    b.close()


def batch(count: int) -> list[Message]:
    return [Message(f"m{i}", Q, b"%d" % i) for i in range(count)]


def leased_ids(broker: RedisBroker, count: int) -> list[str]:
    return [d.id for d in broker.lease([Q], count + 10, 0)]


def test_a_streamed_publish_lands_whole_and_in_order(
    broker: RedisBroker, admin: redis.Redis
) -> None:
    messages = batch(2 * CHUNK + 7)
    broker.publish([Message("warm", "warm", b"", countdown=60)])  # the script is loaded
    admin.config_resetstat()
    broker.publish(messages)
    assert admin.info("commandstats")["cmdstat_evalsha"]["calls"] == 3  # one call a chunk
    assert leased_ids(broker, len(messages)) == [m.id for m in messages]


@pytest.mark.parametrize("known_loaded", [False, True], ids=["unknown", "known-but-flushed"])
def test_a_streamed_publish_reloads_flushed_scripts(
    broker: RedisBroker, admin: redis.Redis, monkeypatch: pytest.MonkeyPatch, known_loaded: bool
) -> None:
    messages = batch(3 * CHUNK + 1)
    admin.script_flush()
    broker._scripts["ack_publish"].loaded = known_loaded
    exchanges: list[int] = []
    exchange = Connections._exchange

    def counted(self: Connections, commands: list[tuple[object, ...]]) -> list[object]:
        exchanges.append(len(commands))
        return exchange(self, commands)

    monkeypatch.setattr(Connections, "_exchange", counted)
    admin.config_resetstat()
    broker.publish(messages)
    evalsha = admin.info("commandstats")["cmdstat_evalsha"]["calls"]
    if known_loaded:
        # Every chunk met NOSCRIPT: loaded once, all run again in one round trip, in order.
        assert exchanges == [4] and evalsha == 8
    else:
        # Not known to this process: the stream loads it first, no chunk runs twice.
        assert exchanges == [] and evalsha == 4
    assert broker._scripts["ack_publish"].loaded
    assert leased_ids(broker, len(messages)) == [m.id for m in messages]


def test_a_connection_lost_mid_stream_sends_it_all_again_once(
    broker: RedisBroker, admin: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    messages = batch(3 * CHUNK)
    killed: list[int] = []

    class Killing(Stream):
        """Has the server drop every other client once the first chunk is on its way."""

        def send(self) -> None:
            super().send()
            if not killed:
                killed.append(admin.client_kill_filter(_type="normal", skipme=True))

    def stream(self: Connections, calls: Calls) -> Stream:
        return Killing(self, calls)

    resent: list[int] = []
    execute = Connections.execute

    def counted(self: Connections, calls: Calls) -> list[object]:
        resent.append(len(calls.commands))
        return execute(self, calls)

    monkeypatch.setattr(Connections, "stream", stream)
    monkeypatch.setattr(Connections, "execute", counted)
    broker._scripts["ack_publish"].loaded = True  # else the stream loads it first
    broker.publish(messages)
    assert killed[0] >= 1
    assert resent == [4]  # the queue registration and every chunk again, in one exchange
    assert leased_ids(broker, len(messages)) == [m.id for m in messages]


def test_a_large_lease_keeps_the_leases_in_a_skiplist(
    broker: RedisBroker, admin: redis.Redis
) -> None:
    """Inserts into a listpack scan it whole: a lease of 8 or more converts the queue's set of
    leases, without the member that converts it ever being seen."""
    broker.publish(batch(40))
    leased = f"{broker.keys.queue(Q)}:leased"
    first = broker.lease([Q], 2, 0)
    assert admin.object("encoding", leased) == b"listpack"  # small: left as it is
    more = broker.lease([Q], 10, 0)
    assert admin.object("encoding", leased) == b"skiplist"
    receipts = {d.receipt.encode() for d in first + more}
    assert set(admin.zrange(leased, 0, -1)) == receipts
    assert broker.stats([Q])[Q].leased == 12
    broker.ack(first + more)
    assert not admin.exists(leased)


def test_a_stream_that_fails_half_way_leaves_no_connection_behind(
    broker: RedisBroker, admin: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure while the chunks are built drops the connection that owes replies (it
    reconnects for the broker's next call), instead of keeping it open, out of step."""
    broker.publish([Message("warm", "warm", b"")])  # the broker's connection is made
    clients = admin.info("clients")["connected_clients"]
    packed = redis_publish.packed_value
    count = 0

    def failing(priority: int, message_id: bytes, body: bytes) -> bytes:
        nonlocal count
        count += 1
        if count > CHUNK + 1:  # the first chunk was sent
            raise RuntimeError("failed half-way")
        return packed(priority, message_id, body)

    monkeypatch.setattr(redis_publish, "packed_value", failing)
    with pytest.raises(RuntimeError, match="half-way"):
        broker.publish(batch(2 * CHUNK + 1))
    monkeypatch.setattr(redis_publish, "packed_value", packed)
    broker.publish([Message("after", Q, b"")])
    wait_until(lambda: admin.info("clients")["connected_clients"] == clients, timeout=5)
    leased = leased_ids(broker, 2 * CHUNK + 2)
    assert leased[-1] == "after"
    assert leased[:-1] == [f"m{i}" for i in range(len(leased) - 1)]  # the first chunk, if any
