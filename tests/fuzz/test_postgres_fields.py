"""Property tests of the PostgreSQL broker's parsing of its own rows (issue 13, item 4).

The table's columns are typed, but anything of the column's type may be written into them
behind Conveyor's back (hand-written SQL in a transactional enqueue, a migration script, an
attacker with database access): any priority a ``smallint`` holds, any delivery count an
``integer`` holds, any id, queue and body make ``lease()`` return the message with well-typed
fields or dead-letter it as ``malformed`` - never raise, never lose it, never fail the lease
of the other messages of its queue.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conveyor.brokers import BrokerOptions, create_broker
from conveyor.brokers.base import Message
from conveyor.brokers.postgres.rows import (
    as_blob,
    as_float,
    as_int,
    as_text,
    delivery_of,
    lease_order,
    row_problem,
)
from tests.fuzz.test_broker_fields import check_delivery
from tests.pg_server import PostgresServer

pytestmark = pytest.mark.postgres

Q = "default"
FIELDS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
#: Any value psycopg may hand back for a column (or a hostile row may hold).
column_values = st.one_of(
    st.none(),
    st.integers(),
    st.floats(),
    st.text(max_size=20),
    st.binary(max_size=20),
    st.builds(memoryview, st.binary(max_size=20)),
    st.booleans(),
)
SMALLINT = st.one_of(st.integers(-(2**15), 2**15 - 1), st.sampled_from([-1, 0, 9, 10, 2**15 - 1]))
INTEGER = st.one_of(
    st.integers(-(2**31), 2**31 - 1), st.sampled_from([-(2**31), -1, 0, 3, 4, 2**31 - 1])
)
#: Text PostgreSQL can store (no NUL characters).
pg_text = st.text(st.characters(exclude_characters="\x00", exclude_categories=["Cs"]), max_size=30)


@FIELDS
@given(st.tuples(*[column_values] * 7))
def test_postgres_row_parsing_is_total(row: tuple[Any, ...]) -> None:
    for value in row:
        as_int(value), as_text(value), as_blob(value), as_float(value)
    lease_order(row)
    if row_problem(row) is None:
        check_delivery(delivery_of(row, 7))
    else:
        assert isinstance(row_problem(row), str)


@pytest.fixture(scope="module")
def admin(postgres_server: PostgresServer) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(postgres_server.url(), autocommit=True) as conn:
        yield conn


@FIELDS
@given(
    priority=SMALLINT,
    deliveries=INTEGER,
    mid=st.one_of(st.just(""), pg_text),
    body=st.binary(max_size=40),
)
def test_any_postgres_column_value_is_delivered_typed_or_dead_lettered(
    postgres_server: PostgresServer,
    admin: psycopg.Connection[Any],
    priority: int,
    deliveries: int,
    mid: str,
    body: bytes,
) -> None:
    ns = f"f{uuid.uuid4().hex[:10]}"
    broker = create_broker(postgres_server.url(), BrokerOptions(key_prefix=ns))
    try:
        broker.publish([Message("good", Q, b"{}")])
        admin.execute(
            "INSERT INTO conveyor.conveyor_messages (ns, id, queue, priority, body, state, "
            "deliveries) VALUES (%s, %s, %s, %s, %s, 0, %s)",
            (ns, mid, Q, priority, body, deliveries),
        )
        leased = broker.lease([Q], 10, 0)
        dead = broker.dead_letters()
        assert "good" in {d.id for d in leased}  # the odd row never fails its neighbours
        odd = [d for d in leased if d.id != "good" or d.delivery_count != 1]
        assert len(odd) + len(dead) == 1, (leased, dead)
        for delivery in odd:
            check_delivery(delivery)
            assert delivery.priority == priority and delivery.id == mid
            assert delivery.delivery_count >= deliveries or delivery.delivery_count == 2**31 - 1
        for letter in dead:
            assert (letter.id, letter.reason) == (mid, "malformed") and letter.detail
        stats = broker.stats([Q])[Q]
        assert (stats.ready, stats.leased, stats.dead) == (0, len(leased), len(dead))
        broker.sweep()  # an expired count near the limit of the column must not fail it
    finally:
        broker.close()


def test_a_run_of_undeliverable_rows_does_not_stall_the_lease_behind_them(
    postgres_server: PostgresServer, admin: psycopg.Connection[Any]
) -> None:
    """Leasing only bad rows (each dead-lettered) goes straight on to the next rows; it
    used to wait for a notification no new message would send (up to ``poll_interval``
    per batch: 1,000 injected bad messages took 23 s instead of 8)."""
    ns = f"f{uuid.uuid4().hex[:10]}"
    options = BrokerOptions(key_prefix=ns, transport_options={"poll_interval": 30})
    broker = create_broker(postgres_server.url(), options)
    try:
        admin.execute(
            "INSERT INTO conveyor.conveyor_messages (ns, id, queue, priority, body, state) "
            "SELECT %s, 'bad-' || n, %s, 42, '', 0 FROM generate_series(1, 20) AS n",
            (ns, Q),
        )
        broker.publish([Message("good", Q, b"{}")])
        started = time.monotonic()
        leased = broker.lease([Q], 1, 10.0)
        assert [d.id for d in leased] == ["good"]
        assert time.monotonic() - started < 5.0
        assert len(broker.dead_letters()) == 20
    finally:
        broker.close()
