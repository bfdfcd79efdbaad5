"""Property tests of each broker's parsing of its own stored fields (issue 13, item 4).

SQLite keeps whatever is written into a column, Redis hashes hold bytes: any value in any
field a broker reads back (priority, delivery count, id, queue, body) makes ``lease()`` return
the message with well-typed fields or dead-letter it as ``malformed`` - never raise, never
lose it. The memory broker stores the objects ``publish()`` takes; any priority, delay and
body round-trip (the priority clamped to 0-9).
"""

from __future__ import annotations

import contextlib
import math
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conveyor._redis_keys import RedisKeys
from conveyor.brokers import BrokerOptions, create_broker
from conveyor.brokers.base import Broker, Delivery, Message
from conveyor.brokers.memory import MemoryBroker
from conveyor.brokers.redis import RedisBroker
from conveyor.brokers.redis.replies import _blob, _deliveries, _number, _text
from conveyor.brokers.sqlite.rows import (
    as_blob,
    as_float,
    as_int,
    as_text,
    delivery_of,
    row_problem,
)
from tests.helpers import redis_fixture
from tests.servers import RedisServer

Q = "default"
FIELDS = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
#: Any value SQLite can hold in a column.
sqlite_values = st.one_of(
    st.none(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.binary(max_size=20),
)
#: Any reply element redis-py may hand back from a script.
redis_replies = st.one_of(st.none(), st.integers(), st.binary(max_size=20), st.text(max_size=20))
#: Bytes a hash field may hold (None: the field is missing).
redis_fields = st.one_of(
    st.none(),
    st.binary(max_size=12),
    st.sampled_from([b"5", b"0", b"9", b"10", b"-1", b"1.5", b"nan", b"inf", b"0x1f", b"1e3"]),
    st.integers(-(10**16), 10**16).map(lambda n: str(n).encode()),
)


def check_delivery(delivery: Delivery) -> None:
    assert type(delivery.id) is str and type(delivery.queue) is str
    assert type(delivery.body) is bytes and type(delivery.receipt) is str
    assert type(delivery.priority) is int and 0 <= delivery.priority <= 9
    assert type(delivery.delivery_count) is int


# -- SQLite ----------------------------------------------------------------------------------
@FIELDS
@given(st.tuples(*[sqlite_values] * 7))
def test_sqlite_row_parsing_is_total(row: tuple[Any, ...]) -> None:
    for parse in (as_int, as_text, as_blob, as_float):
        parse(row[3])
    if row_problem(row) is None:
        check_delivery(delivery_of(row, 7))


@pytest.fixture(scope="module")
def sqlite_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fields") / "broker.db"


@FIELDS
@given(
    priority=sqlite_values.filter(lambda v: v is not None),
    deliveries=sqlite_values.filter(lambda v: v is not None),
    body=sqlite_values.filter(lambda v: v is not None),
)
def test_any_sqlite_column_value_is_delivered_typed_or_dead_lettered(
    sqlite_file: Path, priority: object, deliveries: object, body: object
) -> None:
    ns = f"f{uuid.uuid4().hex[:10]}"
    broker = create_broker(f"sqlite:///{sqlite_file}", BrokerOptions(key_prefix=ns))
    try:
        broker.stats([Q])
        with sqlite3.connect(sqlite_file, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO conveyor_messages (ns, id, queue, priority, body, state, due, "
                "deliveries) VALUES (?, 'm', ?, ?, ?, 0, NULL, ?)",
                (ns, Q, priority, body, deliveries),
            )
            # What SQLite stored: the column's INTEGER affinity turns '0' into 0.
            [stored] = conn.execute(
                "SELECT priority FROM conveyor_messages WHERE ns = ? AND id = 'm'", (ns,)
            ).fetchone()
        conn.close()
        leased = broker.lease([Q], 10, 0)
        dead = broker.dead_letters()
        assert len(leased) + len(dead) == 1
        for delivery in leased:
            check_delivery(delivery)
            assert delivery.priority == stored  # an integer 0-9 (maybe stored as 5.0)
        for letter in dead:
            assert (letter.id, letter.reason) == ("m", "malformed") and letter.detail
    finally:
        broker.close()


# -- Redis -----------------------------------------------------------------------------------
@FIELDS
@given(st.lists(redis_replies, max_size=30))
def test_redis_reply_parsing_is_total(reply: list[Any]) -> None:
    for value in reply:
        _text(value), _blob(value)
        assert math.isfinite(_number(value))
    for delivery in _deliveries([0, *reply]):
        assert type(delivery.id) is str and type(delivery.delivery_count) is int


redis_server = redis_fixture(appendonly=False)


@pytest.fixture(scope="module")
def redis_admin(redis_server: RedisServer) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(redis_server.url) as client:
        yield client


@contextlib.contextmanager
def one_queued(
    server: RedisServer, admin: redis.Redis
) -> Iterator[tuple[Broker, RedisKeys, bytes]]:
    """A broker under a fresh prefix with one message queued: (broker, keys, its uid)."""
    prefix = f"f{uuid.uuid4().hex[:10]}"
    broker = create_broker(server.url, BrokerOptions(key_prefix=prefix))
    try:
        broker.publish([Message("m", Q, b"body")])
        cast(RedisBroker, broker).absorb_ingress()  # the raw keys, as every script sees them
        keys = RedisKeys(prefix)
        (uid,) = cast(list[bytes], admin.zrange(keys.queue_key(Q, "ready"), 0, -1))
        yield broker, keys, uid
    finally:
        broker.close()


@pytest.mark.redis
@FIELDS
@given(
    st.fixed_dictionaries(
        {"p": redis_fields, "n": redis_fields, "u": redis_fields, "b": redis_fields},
        optional={"id": redis_fields, "q": redis_fields},
    )
)
def test_any_redis_hash_field_is_delivered_typed_or_dead_lettered(
    redis_server: RedisServer, redis_admin: redis.Redis, fields: dict[str, bytes | None]
) -> None:
    with one_queued(redis_server, redis_admin) as (broker, keys, uid):
        # Moved to the layout before 2026-12, a hash holding the whole message.
        redis_admin.hdel(keys.queue_key(Q, "m"), uid)
        key = keys.queue_key(Q, f"msg:{uid.decode()}")
        redis_admin.hset(key, mapping={"id": "m", "p": "5", "b": "body"})
        for name, value in fields.items():
            if value is None:
                redis_admin.hdel(key, name)
            else:
                redis_admin.hset(key, name, value)
        leased = broker.lease([Q], 10, 0)
        dead = broker.dead_letters()
        stats = broker.stats([Q])[Q]
        if fields.get("id", b"") is None:
            # No id: the hash reads as gone; the script drops its uid (nothing to deliver).
            assert leased == [] and stats.ready == 0
            return
        assert len(leased) + len(dead) == 1, (leased, dead)
        for delivery in leased:
            check_delivery(delivery)
        for letter in dead:
            assert letter.reason == "malformed" and letter.detail
        assert stats.ready == 0 and stats.leased == len(leased)


#: A ``Q:m`` value: well shaped (``<priority> <length of id> <id><body>``) or not.
packed_values = st.one_of(
    st.binary(max_size=30),
    st.builds(
        lambda p, n, rest: p + b" " + n + b" " + rest,
        redis_fields.map(lambda v: v or b""),
        st.sampled_from([b"0", b"1", b"2", b"5", b"99", b"x", b"", b"1:1", b"3:2", b"0:9", b"9:"]),
        st.binary(max_size=12),
    ),
)


@pytest.mark.redis
@FIELDS
@given(packed_values, st.fixed_dictionaries({}, optional={"n": redis_fields, "u": redis_fields}))
def test_any_packed_record_is_delivered_typed_or_dead_lettered(
    redis_server: RedisServer, redis_admin: redis.Redis, value: bytes, fields: dict[str, bytes]
) -> None:
    with one_queued(redis_server, redis_admin) as (broker, keys, uid):
        redis_admin.hset(keys.queue_key(Q, "m"), uid, value)
        for name, field in fields.items():
            if field is not None:
                redis_admin.hset(keys.queue_key(Q, f"msg:{uid.decode()}"), name, field)
        leased = broker.lease([Q], 10, 0)
        dead = broker.dead_letters()
        assert len(leased) + len(dead) == 1, (leased, dead)
        for delivery in leased:
            check_delivery(delivery)
        for letter in dead:
            assert letter.reason == "malformed" and letter.detail
        assert broker.stats([Q])[Q].leased == len(leased)


# -- memory ----------------------------------------------------------------------------------
@FIELDS
@given(
    st.integers(-(2**70), 2**70),
    st.floats(-1e6, 0.0),
    st.binary(max_size=50),
    st.text(min_size=1, max_size=10),
)
def test_memory_messages_round_trip_with_any_priority(
    priority: int, countdown: float, body: bytes, mid: str
) -> None:
    broker: Broker = MemoryBroker()
    broker.publish([Message(mid, Q, body, priority, countdown)])
    (delivery,) = broker.lease([Q], 10, 0)
    check_delivery(delivery)
    assert (delivery.id, delivery.body, delivery.priority) == (mid, body, min(max(priority, 0), 9))
