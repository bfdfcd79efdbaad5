"""RedisResultStore on a real redis-server: TTLs, blocking wait, atomic join, resilience.

Shared promises are in tests/conformance; this file checks the Redis specifics.
"""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from conveyor.exceptions import ResultStoreError
from conveyor.results.base import ResultRecord
from conveyor.results.redis import WAKE_TTL_MS, RedisResultStore
from tests import helpers
from tests.conftest import wait_until
from tests.helpers import Call, closing_all, redis_fixture
from tests.servers import RedisServer, free_port

pytestmark = pytest.mark.redis

PASSWORD = "an0ther-Secret"


def blocked(client: redis.Redis, count: int = 1) -> bool:
    return sum(1 for c in client.client_list() if c.get("cmd") == "blmove") >= count


def rec(state: str = "SUCCESS", task_id: str | None = None, **fields: Any) -> ResultRecord:
    return ResultRecord(task_id or uuid.uuid4().hex, state, **fields)


server = redis_fixture(appendonly=True)  # AOF fsynced on every write
admin = helpers.redis_admin


@pytest.fixture
def make(server: RedisServer) -> Iterator[Callable[..., RedisResultStore]]:
    prefix = f"r{uuid.uuid4().hex[:10]}"

    def make(expires: float | None = 600.0) -> RedisResultStore:
        return RedisResultStore(server.url, expires=expires, key_prefix=prefix)

    yield from closing_all(make)


@pytest.fixture
def store(make: Callable[..., RedisResultStore]) -> RedisResultStore:
    return make()


def key(store: RedisResultStore, kind: str, name: str) -> str:
    return f"{store.key_prefix}:{kind}:{name}"


# -- records and TTLs --------------------------------------------------------------------
def test_records_carry_the_expiry_as_a_redis_ttl(
    make: Callable[..., RedisResultStore], admin: redis.Redis
) -> None:
    timed, forever = make(expires=120.0), make(expires=None)
    queued, done = rec("QUEUED"), rec("SUCCESS", result=[1, {"a": None}])
    timed.store([queued, done])
    assert 119_000 < admin.pttl(key(timed, "result", queued.id)) <= 120_000
    assert timed.get(done.id) == done
    assert not admin.exists(key(timed, "result-wake", queued.id)), "no token for a non-ready one"
    assert 0 < admin.pttl(key(timed, "result-wake", done.id)) <= WAKE_TTL_MS

    kept = rec()
    forever.store([kept])
    assert admin.pttl(key(forever, "result", kept.id)) == -1
    assert forever.cleanup() == 0


def test_keys_live_under_the_prefix(store: RedisResultStore, admin: redis.Redis) -> None:
    done = rec()
    store.store([done])
    store.kv.join("chord", "a", 60)
    store.kv.claim("unlock", 60)
    store.kv.set_value("group", b"g")
    keys = sorted(k.decode() for k in admin.scan_iter(match=f"{store.key_prefix}:*"))
    assert keys == sorted(
        [
            key(store, "join", "chord"),
            key(store, "result", done.id),
            key(store, "result-wake", done.id),
            key(store, "value", "group"),
            key(store, "value", "unlock"),
        ]
    )
    store.forget([done.id])
    store.kv.delete_value("chord")
    assert not admin.exists(key(store, "result", done.id), key(store, "result-wake", done.id))
    assert not admin.exists(key(store, "join", "chord"))


def test_join_and_claim_set_ttls(store: RedisResultStore, admin: redis.Redis) -> None:
    assert store.kv.join("c", "a", 30) == 1
    assert store.kv.join("c", "a", 30) == 1
    assert store.kv.join("c", "b", 30) == 2
    assert 29_000 < admin.pttl(key(store, "join", "c")) <= 30_000
    assert store.kv.join("persistent", "a") == 1
    assert admin.pttl(key(store, "join", "persistent")) == -1

    assert store.kv.claim("k", 45) is True
    assert store.kv.claim("k", 45) is False
    assert 44_000 < admin.pttl(key(store, "value", "k")) <= 45_000


# -- wait --------------------------------------------------------------------------------
def test_wait_wakes_within_milliseconds(
    make: Callable[..., RedisResultStore], admin: redis.Redis
) -> None:
    waiter_store, writer = make(), make()
    latencies = []
    for _ in range(5):
        task_id = uuid.uuid4().hex
        call = Call(lambda t=task_id: waiter_store.wait(t, 5.0))
        wait_until(lambda: blocked(admin))
        stored_at = time.perf_counter()
        writer.store([rec("SUCCESS", task_id, result=1)])
        assert call.result().result == 1
        latencies.append(call.done_at - stored_at)
    assert statistics.median(latencies) < 0.05, latencies


