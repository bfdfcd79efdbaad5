"""The PostgreSQL publish's hand-built binary arrays read back as psycopg's own arrays do,
and a bulk publish through them keeps each message's fields (and the first of a repeated id)."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from conveyor.brokers import create_broker
from conveyor.brokers.base import BrokerOptions, Message
from conveyor.brokers.postgres.arrays import (
    bytea_array,
    float8_array,
    int2_array,
    text_array,
    use_arrays,
)
from tests.pg_server import PostgresServer

pytestmark = pytest.mark.postgres

TEXTS = [["a", "", "ünïcödé ✓", "x" * 5000], [], ["only"]]
BLOBS = [[b"", b"\x00\xff", b"{}" * 3000], [], [b"z"]]
INTS = [[0, 9, -32768, 32767], [], [5]]
FLOATS = [[0.0, -1.5, 1e300, None, 3.25], [], [None], [None, None], [2.0]]


def test_arrays_read_back_like_psycopgs(postgres_server: PostgresServer) -> None:
    with psycopg.connect(postgres_server.url(), autocommit=True) as conn:
        use_arrays(conn)
        use_arrays(conn)  # registering twice is harmless
        encoding = conn.info.encoding
        for texts in TEXTS:
            row = conn.execute("SELECT %b::text[]", (text_array(texts, encoding),)).fetchone()
            assert row is not None and row[0] == texts
        for blobs in BLOBS:
            row = conn.execute("SELECT %b::bytea[]", (bytea_array(blobs),)).fetchone()
            assert row is not None and row[0] == blobs
        for ints in INTS:
            row = conn.execute("SELECT %b::smallint[]", (int2_array(ints),)).fetchone()
            assert row is not None and row[0] == ints
        for floats in FLOATS:
            row = conn.execute("SELECT %b::float8[]", (float8_array(floats),)).fetchone()
            assert row is not None and row[0] == floats
        row = conn.execute(
            "SELECT array_length(%b::text[], 1), %b::bytea[] = %b::bytea[]",
            (text_array(["a", "b"]), bytea_array([b"q"]), [b"q"]),
        ).fetchone()
        assert row == (2, True)


def test_a_bulk_publish_keeps_each_field(postgres_server: PostgresServer) -> None:
    broker = create_broker(
        postgres_server.url(), BrokerOptions(key_prefix=f"arr{uuid.uuid4().hex[:8]}")
    )
    try:
        messages = [
            Message("m1", "q-é", b'{"n":1}', 3),
            Message("m2", "q-é", b'{"n":2}', 12),  # clamped to 9
            Message("m1", "q-é", b'{"n":"again"}', 9),  # a repeated id: the first wins
            Message("m3", "q-é", b'{"n":3}', 5, countdown=60.0),
            Message("m4", "q-é", b'{"n":4}', 5, eta=1.0),  # long past: ready now
        ]
        broker.publish(messages)
        stats = broker.stats(["q-é"])["q-é"]
        assert (stats.ready, stats.delayed) == (3, 1)
        found = broker.lease(["q-é"], 10, 0)
        assert [(d.id, d.body, d.priority) for d in found] == [
            ("m2", b'{"n":2}', 9),
            ("m4", b'{"n":4}', 5),
            ("m1", b'{"n":1}', 3),
        ]
    finally:
        broker.purge(["q-é"])
        broker.close()
