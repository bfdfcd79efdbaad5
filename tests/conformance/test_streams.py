"""The Streams promises (src/conveyor/streams/__init__.py), run against ``broker.streams`` of
every broker in BACKENDS (fixtures ``broker`` and ``peer`` in conftest.py)."""

from __future__ import annotations

import threading
import time

import pytest

from conveyor.brokers import BrokerOptions, create_broker
from conveyor.brokers.base import Broker
from conveyor.exceptions import ConfigurationError
from conveyor.streams import START

from .conftest import _url
from .support import wait_until

BIG = 1000
DAY = 86400.0


def _bodies(broker: Broker, stream: str, after: str | None = None) -> list[bytes]:
    return [entry.body for entry in broker.streams.read(stream, after, limit=BIG)]


def test_append_then_read_in_order_from_any_position(broker: Broker, peer: Broker) -> None:
    streams = broker.streams
    assert streams.last("events") == START
    assert streams.read("events") == []
    streams.append("events", [b"a", b"b"], max_length=BIG, max_age=DAY)
    peer.streams.append("events", [b"c"], max_length=BIG, max_age=DAY)
    entries = peer.streams.read("events", limit=BIG)
    assert [e.body for e in entries] == [b"a", b"b", b"c"]
    positions = [e.position for e in entries]
    assert len(set(positions)) == 3
    assert _bodies(broker, "events", positions[0]) == [b"b", b"c"]
    assert _bodies(broker, "events", positions[2]) == []
    assert streams.last("events") == positions[2]
    assert [e.body for e in streams.read("events", START, limit=2)] == [b"a", b"b"]
    now = time.time()
    assert all(abs(e.time - now) < 30 for e in entries)


def test_streams_are_separate_and_deletable(broker: Broker) -> None:
    streams = broker.streams
    streams.append("one", [b"1"], max_length=BIG, max_age=DAY)
    streams.append("two", [b"2"], max_length=BIG, max_age=DAY)
    assert _bodies(broker, "one") == [b"1"]
    streams.delete("one")
    assert _bodies(broker, "one") == []
    assert streams.last("one") == START
    assert _bodies(broker, "two") == [b"2"]


def test_length_cap_keeps_the_newest(broker: Broker) -> None:
    streams = broker.streams
    for n in range(12):
        streams.append("capped", [str(n).encode()], max_length=5, max_age=DAY)
    streams.append("capped", [b"12", b"13"], max_length=5, max_age=DAY)
    assert _bodies(broker, "capped") == [b"9", b"10", b"11", b"12", b"13"]


def test_age_cap_drops_old_entries_and_a_trimmed_position_resumes(broker: Broker) -> None:
    streams = broker.streams
    streams.append("aged", [b"old"], max_length=BIG, max_age=0.3)
    first = streams.last("aged")
    wait_until(lambda: not _bodies(broker, "aged"), 5.0, "old entry to age out")
    streams.append("aged", [b"new"], max_length=BIG, max_age=0.3)
    assert _bodies(broker, "aged") == [b"new"]
    assert _bodies(broker, "aged", first) == [b"new"]  # its position was trimmed: no error


def test_since_starts_at_a_time(broker: Broker) -> None:
    streams = broker.streams
    streams.append("timed", [b"before"], max_length=BIG, max_age=DAY)
    before = streams.read("timed")[0].time
    wait_until(lambda: time.time() > before + 0.05, 2.0, "time to pass")
    cut = time.time()
    wait_until(lambda: time.time() > cut + 0.05, 2.0, "time to pass")
    streams.append("timed", [b"after"], max_length=BIG, max_age=DAY)
    assert [e.body for e in streams.read("timed", since=cut)] == [b"after"]
    assert [e.body for e in streams.read("timed", since=before - 1)] == [b"before", b"after"]


def test_read_waits_for_an_entry(broker: Broker, peer: Broker) -> None:
    streams = broker.streams
    last = streams.last("waited")
    started = time.monotonic()
    assert streams.read("waited", last, wait=0.2) == []
    assert time.monotonic() - started >= 0.15
    timer = threading.Timer(0.2, peer.streams.append, ("waited", [b"x"]), {
        "max_length": BIG, "max_age": DAY,
    })  # fmt: skip
    timer.start()
    try:
        started = time.monotonic()
        found = streams.read("waited", last, wait=5.0)
        assert [e.body for e in found] == [b"x"]
        assert time.monotonic() - started < 4.0
    finally:
        timer.cancel()


