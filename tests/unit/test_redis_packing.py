"""Commands packed by hiredis (``conveyor._redis_calls.packed``) are the bytes redis-py's own
serializer writes, and what hiredis does not take is refused by redis-py, with its error; the
``Q:m`` values the client packs (``packed_value``) are what the broker's scripts read back."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis
from redis.connection import Connection
from redis.exceptions import DataError

from conveyor._redis_calls import Command, packed
from conveyor.brokers.base import BrokerOptions, Message
from conveyor.brokers.redis import RedisBroker
from conveyor.brokers.redis.publish import ID_SEARCH, packed_value
from tests import helpers
from tests.helpers import redis_fixture
from tests.servers import RedisServer

server = redis_fixture(appendonly=False)
admin = helpers.redis_admin

COMMANDS: list[Command] = [
    ("SADD", b"{conveyor}:queues", "default"),
    ("EVALSHA", "a" * 40, 3, b"{q}:seq", b"{q}", "", 0, -1, 60000, 1.5, 0.1, 1e20, 10**20),
    ("SET", "k", "é ✓", b"\x00\xff"),
    ("SET", "k", float("inf"), -0.0, memoryview(b"ab")),
]


@pytest.mark.parametrize("commands", [COMMANDS[:1], COMMANDS, [COMMANDS[2]] * 3])
def test_hiredis_packs_the_bytes_redis_py_would(commands: list[Command]) -> None:
    conn = Connection()
    assert b"".join(packed(conn, commands)) == b"".join(conn.pack_commands(commands))


def test_a_large_argument_is_packed_whole() -> None:
    body = b"x" * 200_000
    conn = Connection()
    expected = b"".join(conn.pack_commands([("SET", "k", body)]))
    assert packed(conn, [("SET", "k", body)]) == [expected]  # one chunk


def test_what_hiredis_does_not_take_is_refused_by_redis_py() -> None:
    conn = Connection()
    for bad in (True, None, object()):
        with pytest.raises(DataError):  # redis-py's own refusal, not hiredis' TypeError
            packed(conn, [("SET", "k", bad)])


@pytest.fixture
def broker(server: RedisServer) -> Iterator[RedisBroker]:
    b = RedisBroker(server.url, BrokerOptions(key_prefix=f"p{uuid.uuid4().hex[:8]}"))
    yield b
    b.close()


BODY_WITH_ID = b'{"id":"abc","task":"t"}'
MESSAGES = [
    (Message("abc", "q", BODY_WITH_ID, priority=7), b'7 3:8 {"id":"abc","task":"t"}'),
    (Message("abc", "q", b"no id here", priority=0), b"0 3 abcno id here"),
    (Message("", "q", b"body", priority=9), b"9 0 body"),
    # Only the first KiB is searched: an id past it is written out.
    (
        Message("abc", "q", b"x" * (ID_SEARCH - 2) + b"abc", priority=3),
        b"3 3 abc" + b"x" * (ID_SEARCH - 2) + b"abc",
    ),
    (
        Message("abc", "q", b"x" * (ID_SEARCH - 3) + b"abc", priority=3),
        b"3 3:%d " % (ID_SEARCH - 2) + b"x" * (ID_SEARCH - 3) + b"abc",
    ),
]


@pytest.mark.redis
@pytest.mark.parametrize(("message", "value"), MESSAGES)
def test_packed_values_are_stored_as_is_and_read_back(
    admin: redis.Redis, broker: RedisBroker, message: Message, value: bytes
) -> None:
    assert packed_value(message.priority, message.id.encode(), message.body) == value
    broker.publish([message])
    broker.absorb_ingress()  # the raw keys, as every script sees them
    base = broker.keys.queue("q")
    [uid] = admin.zrange(f"{base}:ready", 0, -1)
    assert admin.hget(f"{base}:m", uid) == value
    [delivery] = broker.lease(["q"], 1, 0)
    assert (delivery.id, delivery.body, delivery.priority) == (
        message.id,
        message.body,
        message.priority,
    )
