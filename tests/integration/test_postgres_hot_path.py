"""The PostgreSQL broker's hot path: pooled connections run generic plans, and a busy consumer
(leasing with acks, as the worker does) promotes due delayed messages without doing it in
every lease."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from conveyor.brokers.base import BrokerOptions, Delivery, Message
from conveyor.brokers.postgres import PostgresBroker
from conveyor.brokers.postgres import statements as sql
from tests.pg_server import PostgresServer

pytestmark = pytest.mark.postgres


def broker_for(server: PostgresServer, query: str = "") -> PostgresBroker:
    options = BrokerOptions(key_prefix=f"hot{uuid.uuid4().hex[:10]}")
    return PostgresBroker(server.url() + query, options)


@pytest.fixture
def broker(postgres_server: PostgresServer) -> Iterator[PostgresBroker]:
    broker = broker_for(postgres_server)
    yield broker
    broker.close()


def plan_cache_mode(broker: PostgresBroker) -> object:
    with broker.db.connection() as conn:
        row = conn.execute("SHOW plan_cache_mode").fetchone()
    assert row is not None
    return row[0]


def test_pooled_connections_run_generic_plans(postgres_server: PostgresServer) -> None:
    default = broker_for(postgres_server)
    off = broker_for(postgres_server, "?generic_plans=false")
    unprepared = broker_for(postgres_server, "?prepare=false")
    try:
        assert plan_cache_mode(default) == "force_generic_plan"
        assert plan_cache_mode(off) == "auto"
        assert plan_cache_mode(unprepared) == "auto"  # no prepared statements: left alone
    finally:
        for broker in (default, off, unprepared):
            broker.close()


def message(queue: str, countdown: float = 0.0, priority: int = 0) -> Message:
    return Message(str(uuid.uuid4()), queue, b"{}", priority, countdown=countdown)


def test_a_busy_consumer_promotes_due_messages_without_doing_it_every_lease(
    broker: PostgresBroker,
) -> None:
    broker.publish([message("q") for _ in range(200)])
    delayed = message("q", countdown=0.5, priority=9)
    published = time.monotonic()  # before the database's now() that sets its due time
    broker.publish([delayed])
    held: list[Delivery] = []
    leases = promoting = 0
    found_at = None
    while found_at is None:
        if leases % 100 == 0:  # keep the consumer busy, however fast it goes
            broker.publish([message("q") for _ in range(100)])
        promoting += time.monotonic() >= broker._promote_at
        held = broker.lease_now(["q"], 1, held)  # acks the previous one, as the worker does
        leases += 1
        if held and held[0].id == delayed.id:
            found_at = time.monotonic() - published
        assert time.monotonic() - published < 10, "the delayed message was never promoted"
    # Never early; late by at most the promotion interval plus a few leases (slow machine).
    assert 0.5 <= found_at < 0.5 + sql.PROMOTE_EVERY + 1.0
    assert promoting < leases / 2  # most leases did not promote


def test_a_waiting_consumer_gets_a_delayed_message_when_due(broker: PostgresBroker) -> None:
    assert broker.lease(["w"], 1, 0.0) == []  # this process's lease has just promoted
    delayed = message("w", countdown=0.3)
    broker.publish([delayed])
    start = time.monotonic()
    [got] = broker.lease(["w"], 1, 5.0)
    assert got.id == delayed.id
    assert 0.3 <= time.monotonic() - start + 0.05 < 2.0  # woken at its due time


def test_a_lease_that_does_not_wait_sees_every_due_message(broker: PostgresBroker) -> None:
    broker.publish([message("n", countdown=0.2)])
    time.sleep(0.25)
    broker._promote_at = time.monotonic() + 60  # as if a lease had just promoted
    # The statement that promotes cannot lease what it promotes (one snapshot): the next does.
    assert len(broker.lease(["n"], 5, 0.0) or broker.lease(["n"], 5, 0.0)) == 1
