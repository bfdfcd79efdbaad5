"""A publish of more than a chunk on one Redis server is streamed (``Stream``): each chunk's
script call is written as soon as it is built. It lands whole and in order, survives a script
cache flush, and a connection lost on the way sends everything again, added once."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis

from conveyor._redis import Calls, Connections, Stream
from conveyor.brokers.base import BrokerOptions, Message
from conveyor.brokers.redis import CHUNK, RedisBroker
from tests import helpers
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
    broker.publish([Message("warm", "warm", b"")])  # the script is loaded
    admin.config_resetstat()
    broker.publish(messages)
    assert admin.info("commandstats")["cmdstat_evalsha"]["calls"] == 3  # one call a chunk
    assert leased_ids(broker, len(messages)) == [m.id for m in messages]


def test_a_streamed_publish_reloads_flushed_scripts(
    broker: RedisBroker, admin: redis.Redis
) -> None:
    messages = batch(CHUNK + 1)
    admin.script_flush()
    broker.publish(messages)
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
    broker.publish(messages)
    assert killed[0] >= 1
    assert resent == [4]  # the queue registration and every chunk again, in one exchange
    assert leased_ids(broker, len(messages)) == [m.id for m in messages]
