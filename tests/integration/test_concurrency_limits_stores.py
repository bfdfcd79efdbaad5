"""Concurrency slots of every broker's limit store (``broker.limits``): at most ``limit``
live holders per key, idempotent re-acquire, release, renew, and lapse at the deadline -
against real servers (SQLite files, redis-server, PostgreSQL) and memory. The fixtures are
the rate-limit store tests'."""

from __future__ import annotations

import threading

import pytest

from conveyor.limits.store import LimitStore
from tests.conftest import wait_until
from tests.integration.test_rate_limits_stores import (  # noqa: F401 - fixtures
    broker_fixture,
    redis_server,
    store_fixture,
)


def test_at_most_limit_holders(store: LimitStore) -> None:
    assert store.acquire("task:x", 2, "t1", 30)
    assert store.acquire("task:x", 2, "t2", 30)
    assert not store.acquire("task:x", 2, "t3", 30)
    assert store.holders("task:x") == ["t1", "t2"]


def test_same_holder_acquires_again(store: LimitStore) -> None:
    assert store.acquire("task:x", 1, "t1", 30)
    assert store.acquire("task:x", 1, "t1", 30)  # a redelivery of the same task
    assert store.holders("task:x") == ["t1"]


def test_release_frees_a_slot(store: LimitStore) -> None:
    assert store.acquire("task:x", 1, "t1", 30)
    assert not store.acquire("task:x", 1, "t2", 30)
    store.release("task:x", "t1")
    store.release("task:x", "t1")  # no error when not held
    assert store.acquire("task:x", 1, "t2", 30)


def test_keys_are_independent(store: LimitStore) -> None:
    assert store.acquire("task:x:account-1", 1, "t1", 30)
    assert store.acquire("task:x:account-2", 1, "t2", 30)
    assert not store.acquire("task:x:account-1", 1, "t3", 30)
    # a key that is a prefix of another is still its own limit
    assert store.acquire("task:x:account", 1, "t4", 30)


def test_unrenewed_slots_lapse_renewed_ones_stay(store: LimitStore) -> None:
    assert store.acquire("task:y", 2, "dies", 0.3)
    assert store.acquire("task:y", 2, "lives", 0.3)
    assert not store.acquire("task:y", 2, "waits", 0.3)

    def renewed_and_lapsed() -> bool:
        store.renew([("task:y", "lives")], 0.3)
        return store.holders("task:y") == ["lives"]

    wait_until(renewed_and_lapsed, 5.0, "the unrenewed slot lapsed", interval=0.05)
    assert store.acquire("task:y", 2, "waits", 30)
    assert not store.acquire("task:y", 2, "another", 30)


def test_renew_does_not_bring_back_a_released_slot(store: LimitStore) -> None:
    assert store.acquire("task:z", 1, "t1", 30)
    store.release("task:z", "t1")
    store.renew([("task:z", "t1")], 30)
    assert store.holders("task:z") == []


def test_concurrent_acquires_hand_out_exactly_limit(store: LimitStore) -> None:
    won: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(12)

    def contend(name: str) -> None:
        barrier.wait(5)
        if store.acquire("task:race", 3, name, 30):
            with lock:
                won.append(name)

    threads = [threading.Thread(target=contend, args=(f"h{i}",)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(won) == 3
    assert store.holders("task:race") == sorted(won)


@pytest.mark.parametrize("limit", [1, 4])
def test_limit_of_one_is_a_mutex(store: LimitStore, limit: int) -> None:
    for i in range(limit):
        assert store.acquire("task:m", limit, f"t{i}", 30)
    assert not store.acquire("task:m", limit, "late", 30)
