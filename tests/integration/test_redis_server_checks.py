"""A worker names, at start, the Redis settings that lose messages (the doctor's storage
checks, conveyor.doctor.startup_warnings)."""

from __future__ import annotations

import pytest

from conveyor import Conveyor
from conveyor.doctor import startup_warnings
from tests.servers import running_redis

pytestmark = pytest.mark.redis


@pytest.mark.parametrize("appendonly", [True, False])
def test_eviction_and_no_aof_are_named_with_their_fix(appendonly: bool) -> None:
    with running_redis(appendonly=appendonly) as server:
        app = Conveyor("checks", broker=server.url)
        try:
            before = [f.message for f in startup_warnings(app)]
            app.broker.client.config_set("maxmemory-policy", "allkeys-lru")  # type: ignore[attr-defined]
            after = startup_warnings(app)
        finally:
            app.close()
    assert [("appendonly" in m) for m in before] == ([] if appendonly else [True])
    evicting = [f for f in after if "allkeys-lru" in f.message]
    assert len(evicting) == 1 and "noeviction" in evicting[0].fix
    assert len(after) == len(before) + 1


def test_the_worker_logs_them_at_start(tmp_path: pytest.TempPathFactory) -> None:
    from tests.integration.test_worker_processes import Harness, wait_for

    with running_redis(appendonly=False) as server:
        harness = Harness(server.url, {}, tmp_path)  # type: ignore[arg-type]
        try:
            worker = harness.worker("-c", "1")
            wait_for(lambda: "appendonly" in worker.output(), 30, "the start-up warning")
            assert "fix:" in worker.output()
        finally:
            harness.close()
