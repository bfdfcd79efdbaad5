"""Property tests of the RabbitMQ broker's parsing of the AMQP messages it leases (issue 13,
item 4).

An AMQP message carries Conveyor's fields in its properties (``message_id``, ``priority``) and
headers (``conveyor-priority``, ``conveyor-delivered-before``, RabbitMQ's ``x-delivery-count``,
``conveyor-queue`` and the dead-letter headers). Anyone who can publish to the queue can put
any AMQP table value in any of them: the parsers return well-typed values for any message, and
a message whose Conveyor header has the wrong type or range is dead-lettered as ``malformed``
by ``lease()`` - never raised on, never lost. Messages of other publishers (no Conveyor
headers, no message id) are delivered for the worker to judge.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from typing import Any

import amqp
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conveyor.brokers import BrokerOptions, create_broker
from conveyor.brokers.amqp import AMQPBroker
from conveyor.brokers.amqp.convert import (
    BEFORE,
    PRIORITY,
    as_message,
    body_of,
    dead_letter_of,
    delivery_count_of,
    headers_of,
    message_id_of,
    priority_of,
    problem_of,
)
from tests.fuzz.test_broker_fields import check_delivery
from tests.rabbit_server import RabbitServer

Q = "default"
FIELDS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
INT64 = st.integers(-(2**63), 2**63 - 1)
#: Values an AMQP field table can carry (what py-amqp encodes and decodes).
table_scalars = st.one_of(
    st.none(),
    st.booleans(),
    INT64,
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.decimals(min_value=-(10**6), max_value=10**6, places=2),
    st.datetimes(
        min_value=dt.datetime(1970, 1, 2),
        max_value=dt.datetime(2100, 1, 1),
        timezones=st.just(dt.UTC),
    ).map(lambda d: d.replace(microsecond=0)),
)
table_values = st.recursive(
    table_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
#: What a field Conveyor reads may hold: the right type, the wrong one, out of range.
conveyor_field = st.one_of(
    st.integers(-3, 12), INT64, table_values, st.sampled_from(["5", 5.0, True, -1, 2**62])
)
HEADER_NAMES = [
    PRIORITY,
    BEFORE,
    "x-delivery-count",
    "x-acquired-count",
    "conveyor-queue",
    "conveyor-reason",
    "conveyor-detail",
    "conveyor-dead-at",
    "conveyor-deliveries",
    "x-death",
]
headers = st.dictionaries(
    st.one_of(st.sampled_from(HEADER_NAMES), st.text(max_size=8)), conveyor_field, max_size=6
)


def amqp_message(
    body: bytes,
    fields: dict[str, Any],
    message_id: str | None,
    priority: int | None,
    redelivered: bool = False,
) -> amqp.Message:
    msg = amqp.Message(body, message_id=message_id, priority=priority, application_headers=fields)
    msg.delivery_info = {"redelivered": redelivered, "delivery_tag": 1}
    return msg


@FIELDS
@given(
    body=st.binary(max_size=30),
    fields=headers,
    message_id=st.one_of(st.none(), st.text(max_size=10)),
    priority=st.one_of(st.none(), st.integers(0, 255)),
    redelivered=st.booleans(),
)
def test_amqp_message_parsing_is_total(
    body: bytes,
    fields: dict[str, Any],
    message_id: str | None,
    priority: int | None,
    redelivered: bool,
) -> None:
    msg = amqp_message(body, fields, message_id, priority, redelivered)
    assert headers_of(msg) == fields and body_of(msg) == body
    assert type(priority_of(msg)) is int and 0 <= priority_of(msg) <= 9
    assert type(message_id_of(msg, "fallback")) is str and message_id_of(msg, "fallback")
    assert type(delivery_count_of(msg)) is int
    problem = problem_of(msg)
    assert problem is None or isinstance(problem, str)
    if problem is None:
        assert delivery_count_of(msg) >= 1
        if PRIORITY in fields:
            assert priority_of(msg) == fields[PRIORITY]
    dead = dead_letter_of(msg)
    assert type(dead.reason) is str and type(dead.detail) is str
    assert type(dead.dead_at) is float and type(dead.delivery_count) is int
    replayed = as_message(msg, Q)
    assert type(replayed.queue) is str and 0 <= replayed.priority <= 9


@pytest.fixture(scope="module")
def broker(
    rabbit_server: RabbitServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AMQPBroker]:
    kv = tmp_path_factory.mktemp("amqp-fields") / "kv.db"
    options = BrokerOptions(key_prefix=f"fz{uuid.uuid4().hex[:8]}", max_deliveries=4)
    built = create_broker(f"{rabbit_server.url}?kv_url=sqlite:///{kv}", options)
    assert isinstance(built, AMQPBroker)
    assert built.lease([Q], 1, 0) == []  # declares the queue
    yield built
    built.close()


@pytest.fixture(scope="module")
def publisher(rabbit_server: RabbitServer) -> Iterator[amqp.Channel]:
    with amqp.Connection(
        f"127.0.0.1:{rabbit_server.port}", userid="guest", password="guest"
    ) as conn:
        channel = conn.channel()
        channel.confirm_select()
        yield channel


def test_delivery_count_reads_the_acquired_count_where_rabbitmq_4_3_gives_one() -> None:
    # RabbitMQ 4.3 counts every return in x-acquired-count and only the returns it judges
    # failures in x-delivery-count: the acquired count is the one that counts dead workers.
    def count(**headers: object) -> int:
        return delivery_count_of(amqp_message(b"", dict(headers), "m", None, redelivered=True))

    assert count(**{"x-delivery-count": 2}) == 3
    assert count(**{"x-delivery-count": 0, "x-acquired-count": 2}) == 3
    assert count(**{"x-acquired-count": 1, BEFORE: 2}) == 4  # a given-back copy's count so far
    assert count() == 2  # a classic queue only says it was delivered before


@pytest.mark.amqp
@FIELDS
@given(
    fields=headers, priority=st.one_of(st.none(), st.integers(0, 255)), body=st.binary(max_size=20)
)
# Counts that, counted on, pass 64 bits: over the limit, their dead letter's copy must still
# be published (the count stops at 2**63 - 1).
@example(fields={BEFORE: 2**63 - 1}, priority=None, body=b"")
@example(fields={"x-acquired-count": 2**63 - 1}, priority=None, body=b"")
def test_any_amqp_header_is_delivered_typed_or_dead_lettered(
    broker: AMQPBroker,
    publisher: amqp.Channel,
    fields: dict[str, Any],
    priority: int | None,
    body: bytes,
) -> None:
    mid = uuid.uuid4().hex
    msg = amqp.Message(body, message_id=mid, priority=priority, application_headers=fields)
    publisher.basic_publish_confirm(msg, broker.names.exchange, Q, mandatory=True)
    leased = broker.lease([Q], 10, 0)
    dead = [d for d in broker.dead_letters(limit=1000) if d.id == mid]
    assert len(leased) + len(dead) == 1, (leased, dead)
    for delivery in leased:
        check_delivery(delivery)
        assert delivery.id == mid and delivery.body == body
        assert delivery.delivery_count >= 1
    # A quorum queue owns x-delivery-count: it drops a publisher's on the first delivery.
    own = {k: v for k, v in fields.items() if k != "x-delivery-count"}
    arrived = amqp_message(body, own, mid, priority)
    problem = problem_of(arrived)
    for letter in dead:
        if problem is not None:
            assert letter.reason == "malformed"
            assert letter.detail.startswith("AMQP message: header")
        else:  # counted past the limit (the publisher's headers say so): never handed out
            assert letter.reason == "worker_lost" and delivery_count_of(arrived) > 4
    assert (problem is None and delivery_count_of(arrived) <= 4) == bool(leased)
    broker.ack(leased)
    broker.purge_dead([mid])
    assert broker.stats([Q])[Q].ready == 0
