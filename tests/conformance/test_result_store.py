"""The ResultStore promises (src/conveyor/results/base.py), run against every result store.
Its key/value storage (``store.kv``) is checked by test_kv.py."""

from __future__ import annotations

import time

import pytest

from conveyor.results.base import ResultRecord, ResultStore
from conveyor.states import EXPIRED, FAILURE, QUEUED, READY_STATES, RETRY, STARTED, SUCCESS

from .conftest import StoreFactory
from .support import EARLY_SLACK, PROMPT, hold, new_id, start, wait_until


def record(state: str = SUCCESS, task_id: str | None = None, **fields: object) -> ResultRecord:
    return ResultRecord(id=task_id or new_id(), state=state, **fields)  # type: ignore[arg-type]


def full_record(task_id: str) -> ResultRecord:
    """A record with every field set to a non-default value."""
    return ResultRecord(
        id=task_id,
        state=FAILURE,
        result={
            "type": "ValueError",
            "message": 'bad ✓ ü \u0000 "quoted"',
            "items": [1, 2.5, -0.0, None, True, 2**62, "x"],
            "tagged": {"$type": "decimal", "v": "1.10"},
        },
        traceback='Traceback (most recent call last):\n  File "t.py", line 1\nValueError: bad\n',
        date_done=1700000000.123456,
        retries=3,
        name="app.tasks.add",
        args=[1, "two", [3.5, None]],
        kwargs={"x": {"y": [True, False]}, "z": None},
        worker="celery@host-1",
        queue="reports",
        created_at=1699999999.5,
        started_at=1699999999.75,
        parent_id=new_id(),
        root_id=new_id(),
        group_id=new_id(),
        children=[new_id(), new_id()],
        periodic_entry="nightly-report",
    )


# -- store / get -------------------------------------------------------------------------
def test_store_get_round_trips_every_field(
    result_store: ResultStore, store_peer: ResultStore
) -> None:
    sent = full_record(new_id())
    result_store.store([sent])
    for store in (result_store, store_peer):
        got = store.get(sent.id)
        assert got == sent
        assert got is not None
        for field in ResultRecord.__struct_fields__:
            assert getattr(got, field) == getattr(sent, field), field


def test_minimal_record_keeps_defaults(result_store: ResultStore) -> None:
    sent = record(QUEUED)
    result_store.store([sent])
    assert result_store.get(sent.id) == ResultRecord(id=sent.id, state=QUEUED)


def test_get_unknown_id_is_none(result_store: ResultStore) -> None:
    assert result_store.get(new_id()) is None


def test_store_replaces_whole_record(result_store: ResultStore) -> None:
    task_id = new_id()
    result_store.store([record(QUEUED, task_id, name="t", queue="q")])
    result_store.store([record(STARTED, task_id, worker="w1")])
    assert result_store.get(task_id) == ResultRecord(id=task_id, state=STARTED, worker="w1")
    result_store.store([record(SUCCESS, task_id, result=[1, 2])])
    assert result_store.get(task_id) == ResultRecord(id=task_id, state=SUCCESS, result=[1, 2])


def test_store_batch_and_get_many(result_store: ResultStore) -> None:
    batch = [record(SUCCESS, result=n) for n in range(5)]
    result_store.store(batch)
    result_store.store([])
    unknown = new_id()
    asked = [batch[3].id, unknown, batch[0].id]
    assert result_store.get_many(asked) == [batch[3], None, batch[0]]


# -- wait --------------------------------------------------------------------------------
@pytest.mark.parametrize("state", sorted(READY_STATES))
def test_wait_returns_at_once_for_ready_record(result_store: ResultStore, state: str) -> None:
    sent = record(state, result={"v": 1})
    result_store.store([sent])
    began = time.monotonic()
    assert result_store.wait(sent.id, 5.0) == sent
    assert time.monotonic() - began < PROMPT


def test_wait_zero_timeout_returns_current_record(result_store: ResultStore) -> None:
    sent = record(STARTED)
    result_store.store([sent])
    began = time.monotonic()
    assert result_store.wait(sent.id, 0) == sent
    assert result_store.wait(new_id(), 0) is None
    assert time.monotonic() - began < PROMPT


@pytest.mark.parametrize("writer", ["same", "peer"])
def test_wait_wakes_promptly_when_ready_state_is_stored(
    result_store: ResultStore, store_peer: ResultStore, writer: str
) -> None:
    task_id = new_id()
    target = result_store if writer == "same" else store_peer
    target.store([record(QUEUED, task_id)])
    waiter = start(result_store.wait, task_id, 5.0)
    hold(0.2)
    target.store([record(STARTED, task_id)])  # not ready: the waiter keeps waiting
    target.store([record(RETRY, task_id)])
    hold(0.2)
    assert waiter.is_alive(), "wait() returned on a non-ready state"
    done = record(SUCCESS, task_id, result=42)
    target.store([done])
    stored_at = time.monotonic()

    assert waiter.outcome() == done
    latency = waiter.finished_at - stored_at
    assert latency < PROMPT, f"wait() returned {latency:.2f}s after the ready state was stored"


def test_wait_without_timeout_blocks_until_ready(
    result_store: ResultStore, store_peer: ResultStore
) -> None:
    task_id = new_id()
    waiter = start(result_store.wait, task_id, None)
    hold(0.2)
    assert waiter.is_alive()
    done = record(FAILURE, task_id, result={"type": "KeyError", "message": "k"})
    store_peer.store([done])
    assert waiter.outcome(5.0) == done