def test_a_woken_wait_reads_the_record_in_the_same_round_trip(
    make: Callable[..., RedisResultStore], admin: redis.Redis
) -> None:
    waiter_store, writer = make(), make()
    writer.store([rec("SUCCESS")])  # the writer's connection and handshake
    task_id = uuid.uuid4().hex
    call = Call(lambda: waiter_store.wait(task_id, 5.0))
    wait_until(lambda: blocked(admin))
    reads = admin.info("stats")["total_reads_processed"]
    writer.store([rec("SUCCESS", task_id, result=1)])
    assert call.result().result == 1
    # The store and this INFO: the GET was sent with the BLMOVE and ran when it returned.
    assert admin.info("stats")["total_reads_processed"] - reads == 2


def test_a_wait_for_a_task_this_store_just_queued_blocks_before_reading(
    make: Callable[..., RedisResultStore], admin: redis.Redis
) -> None:
    store, writer = make(), make()
    task_id = uuid.uuid4().hex
    store.store([rec("QUEUED", task_id)])  # as a delay() through this store does
    admin.config_resetstat()
    call = Call(lambda: store.wait(task_id, 5.0))
    wait_until(lambda: blocked(admin))
    writer.store([rec("SUCCESS", task_id, result=1)])
    assert call.result().result == 1
    assert admin.info("commandstats")["cmdstat_get"]["calls"] == 1  # behind the BLMOVE


def test_a_just_queued_task_that_finished_or_no_time_left_returns_at_once(
    store: RedisResultStore,
) -> None:
    queued, done = uuid.uuid4().hex, uuid.uuid4().hex
    store.store([rec("QUEUED", queued), rec("QUEUED", done)])
    assert store.wait(queued, 0) == rec("QUEUED", queued)  # read, never blocked on
    store.store([rec("SUCCESS", done, result=2)])
    began = time.monotonic()
    assert store.wait(done, 5.0) == rec("SUCCESS", done, result=2)  # its wake token
    assert time.monotonic() - began < 0.5


def test_many_waiters_wake_together(
    make: Callable[..., RedisResultStore], admin: redis.Redis
) -> None:
    stores = [make() for _ in range(3)]
    task_id = uuid.uuid4().hex
    calls = [Call(lambda s=s: s.wait(task_id, 5.0)) for s in stores for _ in range(3)]
    wait_until(lambda: blocked(admin, len(calls)))
    stored_at = time.perf_counter()
    done = rec("FAILURE", task_id, result={"type": "KeyError", "message": "k"})
    stores[0].store([done])
    assert [c.result() for c in calls] == [done] * len(calls)
    assert max(c.done_at for c in calls) - stored_at < 0.1
    late = time.perf_counter()
    assert stores[1].wait(task_id, 5.0) == done  # an arrival after the store: no wait at all
    assert time.perf_counter() - late < 0.05


def test_wait_does_not_spin_on_a_token_of_an_earlier_ready_state(
    store: RedisResultStore, admin: redis.Redis
) -> None:
    task_id = uuid.uuid4().hex
    store.store([rec("SUCCESS", task_id)])  # leaves a wake token
    store.store([rec("STARTED", task_id)])  # redelivered: running again
    admin.config_resetstat()
    began = time.monotonic()
    assert store.wait(task_id, 0.5) == rec("STARTED", task_id)
    assert time.monotonic() - began >= 0.5
    assert admin.info("commandstats")["cmdstat_get"]["calls"] <= 4


# -- errors and restarts -----------------------------------------------------------------
def test_errors_are_result_store_errors_without_the_password() -> None:
    port = free_port()
    store = RedisResultStore(f"redis://:{PASSWORD}@127.0.0.1:{port}/0")
    for call in (
        lambda: store.get("x"),
        lambda: store.wait("x", 1),
        lambda: store.kv.join("k", "m"),
    ):
        with pytest.raises(ResultStoreError) as info:
            call()
        assert PASSWORD not in str(info.value)
        assert f":***@127.0.0.1:{port}" in str(info.value)
    store.close()


def test_restart_keeps_records_and_wait_resumes() -> None:
    server = RedisServer(appendonly=True)
    server.start()
    store = RedisResultStore(server.url, key_prefix="restart")
    try:
        kept = rec(result="kept")
        store.store([kept])
        store.kv.join("chord", "a")
        server.kill()
        with pytest.raises(ResultStoreError):
            store.get(kept.id)
        server.start()

        assert store.get(kept.id) == kept
        assert store.kv.join("chord", "b") == 2
        task_id = uuid.uuid4().hex
        call = Call(lambda: store.wait(task_id, 5.0))
        writer = RedisResultStore(server.url, key_prefix="restart")
        wait_until(lambda: blocked(writer.client))
        writer.store([rec(task_id=task_id)])
        assert call.result() == rec(task_id=task_id)
        writer.close()
    finally:
        store.close()
        server.cleanup()
