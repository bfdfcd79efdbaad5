"""The Redis key/value index of listed prefixes (``conveyor.kv.redis``): ``values`` of a listed
prefix reads the index instead of scanning the keyspace, builds the index once from keys an older
version wrote, and survives what a crash between the two writes leaves."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis

from conveyor._redis import ErrorMapper
from conveyor.brokers.base import BrokerOptions
from conveyor.brokers.redis import RedisBroker
from conveyor.exceptions import BrokerError
from conveyor.kv.redis import RedisKeyValue
from tests import helpers
from tests.helpers import redis_fixture
from tests.servers import RedisServer

pytestmark = pytest.mark.redis

server = redis_fixture(appendonly=False)


admin = helpers.redis_admin


@pytest.fixture
def broker(server: RedisServer) -> Iterator[RedisBroker]:
    built = RedisBroker(server.url, BrokerOptions(key_prefix=f"ix{uuid.uuid4().hex[:8]}"))
    yield built
    built.close()


def _scans(admin: redis.Redis) -> int:
    stats = admin.info("commandstats")
    return int(stats.get("cmdstat_scan", {}).get("calls", 0))


def test_listed_prefix_is_read_without_scanning(broker: RedisBroker, admin: redis.Redis) -> None:
    kv = broker.kv
    # Many unrelated keys, as queued messages would be: a scan would have to walk them all.
    admin.mset({f"{broker.keys.prefix}:noise:{n}": b"x" for n in range(5_000)})
    kv.set_value("worker:a@h", b"a", ttl=60)
    assert kv.values("worker:") == {"worker:a@h": b"a"}  # builds the index: scans once
    assert kv.values("queue-paused:") == {}
    before = _scans(admin)
    for _ in range(20):
        assert kv.values("worker:") == {"worker:a@h": b"a"}
    kv.set_value("queue-paused:q", b"1")
    assert kv.values("queue-paused:") == {"queue-paused:q": b"1"}
    assert _scans(admin) == before, "values() of a listed prefix scanned the keyspace"
    # Other prefixes still work, by a scan.
    kv.set_value("misc:1", b"m")
    assert kv.values("misc:") == {"misc:1": b"m"}
    assert _scans(admin) > before


def test_keys_written_before_the_index_are_listed(broker: RedisBroker, admin: redis.Redis) -> None:
    values = f"{broker.keys.prefix}:kv:"
    # As an older Conveyor wrote them: plain keys, one persistent, one expiring, no index.
    admin.set(values + "beat:enabled:nightly", b"0")
    admin.set(values + "worker:old@h", b"w", px=60_000)
    assert broker.kv.values("beat:enabled:") == {"beat:enabled:nightly": b"0"}
    assert broker.kv.values("worker:") == {"worker:old@h": b"w"}
    # Built once: a key written behind the index's back now is not seen (only writes through
    # the key/value store are) - which proves the second read came from the index.
    admin.set(values + "worker:sneaked@h", b"s")
    assert broker.kv.values("worker:") == {"worker:old@h": b"w"}
    broker.kv.set_value("worker:new@h", b"n")
    assert broker.kv.values("worker:") == {"worker:old@h": b"w", "worker:new@h": b"n"}


def test_members_without_values_are_skipped_and_stale_ones_dropped(
    broker: RedisBroker, admin: redis.Redis
) -> None:
    kv = broker.kv
    index = f"{broker.keys.prefix}:kv-index:worker:"
    kv.set_value("worker:live@h", b"l")
    assert kv.values("worker:") == {"worker:live@h": b"l"}
    # A writer that crashed after indexing but before writing; one whose key expired long ago.
    admin.zadd(index, {"worker:crashed@h": float("inf"), "worker:ancient@h": 1.0})
    assert kv.values("worker:") == {"worker:live@h": b"l"}
    assert admin.zscore(index, "worker:ancient@h") is None
    assert admin.zscore(index, "worker:crashed@h") is not None  # harmless: never listed


def test_nested_listed_prefixes_are_refused(broker: RedisBroker) -> None:
    with pytest.raises(ValueError, match="not nest"):
        RedisKeyValue(
            broker.client,
            ErrorMapper(BrokerError, "redis://", "Redis broker"),
            values="v:",
            sets="s:",
            index="i:",
            listed=("beat:", "beat:last:"),
        )


def test_every_listed_prefix_of_conveyor_is_indexed() -> None:
    """The prefixes Conveyor's modules list with ``values()`` are the indexed ones: a renamed
    prefix would silently fall back to scanning the keyspace."""
    from conveyor.beat.progress import LAST_PREFIX
    from conveyor.beat.switches import SWITCH_PREFIX
    from conveyor.brokers.amqp.broker import QUEUE_KEY
    from conveyor.brokers.amqp.scheduled import DELAYED_KEY
    from conveyor.control.client import PAUSED
    from conveyor.kv import LISTED_PREFIXES
    from conveyor.registry import ANNOUNCEMENT_PREFIX

    used = {LAST_PREFIX, SWITCH_PREFIX, QUEUE_KEY, DELAYED_KEY, PAUSED, ANNOUNCEMENT_PREFIX}
    assert used == set(LISTED_PREFIXES)
