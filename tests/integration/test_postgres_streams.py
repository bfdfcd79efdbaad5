"""What PostgreSQL's streams (``conveyor.streams.postgres``) add to the conformance suite:
followers woken by NOTIFY from other processes (not by polling), a v1 schema upgraded in
place, and rows of streams nobody writes to any more deleted."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from conveyor import _postgres
from conveyor.brokers import BrokerOptions, create_broker
from conveyor.brokers.base import Message
from conveyor.brokers.postgres import PostgresBroker
from conveyor.streams import postgres as pg_streams
from tests.conftest import wait_until
from tests.helpers import closing_all
from tests.pg_server import PostgresServer

pytestmark = pytest.mark.postgres

DAY = 86400.0


@pytest.fixture
def schema() -> str:
    return f"s{uuid.uuid4().hex[:12]}"


@pytest.fixture
def make(postgres_server: PostgresServer, schema: str) -> Iterator[Callable[..., PostgresBroker]]:
    def build(**transport: object) -> PostgresBroker:
        options = BrokerOptions(
            key_prefix="streams", transport_options={"schema": schema, **transport}
        )
        broker = create_broker(postgres_server.url(), options)
        assert isinstance(broker, PostgresBroker)
        return broker

    yield from closing_all(build)


def test_a_follower_is_woken_by_another_process_not_by_polling(
    make: Callable[..., PostgresBroker], postgres_server: PostgresServer, schema: str
) -> None:
    follower = make(poll_interval=60.0)
    last = follower.streams.last("events")
    code = (
        "import sys; from conveyor.brokers import BrokerOptions, create_broker; "
        "b = create_broker(sys.argv[1], BrokerOptions(key_prefix='streams', "
        "transport_options={'schema': sys.argv[2]})); "
        "b.streams.append('events', [b'from afar'], max_length=10, max_age=60.0); b.close()"
    )
    found: list[bytes] = []
    reader = threading.Thread(
        target=lambda: found.extend(
            e.body for e in follower.streams.read("events", last, wait=30.0)
        )
    )
    reader.start()
    started = time.monotonic()
    subprocess.run([sys.executable, "-c", code, postgres_server.url(), schema], check=True)
    reader.join(40)
    assert found == [b"from afar"]
    assert time.monotonic() - started < 20  # the 60 s poll never came into it


def test_a_v1_schema_is_upgraded_in_place(
    make: Callable[..., PostgresBroker], postgres_server: PostgresServer, schema: str
) -> None:
    old = make()
    old.publish([Message(id="kept", queue="q", body=b"{}")])
    old.close()
    for table in (pg_streams.TABLE, pg_streams.HEADS, "conveyor_departures"):  # v2, v3
        postgres_server.sql(f"DROP TABLE {schema}.{table}")
    postgres_server.sql(f"UPDATE {schema}.conveyor_meta SET version = 1")
    _postgres._CHECKED.clear()  # as in a new process: each checks the version once
    new = make()
    new.streams.append("events", [b"e"], max_length=10, max_age=DAY)
    assert [e.body for e in new.streams.read("events")] == [b"e"]
    assert postgres_server.sql(f"SELECT version FROM {schema}.conveyor_meta") == "3"
    assert [d.id for d in new.lease(["q"], 10, 0)] == ["kept"]


def test_streams_nobody_writes_to_any_more_are_deleted(
    make: Callable[..., PostgresBroker],
    postgres_server: PostgresServer,
    schema: str,
) -> None:
    broker = make()
    for n in range(3):
        broker.streams.append(f"reply.{n}", [b"r"], max_length=10, max_age=0.2)
    broker.streams.append("events", [b"e"], max_length=10, max_age=DAY)

    def rows() -> str:
        return postgres_server.sql(
            f"SELECT string_agg(DISTINCT stream, ',' ORDER BY stream) "
            f"FROM {schema}.{pg_streams.TABLE}"
        )

    assert rows() == "events,reply.0,reply.1,reply.2"
    written = time.time()
    wait_until(lambda: time.time() > written + 0.3, 5.0, "the replies to expire")
    broker.streams._next_sweep = 0.0  # a minute later
    broker.streams.append("events", [b"e"], max_length=10, max_age=DAY)
    assert rows() == "events"
    heads = postgres_server.sql(f"SELECT count(*) FROM {schema}.{pg_streams.HEADS}")
    assert heads == "1"
