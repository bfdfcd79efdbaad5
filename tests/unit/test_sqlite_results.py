"""SQLite result store specifics on real files: schema, bad files, corruption, expiry, waits.

The behaviour every result store shares is covered by tests/conformance.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor.exceptions import ConfigurationError, ConveyorError, ResultStoreError
from conveyor.results import create_result_store
from conveyor.results.base import ResultRecord
from conveyor.results.sqlite import MIGRATIONS, SQLiteResultStore
from tests.conftest import wait_until
from tests.helpers import closing_all
from tests.helpers import raw_sqlite as raw


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "results.db"


@pytest.fixture
def make(db_path: Path) -> Iterator[Callable[..., SQLiteResultStore]]:
    def make(expires: float | None = 60.0, key_prefix: str = "conveyor") -> SQLiteResultStore:
        return SQLiteResultStore(f"sqlite:///{db_path}", expires=expires, key_prefix=key_prefix)

    yield from closing_all(make)


@pytest.fixture
def store(make: Callable[..., SQLiteResultStore]) -> SQLiteResultStore:
    return make()


def done(task_id: str, result: Any = None) -> ResultRecord:
    return ResultRecord(id=task_id, state="SUCCESS", result=result)


def test_created_through_the_registry_and_versioned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = create_result_store("sqlite://", expires=10.0, key_prefix="conveyor")
    assert isinstance(store, SQLiteResultStore)
    store.store([done("a")])
    store.close()
    with raw(tmp_path / "conveyor.sqlite3") as conn:
        versions = dict(conn.execute("SELECT component, version FROM conveyor_meta"))
    assert versions == {"results": len(MIGRATIONS)}


def test_in_memory_database_is_refused() -> None:
    with pytest.raises(ConfigurationError):
        SQLiteResultStore("sqlite:///:memory:")


# -- bad files ---------------------------------------------------------------------------
def assert_one_error(call: Callable[[], object], path: Path, match: str) -> None:
    with pytest.raises(ResultStoreError) as info:
        call()
    assert str(path) in str(info.value)
    assert match in str(info.value)
    assert not isinstance(info.value.__cause__, ConveyorError)


def test_bad_directory(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    path = tmp_path / "file" / "results.db"
    store = SQLiteResultStore(f"sqlite:///{path}")
    assert_one_error(lambda: store.get("a"), path, "cannot create the directory")


def test_read_only_file(store: SQLiteResultStore, db_path: Path) -> None:
    store.store([done("a")])
    store.close()
    db_path.chmod(0o444)
    assert_one_error(lambda: store.get("a"), db_path, "read-only")


def test_not_a_conveyor_database(db_path: Path) -> None:
    db_path.write_bytes(b"SQLite format 2\x00" + os.urandom(4000))
    store = SQLiteResultStore(f"sqlite:///{db_path}")
    assert_one_error(lambda: store.store([done("a")]), db_path, "not a Conveyor database")


def test_foreign_tables_are_refused(db_path: Path) -> None:
    with raw(db_path) as conn:
        conn.execute("CREATE TABLE django_migrations (id INTEGER PRIMARY KEY)")
    store = SQLiteResultStore(f"sqlite:///{db_path}")
    assert_one_error(lambda: store.get("a"), db_path, "django_migrations")


def test_corrupt_record_is_a_clear_error(store: SQLiteResultStore, db_path: Path) -> None:
    store.store([done("a"), done("b")])
    with raw(db_path) as conn:
        conn.execute("UPDATE conveyor_results SET record = x'7b6e6f' WHERE id = 'a'")
    with pytest.raises(ResultStoreError, match=r"task a .* corrupt"):
        store.get("a")
    assert store.get("b") == done("b")


# -- expiry and cleanup ------------------------------------------------------------------
def test_cleanup_counts_records_values_and_sets(make: Callable[..., SQLiteResultStore]) -> None:
    store = make(expires=0.05)
    store.store([done("a"), done("b")])
    store.kv.set_value("v", b"1", ttl=0.05)
    store.kv.set_value("kept", b"1")
    store.kv.join("set", "m1", 0.05)
    store.kv.join("set", "m2", 0.05)
    assert store.kv.claim("claim", 0.05)
    expired = time.time() + 0.06
    wait_until(lambda: time.time() > expired, what="expiry")
    assert store.cleanup() == 5  # two records, two values (one a claim), one set
    assert store.cleanup() == 0
    assert store.kv.get_value("kept") == b"1"
    assert store.kv.join("set", "m3") == 1


def test_cleanup_spares_other_prefixes(make: Callable[..., SQLiteResultStore]) -> None:
    mine, theirs = make(expires=0.05, key_prefix="a"), make(expires=0.05, key_prefix="b")
    mine.store([done("x")])
    theirs.store([done("x", 2)])
    expired = time.time() + 0.06
    wait_until(lambda: time.time() > expired, what="expiry")
    assert mine.cleanup() == 1
    assert theirs.cleanup() == 1


def test_join_ttl_none_keeps_the_set(store: SQLiteResultStore) -> None:
    assert store.kv.join("s", "a", 0.05) == 1
    assert store.kv.join("s", "b") == 2  # the last join's ttl wins: no expiry now
    expired = time.time() + 0.06
    wait_until(lambda: time.time() > expired, what="old ttl")
    assert store.cleanup() == 0
    assert store.kv.join("s", "c") == 3


# -- waiting -----------------------------------------------------------------------------
def wait_latency(waiter: SQLiteResultStore, writer: SQLiteResultStore) -> float:
    got: list[ResultRecord | None] = []
    thread = threading.Thread(target=lambda: got.append(waiter.wait("t", 5.0)))
    thread.start()
    threading.Event().wait(0.2)  # let the waiter reach its longest poll interval
    began = time.monotonic()
    writer.store([done("t", 42)])
    thread.join(5.0)
    latency = time.monotonic() - began
    assert got == [done("t", 42)]
    return latency


def test_wait_wakes_on_a_store_from_another_client(
    make: Callable[..., SQLiteResultStore],
) -> None:
    waiter, writer = make(), make()
    assert wait_latency(waiter, writer) < waiter.poll_interval + 0.2


def test_wait_wakes_at_once_on_a_store_through_the_same_object(store: SQLiteResultStore) -> None:
    # Polling every 60 s and waiting 5: only the in-process wake can deliver the result (the
    # bound is loose so a loaded machine does not fail it; a poll would take 60 s).
    store.poll_interval = 60.0
    assert wait_latency(store, store) < 2.0


# -- processes ---------------------------------------------------------------------------
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fork_child_writes_and_parent_reads(store: SQLiteResultStore) -> None:
    store.store([done("parent")])
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = 0 if store.get("parent") == done("parent") else 2
            store.store([done("child")])
            store.kv.join("set", "child")
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert store.get("child") == done("child")
    assert store.kv.join("set", "parent") == 2