def test_a_bad_position_is_a_clear_error(broker: Broker) -> None:
    with pytest.raises(ValueError, match="stream position"):
        broker.streams.read("events", "not-a-position")


def test_concurrent_appenders_interleave_whole_batches_in_order(
    broker: Broker, peer: Broker
) -> None:
    """Writers on several connections at once (every worker process writes events): each
    batch stays together, positions increase along the stream, nothing is lost, and a
    follower reading page by page sees every entry exactly once."""
    writers = [broker, peer, broker, peer]

    def write(n: int) -> None:
        for batch in range(10):
            bodies = [f"{n}:{batch}:{i}".encode() for i in range(3)]
            writers[n].streams.append("busy", bodies, max_length=BIG, max_age=DAY)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(len(writers))]
    seen: list[bytes] = []
    position = START
    for thread in threads:
        thread.start()
    while len(seen) < 120:
        writing = any(t.is_alive() for t in threads)  # before the read: then all is written
        page = peer.streams.read("busy", position, limit=7, wait=0.5)
        assert page or writing, "entries went missing"
        seen += [entry.body for entry in page]
        position = page[-1].position if page else position
    for thread in threads:
        thread.join()
    everything = [f"{n}:{b}:{i}".encode() for n in range(4) for b in range(10) for i in range(3)]
    assert sorted(seen) == sorted(everything)
    positions = [
        tuple(int(part) for part in e.position.split("-"))
        for e in broker.streams.read("busy", limit=BIG)
    ]
    assert positions == sorted(positions) and len(set(positions)) == 120
    groups = [body.rsplit(b":", 1)[0] for body in seen]
    assert all(groups[i] == groups[i - i % 3] for i in range(len(groups)))


@pytest.mark.amqp
def test_rabbitmq_streams_need_a_server_that_keeps_them(
    request: pytest.FixtureRequest, key_prefix: str
) -> None:
    """RabbitMQ keeps its streams on its key/value server (brokers/amqp/streams.py); one
    that keeps none is refused with a sentence naming the fix, never silently dropped."""
    url = request.getfixturevalue("rabbit_server").url
    kv = f"sqlite:///{request.getfixturevalue('tmp_path')}/kv.db"
    for streams_url, error, match in [
        ("django://", NotImplementedError, "events and remote control.*streams_url"),
        (url, ConfigurationError, "must be a Redis, PostgreSQL or SQLite URL"),
    ]:
        options = {"kv_url": kv, "streams_url": streams_url}
        made = create_broker(url, BrokerOptions(key_prefix=key_prefix, transport_options=options))
        try:
            with pytest.raises(error, match=match):
                _ = made.streams
        finally:
            made.close()


@pytest.mark.amqp
@pytest.mark.parametrize(
    "server",
    [
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("postgres", marks=pytest.mark.postgres),
    ],
)
def test_rabbitmq_keeps_its_streams_on_its_key_value_server(
    server: str, request: pytest.FixtureRequest, key_prefix: str
) -> None:
    """With a Redis or PostgreSQL result store, RabbitMQ's events are that server's streams
    under ``<key_prefix>.amqp`` (what the conformance tests above check on SQLite)."""
    kv_url = _url(server, request)
    rabbit = request.getfixturevalue("rabbit_server").url
    options = BrokerOptions(key_prefix=key_prefix, transport_options={"kv_url": kv_url})
    made = create_broker(rabbit, options)
    direct = create_broker(kv_url, BrokerOptions(key_prefix=f"{key_prefix}.amqp"))
    try:
        made.streams.append("events", [b"a", b"b"], max_length=BIG, max_age=DAY)
        assert [e.body for e in direct.streams.read("events")] == [b"a", b"b"]
        assert made.streams.last("events") == direct.streams.last("events") != START
    finally:
        made.close()
        direct.close()
