"""The limit stores of every broker (``broker.limits``): token buckets booked ahead
(``take``), against real servers - SQLite files, redis-server, PostgreSQL - and memory.

Concurrency slots of the same stores: tests/integration/test_concurrency_limits_stores.py.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections.abc import Iterator
from urllib.parse import quote

import pytest

from conveyor.brokers import BrokerOptions, create_broker
from conveyor.brokers.base import Broker
from conveyor.limits.store import LimitStore, book
from tests.conftest import wait_until
from tests.helpers import redis_fixture
from tests.pg_server import PostgresServer
from tests.rabbit_server import RabbitServer
from tests.servers import RedisServer

redis_server = redis_fixture(appendonly=False)

STORES = [
    pytest.param("memory", id="memory"),
    pytest.param("sqlite", id="sqlite"),
    pytest.param("redis", id="redis", marks=pytest.mark.redis),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    # RabbitMQ keeps its limits beside its key/value data (here: a SQLite file)
    pytest.param("amqp", id="amqp", marks=pytest.mark.amqp),
]


def broker_url(kind: str, request: pytest.FixtureRequest) -> str:
    if kind == "sqlite":
        return f"sqlite:///{request.getfixturevalue('tmp_path')}/limits.db"
    if kind == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        return server.url
    if kind == "postgres":
        pg: PostgresServer = request.getfixturevalue("postgres_server")
        return pg.url()
    if kind == "amqp":
        rabbit: RabbitServer = request.getfixturevalue("rabbit_server")
        kv = quote(f"sqlite:///{request.getfixturevalue('tmp_path')}/kv.db", safe="")
        return f"{rabbit.url}?kv_url={kv}"
    return "memory://"


@pytest.fixture(params=STORES, name="broker")
def broker_fixture(request: pytest.FixtureRequest) -> Iterator[Broker]:
    options = BrokerOptions(key_prefix=f"t{uuid.uuid4().hex[:8]}")
    made = create_broker(broker_url(request.param, request), options)
    yield made
    made.close()


@pytest.fixture(name="store")
def store_fixture(broker: Broker) -> LimitStore:
    assert broker.limits is not None
    return broker.limits


# -- the arithmetic ----------------------------------------------------------------------
def test_book_full_bucket_grants_burst_then_spaces_tokens() -> None:
    tat = None
    waits = []
    for _ in range(5):  # 3 tokens of burst (tolerance 2 intervals), then one every 0.1 s
        new, grant = book(tat, 100.0, 0.1, 0.2, 0.0, 10.0)
        assert grant.granted and new is not None
        tat = new
        waits.append(round(grant.wait, 6))
    assert waits == [0.0, 0.0, 0.0, 0.1, 0.2]


def test_book_refuses_beyond_the_horizon_without_change() -> None:
    new, grant = book(101.0, 100.0, 1.0, 0.0, 0.0, 0.4)
    assert new is None and not grant.granted
    assert grant.wait == pytest.approx(0.6)  # due in 1 s, bookable 0.4 s ahead
    new, grant = book(None, 100.0, 0.5, 0.0, 2.0, 3.0)  # no sooner than `after`
    assert grant.granted and grant.wait == pytest.approx(2.0) and new == pytest.approx(102.5)


def test_book_after_a_rate_was_raised_waits_no_longer_than_the_new_rate() -> None:
    new, grant = book(160.0, 100.0, 0.05, 0.0, 0.0, 5.0)  # booked at 1/m, now 20/s
    assert new == pytest.approx(105.05)  # the furthest 20/s could have booked, stored
    assert not grant.granted and grant.wait == pytest.approx(0.05)
    new, grant = book(new, 100.1, 0.05, 0.0, 0.0, 5.0)
    assert grant.granted and grant.wait == pytest.approx(4.95)


# -- every store -------------------------------------------------------------------------
def test_take_books_tokens_one_interval_apart(store: LimitStore) -> None:
    grants = [store.take("task:a", 0.5, 0.0, 0.0, 10.0) for _ in range(4)]
    assert all(g.granted for g in grants)
    assert grants[0].wait == pytest.approx(0.0, abs=0.05)
    gaps = [b.wait - a.wait for a, b in itertools.pairwise(grants)]
    assert gaps == pytest.approx([0.5, 0.5, 0.5], abs=0.05)


def test_take_without_horizon_grants_only_what_is_due(store: LimitStore) -> None:
    assert store.take("task:b", 1.0, 1.0).granted  # burst of 2
    assert store.take("task:b", 1.0, 1.0).granted
    refused = store.take("task:b", 1.0, 1.0)
    assert not refused.granted
    assert 0.8 < refused.wait <= 1.0


def test_buckets_are_independent_per_key(store: LimitStore) -> None:
    assert store.take("task:c:customer-1", 10.0, 0.0).granted
    assert not store.take("task:c:customer-1", 10.0, 0.0).granted
    assert store.take("task:c:customer-2", 10.0, 0.0).granted


def test_bucket_refills_with_time(store: LimitStore) -> None:
    assert store.take("task:d", 0.2, 0.0).granted
    assert not store.take("task:d", 0.2, 0.0).granted
    wait_until(lambda: store.take("task:d", 0.2, 0.0).granted, 2.0, "a token again")


def test_a_raised_rate_applies_at_once(store: LimitStore) -> None:
    assert store.take("task:f", 60.0, 0.0, 0.0, 600.0).granted  # 1/m: next token in 60 s
    grant = store.take("task:f", 0.05, 0.0, 0.0, 0.0)  # raised to 20/s
    assert not grant.granted and grant.wait <= 0.06
    wait_until(lambda: store.take("task:f", 0.05, 0.0).granted, 2.0, "a token at 20/s")


def test_concurrent_takes_never_exceed_the_rate(broker: Broker, store: LimitStore) -> None:
    """8 threads, each with its own connections where the backend has them, hammer one
    bucket of 20/s (burst 1) for ~1 s: the granted-now takes fit the rate."""
    granted: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + 1.0

    def hammer() -> None:
        while time.monotonic() < stop:
            if store.take("task:e", 0.05, 0.0).granted:
                with lock:
                    granted.append(time.monotonic())

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    elapsed = time.monotonic() - started
    assert granted, "no token at all"
    assert len(granted) <= 20 * elapsed + 1
    assert len(granted) >= 10  # and it did grant (a frozen bucket would pass the bound)


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_buckets_and_slots_survive_a_reopen(kind: str, request: pytest.FixtureRequest) -> None:
    """SQLite and PostgreSQL keep limits in their files and tables: a broker opened again
    (a restart) sees the same buckets and slots."""
    options = BrokerOptions(key_prefix=f"t{uuid.uuid4().hex[:8]}")
    url = broker_url(kind, request)
    first = create_broker(url, options)
    assert first.limits is not None
    assert first.limits.take("task:r", 60.0, 0.0).granted
    assert first.limits.acquire("task:r", 1, "t1", 60)
    first.close()
    again = create_broker(url, options)
    try:
        assert again.limits is not None
        assert not again.limits.take("task:r", 60.0, 0.0).granted
        assert not again.limits.acquire("task:r", 1, "t2", 60)
    finally:
        again.close()


@pytest.mark.redis
def test_a_redis_that_lost_its_data_fails_open_by_one_token(redis_server: RedisServer) -> None:
    import redis

    made = create_broker(redis_server.url, BrokerOptions(key_prefix=uuid.uuid4().hex[:8]))
    store = made.limits
    assert store is not None
    try:
        assert store.take("task:lost", 60.0, 0.0).granted
        assert not store.take("task:lost", 60.0, 0.0).granted
        with redis.Redis.from_url(redis_server.url) as admin:
            admin.flushall()  # what a restart without persistence leaves
        assert store.take("task:lost", 60.0, 0.0).granted  # a full bucket: one token
        assert not store.take("task:lost", 60.0, 0.0).granted  # and limited again
    finally:
        made.close()


@pytest.mark.redis
def test_limits_beside_a_redis_key_value_store(redis_server: RedisServer) -> None:
    """What RabbitMQ uses when its key/value data lives in a Redis result store."""
    from conveyor.limits.kvstores import limits_on
    from conveyor.results import create_result_store

    results = create_result_store(redis_server.url, expires=None, key_prefix=uuid.uuid4().hex[:8])
    try:
        store = limits_on(results.kv)
        assert store is not None
        assert store.take("task:kv", 60.0, 0.0).granted
        assert not store.take("task:kv", 60.0, 0.0).granted
        assert store.acquire("task:kv", 1, "t1", 30)
        assert not store.acquire("task:kv", 1, "t2", 30)
    finally:
        results.close()