def test_wait_timeout_returns_latest_non_ready_record(result_store: ResultStore) -> None:
    task_id = new_id()
    result_store.store([record(QUEUED, task_id)])
    latest = record(STARTED, task_id, worker="w1")
    result_store.store([latest])
    began = time.monotonic()
    assert result_store.wait(task_id, 0.4) == latest
    elapsed = time.monotonic() - began
    assert 0.4 - EARLY_SLACK <= elapsed < 0.4 + PROMPT


def test_wait_timeout_on_unknown_id_returns_none(result_store: ResultStore) -> None:
    began = time.monotonic()
    assert result_store.wait(new_id(), 0.3) is None
    assert 0.3 - EARLY_SLACK <= time.monotonic() - began < 0.3 + PROMPT


def test_wait_ignores_other_tasks(result_store: ResultStore) -> None:
    mine = new_id()
    waiter = start(result_store.wait, mine, 0.6)
    hold(0.1)
    result_store.store([record(SUCCESS) for _ in range(3)])
    assert waiter.outcome() is None


def test_concurrent_waiters_all_wake(result_store: ResultStore, store_peer: ResultStore) -> None:
    task_id = new_id()
    other_id = new_id()
    waiters = [start(result_store.wait, task_id, 5.0) for _ in range(6)]
    waiters += [start(store_peer.wait, task_id, 5.0) for _ in range(2)]
    bystander = start(result_store.wait, other_id, 1.0)
    hold(0.3)
    done = record(EXPIRED, task_id)
    store_peer.store([done])
    stored_at = time.monotonic()
    for waiter in waiters:
        assert waiter.outcome() == done
        assert waiter.finished_at - stored_at < PROMPT
    assert bystander.outcome() is None


# -- forget / expiry ---------------------------------------------------------------------
def test_forget(result_store: ResultStore) -> None:
    kept, gone1, gone2 = record(), record(), record()
    result_store.store([kept, gone1, gone2])
    result_store.forget([gone1.id, gone2.id, new_id()])
    assert result_store.get_many([kept.id, gone1.id, gone2.id]) == [kept, None, None]
    result_store.forget([])


def test_records_expire_and_cleanup_removes_them(make_store: StoreFactory) -> None:
    store = make_store(expires=0.5)
    stored_at = time.monotonic()
    records = [record(SUCCESS), record(STARTED)]
    store.store(records)
    assert store.get(records[0].id) == records[0]

    wait_until(lambda: time.monotonic() - stored_at > 0.5 + EARLY_SLACK, 5.0, "expiry")
    removed = store.cleanup()
    assert isinstance(removed, int)
    assert 0 <= removed <= len(records)
    assert store.get_many([r.id for r in records]) == [None, None]
    assert store.wait(records[0].id, 0) is None
    assert store.cleanup() == 0


def test_record_expiry_is_counted_from_each_write(make_store: StoreFactory) -> None:
    store = make_store(expires=1.0)
    task_id = new_id()
    first_at = time.monotonic()
    store.store([record(STARTED, task_id)])
    hold(0.5)
    store.store([record(SUCCESS, task_id)])
    rewritten_at = time.monotonic()
    wait_until(lambda: time.monotonic() - first_at > 1.2, 5.0, "first write's expiry")
    assert store.get(task_id) is not None, "expired counting from the first write"
    wait_until(lambda: store.get(task_id) is None, 5.0, "expiry of the second write")
    assert time.monotonic() - rewritten_at >= 1.0 - EARLY_SLACK


def test_records_without_expiry_stay(make_store: StoreFactory) -> None:
    store = make_store(expires=None)
    sent = record()
    store.store([sent])
    store.cleanup()
    assert store.get(sent.id) == sent


# -- kv ----------------------------------------------------------------------------------
def test_cleanup_removes_expired_kv_entries(result_store: ResultStore) -> None:
    """The store's ``kv`` (checked on its own by test_kv.py) is cleaned up with the records."""
    result_store.kv.set_value("short", b"x", ttl=0.3)
    result_store.kv.join("set", "a", 0.3)
    result_store.kv.set_value("kept", b"y")
    set_at = time.monotonic()
    wait_until(lambda: time.monotonic() - set_at > 0.3 + EARLY_SLACK, 5.0, "kv expiry")
    assert result_store.cleanup() >= 0
    assert result_store.kv.get_value("short") is None
    assert result_store.kv.join("set", "b") == 1
    assert result_store.kv.get_value("kept") == b"y"


# -- isolation and persistence -----------------------------------------------------------
def test_key_prefix_isolates_stores(result_store: ResultStore, make_store: StoreFactory) -> None:
    other = make_store(prefix=f"{result_store.key_prefix}x")
    sent = record()
    result_store.store([sent])

    assert other.get(sent.id) is None
    assert other.wait(sent.id, 0) is None


def test_state_survives_a_new_client(
    result_store: ResultStore, store_backend: str, make_store: StoreFactory
) -> None:
    if store_backend == "memory":
        pytest.skip("memory:// state lives in one store object by design")
    sent = full_record(new_id())
    result_store.store([sent])
    result_store.close()

    fresh = make_store()
    assert fresh.get(sent.id) == sent
