"""The Redis broker names server settings that lose messages (logged by a worker at start)."""

from __future__ import annotations

import pytest

from conveyor.brokers import BrokerOptions, create_broker
from tests.servers import running_redis

pytestmark = pytest.mark.redis


@pytest.mark.parametrize("appendonly", [True, False])
def test_eviction_and_no_aof_are_named_with_their_fix(appendonly: bool) -> None:
    with running_redis(appendonly=appendonly) as server:
        broker = create_broker(server.url, BrokerOptions())
        try:
            before = broker.server_warnings()
            broker.client.config_set("maxmemory-policy", "allkeys-lru")  # type: ignore[attr-defined]
            after = broker.server_warnings()
        finally:
            broker.close()
    aof = "Redis appendonly is off: a restart loses every message since the last snapshot; "
    assert [w.startswith(aof) for w in before] == ([] if appendonly else [True])
    assert "allkeys-lru" in after[0] and "set maxmemory-policy noeviction" in after[0]
    assert after[1:] == before
