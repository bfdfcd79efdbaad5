"""SQLite broker specifics on real files: URLs, schema, bad files, corruption, locks, fork.

The behaviour every broker shares is covered by tests/conformance; this file covers what only
the SQLite broker has.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor._sqlite import APPLICATION_ID, Database, path_from_url
from conveyor.brokers import create_broker
from conveyor.brokers.base import BrokerOptions, DeadLetterReason, Delivery, Message, QueueStats
from conveyor.brokers.sqlite import SQLiteBroker
from conveyor.brokers.sqlite.schema import DELAYED, MIGRATIONS, READY
from conveyor.exceptions import BrokerError, ConfigurationError, ConveyorError
from conveyor.results.base import ResultRecord
from conveyor.results.sqlite import SQLiteResultStore
from conveyor.settlement import open_settlement
from conveyor.settlement.sqlite import SQLiteSettlement
from tests.conftest import wait_until
from tests.helpers import closing_all
from tests.helpers import raw_sqlite as raw

Q = "default"


def msg(n: int | str, queue: str = Q, **fields: Any) -> Message:
    return Message(str(n), queue, f"body-{n}".encode(), **fields)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "q.db"


@pytest.fixture
def make(db_path: Path) -> Iterator[Callable[..., SQLiteBroker]]:
    def make(**options: Any) -> SQLiteBroker:
        return SQLiteBroker(f"sqlite:///{db_path}", BrokerOptions(**options))

    yield from closing_all(make)


@pytest.fixture
def broker(make: Callable[..., SQLiteBroker]) -> SQLiteBroker:
    return make()


# -- URLs and files ----------------------------------------------------------------------
def test_url_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert path_from_url("sqlite://") == tmp_path / "conveyor.sqlite3"
    assert path_from_url("sqlite:///") == tmp_path / "conveyor.sqlite3"
    assert path_from_url("sqlite:///rel/q.db") == tmp_path / "rel" / "q.db"
    assert path_from_url("sqlite:////abs/dir/q.db") == Path("/abs/dir/q.db")
    assert path_from_url("sqlite:///with%20space.db?x=1") == tmp_path / "with space.db"


def test_default_url_is_a_file_in_the_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    broker = create_broker("sqlite://", BrokerOptions())
    assert isinstance(broker, SQLiteBroker)
    broker.publish([msg(1)])
    broker.close()
    assert (tmp_path / "conveyor.sqlite3").is_file()


def test_in_memory_database_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="memory://"):
        SQLiteBroker("sqlite:///:memory:")


def test_file_and_directories_are_created_on_first_use(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "q.db"
    broker = SQLiteBroker(f"sqlite:///{path}")
    assert not path.exists(), "constructing a broker must not touch the disk"
    broker.publish([msg(1)])
    assert path.is_file()
    broker.close()


def test_schema_is_versioned_and_marked(broker: SQLiteBroker, db_path: Path) -> None:
    broker.publish([msg(1)])
    with raw(db_path) as conn:
        assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        versions = dict(conn.execute("SELECT component, version FROM conveyor_meta"))
    assert versions == {"broker": len(MIGRATIONS)}


def test_broker_and_result_store_share_a_file(broker: SQLiteBroker, db_path: Path) -> None:
    store = SQLiteResultStore(f"sqlite:///{db_path}")
    try:
        settlement = open_settlement(broker, store)
        assert isinstance(settlement, SQLiteSettlement) and settlement.together is store
        record = ResultRecord(id="t1", state="QUEUED")
        settlement.publish([msg("t1")], [record])
        assert store.get("t1") == record
        assert [d.id for d in broker.lease([Q], 10, 0)] == ["t1"]
        with raw(db_path) as conn:
            versions = dict(conn.execute("SELECT component, version FROM conveyor_meta"))
        assert set(versions) == {"broker", "results"}
    finally:
        store.close()


def test_a_v1_file_keeps_its_values_and_gains_join_sets(
    make: Callable[..., SQLiteBroker], db_path: Path
) -> None:
    old = make()
    old.kv.set_value("beat:last:x", b"v")
    assert old.kv.claim("beat:claim:x", 60)
    old.close()
    with raw(db_path) as conn:  # as Conveyor wrote it before the broker's kv had join sets
        conn.execute("DROP TABLE conveyor_sets")
        conn.execute("DROP TABLE conveyor_set_expiry")
        conn.execute("DROP TABLE conveyor_published")  # v3
        conn.execute("DROP TABLE conveyor_streams")  # v4
        conn.execute("DROP TABLE conveyor_stream_heads")
        conn.execute("DROP TABLE conveyor_departures")  # v5
        conn.execute("DROP INDEX conveyor_dead_queue")  # v6 (it also remade two others)
        conn.execute("UPDATE conveyor_meta SET version = 1 WHERE component = 'broker'")
        stored = conn.execute("SELECT key, value FROM conveyor_values ORDER BY key").fetchall()
    assert stored == [("beat:claim:x", b"1"), ("beat:last:x", b"v")]

    upgraded = make()
    assert upgraded.kv.get_value("beat:last:x") == b"v"
    assert upgraded.kv.claim("beat:claim:x", 60) is False
    assert upgraded.kv.join("j", "m") == 1
    upgraded.publish([msg(1), msg(1)])  # v3: ids published lately are remembered
    assert len(upgraded.lease([Q], 10, 0)) == 1
    with raw(db_path) as conn:
        versions = dict(conn.execute("SELECT component, version FROM conveyor_meta"))
    assert versions == {"broker": len(MIGRATIONS)}


def test_counts_read_covering_indexes_only(broker: SQLiteBroker, db_path: Path) -> None:
    """stats() and priority_counts() never read the rows (and their bodies) of ready, delayed
    or dead messages: with 1,000,000 queued they answer from the indexes (schema v5)."""
    broker.publish([msg(1), Message("d", Q, b"x", 3, countdown=600)])
    assert broker.priority_counts([Q])[Q].delayed == {3: 1}
    with raw(db_path) as conn:
        plans = []
        for state, due in ((READY, ""), (DELAYED, "due <= ?, ")):  # as brokers/sqlite/counts.py
            sql = (
                f"EXPLAIN QUERY PLAN SELECT queue, priority, {due}count(*) FROM conveyor_messages "
                f"WHERE ns = ? AND state = {state} AND queue IN (?) GROUP BY 1, 2"
            )
            plans += [row[3] for row in conn.execute(sql, (0, "x", Q)[1 - bool(due) :])]
        sql = "EXPLAIN QUERY PLAN SELECT queue, priority, count(*) FROM conveyor_dead "
        plans += [row[3] for row in conn.execute(sql + "WHERE ns = ? GROUP BY 1, 2", ("x",))]
    searches = [plan for plan in plans if plan.startswith("SEARCH")]
    assert len(searches) == 3 and all("USING COVERING INDEX" in plan for plan in searches)


def test_settlement_writes_records_acks_and_leases_in_one_transaction(
    broker: SQLiteBroker, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SQLiteResultStore(f"sqlite:///{db_path}")
    settlement = open_settlement(broker, store)
    broker.publish([msg(1), msg(2), msg(3)])
    first, second = broker.lease([Q], 2, 0)
    real_write = broker._db.write
    transactions: list[str] = []

    def counted() -> Any:
        transactions.append("broker")
        return real_write()

    def refused() -> Any:
        raise AssertionError("the store wrote in a transaction of its own")

    monkeypatch.setattr(broker._db, "write", counted)
    monkeypatch.setattr(store._db, "write", refused)
    got = settlement.ack_and_lease([first], [ResultRecord("1", "SUCCESS")], [Q], 5, 0)
    assert [d.id for d in got] == ["3"]
    settlement.ack([second, *got], [ResultRecord("2", "SUCCESS"), ResultRecord("3", "FAILURE")])
    settlement.publish([msg(4)], [ResultRecord("4", "QUEUED")])
    assert transactions == ["broker"] * 3
    monkeypatch.undo()
    assert [r and r.state for r in store.get_many(["1", "2", "3", "4"])] == [
        "SUCCESS",
        "SUCCESS",
        "FAILURE",
        "QUEUED",
    ]
    assert broker.stats([Q])[Q] == QueueStats(ready=1)
    store.close()


# -- bad files: one clear error naming the path ------------------------------------------
def assert_one_error(call: Callable[[], object], path: Path, match: str) -> None:
    with pytest.raises(BrokerError) as info:
        call()
    message = str(info.value)
    assert str(path) in message
    assert match in message
    assert not isinstance(info.value.__cause__, ConveyorError)


def test_directory_that_cannot_be_created(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    path = blocker / "sub" / "q.db"
    broker = SQLiteBroker(f"sqlite:///{path}")
    assert_one_error(lambda: broker.publish([msg(1)]), path, "cannot create the directory")


def test_read_only_file(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    writer = SQLiteBroker(f"sqlite:///{path}")
    writer.publish([msg(1)])
    writer.close()
    path.chmod(0o444)
    broker = SQLiteBroker(f"sqlite:///{path}")
    assert_one_error(lambda: broker.lease([Q], 1, 0), path, "read-only")


def test_directory_in_place_of_the_file(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    path.mkdir()
    broker = SQLiteBroker(f"sqlite:///{path}")
    assert_one_error(lambda: broker.publish([msg(1)]), path, "not a regular file")


def test_random_bytes_are_not_a_conveyor_database(db_path: Path) -> None:
    db_path.write_bytes(os.urandom(8192))
    broker = SQLiteBroker(f"sqlite:///{db_path}")
    assert_one_error(lambda: broker.publish([msg(1)]), db_path, "not a Conveyor database")


def test_foreign_sqlite_database_is_refused(db_path: Path) -> None:
    with raw(db_path) as conn:
        conn.execute("CREATE TABLE auth_user (id INTEGER PRIMARY KEY)")
        conn.execute("PRAGMA user_version = 7")
    broker = SQLiteBroker(f"sqlite:///{db_path}")
    assert_one_error(lambda: broker.publish([msg(1)]), db_path, "not a Conveyor database")
    with raw(db_path) as conn:  # and it was left alone
        assert conn.execute("PRAGMA application_id").fetchone()[0] == 0
        names = [row[0] for row in conn.execute("SELECT name FROM sqlite_schema")]
    assert names == ["auth_user"]


def test_other_application_id_is_refused(db_path: Path) -> None:
    with raw(db_path) as conn:
        conn.execute("PRAGMA application_id = 1234")
    broker = SQLiteBroker(f"sqlite:///{db_path}")
    assert_one_error(lambda: broker.publish([msg(1)]), db_path, "application_id 0x4d2")


def test_newer_schema_is_refused(broker: SQLiteBroker, db_path: Path) -> None:
    broker.publish([msg(1)])
    with raw(db_path) as conn:
        conn.execute("UPDATE conveyor_meta SET version = 99 WHERE component = 'broker'")
    fresh = SQLiteBroker(f"sqlite:///{db_path}")
    assert_one_error(lambda: fresh.publish([msg(2)]), db_path, "newer Conveyor")


def test_schema_upgrades_in_steps(db_path: Path) -> None:
    v1 = [("CREATE TABLE conveyor_t (a INTEGER)",)]
    v2 = [*v1, ("ALTER TABLE conveyor_t ADD COLUMN b TEXT",)]

    def db(migrations: list[tuple[str, ...]]) -> Database:
        return Database(db_path, component="t", migrations=migrations, error=BrokerError)

    old = db(v1)
    with old.write() as conn:
        conn.execute("INSERT INTO conveyor_t (a) VALUES (1)")
    old.close()

    new = db(v2)
    with new.write() as conn:
        conn.execute("INSERT INTO conveyor_t (a, b) VALUES (2, 'x')")
        rows = conn.execute("SELECT a, b FROM conveyor_t ORDER BY a").fetchall()
        version = conn.execute("SELECT version FROM conveyor_meta WHERE component = 't'")
        assert version.fetchone()[0] == 2
    new.close()
    assert rows == [(1, None), (2, "x")]


# -- odd data never makes lease() raise --------------------------------------------------
def test_corrupted_rows_are_delivered_or_dead_lettered_not_raised(
    broker: SQLiteBroker, db_path: Path
) -> None:
    broker.publish([msg(1)])
    with raw(db_path) as conn:
        conn.execute(
            "INSERT INTO conveyor_messages (ns, id, queue, priority, body, state) VALUES "
            "('conveyor', CAST(x'ff00fe' AS TEXT), 'default', 5, 'text body', 0), "
            "('conveyor', 42, 'default', 5, x'00ff', 0), "
            "('conveyor', 'bad-priority', 'default', 'high', x'01', 0)"
        )
    got = broker.lease([Q], 10, 0)
    assert len(got) == 3
    assert all(isinstance(d.id, str) and isinstance(d.body, bytes) for d in got)
    assert {d.body for d in got} == {b"body-1", b"text body", b"\x00\xff"}
    broker.ack(got)
    assert broker.stats([Q]) == {Q: QueueStats(dead=1)}
    [dead] = broker.dead_letters()
    assert (dead.id, dead.reason, dead.body) == ("bad-priority", "malformed", b"\x01")
    assert "priority 'high' is not an integer 0-9" in dead.detail


def test_foreign_receipts_are_ignored(broker: SQLiteBroker) -> None:
    broker.publish([msg(1)])
    [held] = broker.lease([Q], 1, 0)
    bogus = Delivery("1", Q, b"", 5, "not-a-receipt", 1)
    broker.ack([bogus])
    broker.extend([bogus])
    broker.release([bogus])
    broker.dead_letter(bogus, DeadLetterReason.REJECTED)
    broker.retry_later(bogus, msg(2))
    assert broker.stats([Q]) == {Q: QueueStats(leased=1)}
    broker.ack([held])


# -- leases and batches ------------------------------------------------------------------
def test_batch_publish_lease_ack_over_many_queues(broker: SQLiteBroker) -> None:
    queues = [f"q{n}" for n in range(150)]  # beyond the UNION ALL form
    broker.publish([msg(n, queue=queues[n % 150], priority=n % 10) for n in range(3000)])
    got = broker.lease(queues, 1000, 0)
    assert len(got) == 1000
    assert [d.priority for d in got] == sorted((d.priority for d in got), reverse=True)
    assert {d.priority for d in got} == {9, 8, 7, 6}
    broker.ack(got)
    rest = broker.lease(queues, 5000, 0)
    assert len(rest) == 2000
    broker.ack(rest)
    assert sum(s.ready + s.leased for s in broker.stats().values()) == 0


def test_extend_moves_the_deadline(broker: SQLiteBroker, db_path: Path) -> None:
    broker.publish([msg(1)])
    [held] = broker.lease([Q], 1, 0)

    def deadline() -> float:
        with raw(db_path) as conn:
            return float(conn.execute("SELECT due FROM conveyor_messages").fetchone()[0])

    before = deadline()
    wait_until(lambda: broker.time() > before - broker.options.lease_timeout + 0.01)
    broker.extend([held])
    assert deadline() > before


def test_sweep_returns_leases_then_dead_letters_worker_lost(
    make: Callable[..., SQLiteBroker],
) -> None:
    broker = make(lease_timeout=0.05, max_deliveries=2)
    broker.publish([msg(1, priority=7)])

    def redelivered() -> list[Delivery]:
        broker.sweep()
        return broker.lease([Q], 1, 0)

    for count in (1, 2):
        [held] = wait_until(redelivered, what=f"delivery {count}")
        assert held.delivery_count == count
    wait_until(lambda: broker.sweep() == 1, what="dead-lettering sweep")
    [dead] = broker.dead_letters()
    assert (dead.id, dead.body, dead.reason, dead.delivery_count) == (
        "1",
        b"body-1",
        "worker_lost",
        2,
    )
    assert dead.detail == "lease expired after 2 deliveries"
    assert broker.replay_dead() == 1
    [again] = broker.lease([Q], 1, 0)
    assert (again.priority, again.delivery_count) == (7, 1), "replay keeps priority, resets count"


def test_key_prefixes_share_one_file(make: Callable[..., SQLiteBroker]) -> None:
    one, two = make(key_prefix="one", lease_timeout=0.05), make(key_prefix="two")
    one.publish([msg(1)])
    two.publish([msg(2)])
    assert [d.id for d in one.lease([Q], 10, 0)] == ["1"]
    expired = one.time() + 0.06
    wait_until(lambda: one.time() > expired, what="lease expiry")
    assert two.sweep() == 0, "a sweep moved another prefix's expired lease"
    assert one.stats([Q])[Q] == QueueStats(leased=1)
    assert one.sweep() == 1
    assert two.stats([Q])[Q] == QueueStats(ready=1)


# -- waiting -----------------------------------------------------------------------------
def pickup_latency(consumer: SQLiteBroker, producer: SQLiteBroker) -> float:
    got: list[Delivery] = []
    done = threading.Event()

    def consume() -> None:
        got.extend(consumer.lease([Q], 1, 5.0))
        done.set()

    thread = threading.Thread(target=consume)
    thread.start()
    threading.Event().wait(0.2)  # let the consumer reach its longest poll interval
    sent = time.monotonic()
    producer.publish([msg("late")])
    assert done.wait(5.0)
    latency = time.monotonic() - sent
    thread.join()
    assert [d.id for d in got] == ["late"]
    return latency


def test_waiting_lease_wakes_on_publish_from_another_client(
    make: Callable[..., SQLiteBroker],
) -> None:
    consumer, producer = make(), make()
    assert pickup_latency(consumer, producer) < consumer.poll_interval + 0.2


def test_waiting_lease_wakes_at_once_on_publish_through_the_same_object(
    make: Callable[..., SQLiteBroker],
) -> None:
    # Polling every 60 s and waiting 5: only the in-process wake can deliver the message
    # (the bound is loose so a loaded machine does not fail it; a poll would take 60 s).
    broker = make(transport_options={"poll_interval": 60.0})
    assert pickup_latency(broker, broker) < 2.0


def test_doorbell_wakes_a_waiting_lease_from_another_process(
    make: Callable[..., SQLiteBroker], db_path: Path
) -> None:
    # Polling every 60 s: only the doorbell can deliver the message before the 30-s wait ends.
    consumer = make(transport_options={"poll_interval": 60.0})
    got: list[Delivery] = []
    thread = threading.Thread(target=lambda: got.extend(consumer.lease([Q], 1, 30.0)))
    thread.start()
    wait_until(lambda: any(consumer._doorbell.directory.glob("*.sock")), 5.0, "consumer waiting")
    code = (
        "import sys; from conveyor.brokers.sqlite import SQLiteBroker;"
        "from conveyor.brokers.base import Message;"
        "b = SQLiteBroker(sys.argv[1]); b.publish([Message('rung', 'default', b'x')]); b.close()"
    )
    subprocess.run([sys.executable, "-c", code, f"sqlite:///{db_path}"], check=True, timeout=60)
    thread.join(20.0)
    assert not thread.is_alive(), "the waiting lease was not woken"
    assert [d.id for d in got] == ["rung"]
    assert not any(consumer._doorbell.directory.glob("*.sock")), "socket left after the wait"


def test_doorbell_removes_sockets_of_dead_processes(broker: SQLiteBroker) -> None:
    bell = broker._doorbell
    bell.directory.mkdir(exist_ok=True)
    stale = bell.directory / "999999-1-dead.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(stale))
    sock.close()  # as a killed process leaves it: the file stays, nobody reads
    broker.publish([msg(1)])
    assert not stale.exists()
    assert [d.id for d in broker.lease([Q], 1, 0)] == ["1"]


def test_doorbell_of_a_file_deeper_than_a_socket_path(tmp_path: Path) -> None:
    # Longer than a socket path may be (107 bytes): named through /proc/self/fd on Linux.
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    url = f"sqlite:///{deep}/q.db"
    consumer = SQLiteBroker(url, BrokerOptions(transport_options={"poll_interval": 60.0}))
    producer = SQLiteBroker(url)
    try:
        got: list[Delivery] = []
        thread = threading.Thread(target=lambda: got.extend(consumer.lease([Q], 1, 30.0)))
        thread.start()
        wait_until(lambda: any((deep / "q.db.wake").glob("*.sock")), 5.0, "consumer waiting")
        producer.publish([msg("deep")])
        thread.join(20.0)
        assert [d.id for d in got] == ["deep"]
    finally:
        consumer.close()
        producer.close()


def test_without_a_doorbell_a_waiting_lease_polls(make: Callable[..., SQLiteBroker]) -> None:
    consumer, producer = make(), make()
    consumer._doorbell.enabled = False  # as on a platform without Unix sockets
    assert pickup_latency(consumer, producer) < consumer.poll_interval + 0.2
    assert not any(consumer._doorbell.directory.glob("*.sock"))


# -- concurrency -------------------------------------------------------------------------
def test_threads_share_one_broker_without_double_leases(broker: SQLiteBroker) -> None:
    total = 2000
    broker.publish([msg(n) for n in range(total)])
    seen: list[str] = []
    lock = threading.Lock()

    def consume() -> None:
        while got := broker.lease([Q], 7, 0):
            broker.ack(got)
            with lock:
                seen.extend(d.id for d in got)

    threads = [threading.Thread(target=consume) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(seen, key=int) == [str(n) for n in range(total)]


def test_writes_wait_for_a_held_lock_then_succeed(broker: SQLiteBroker, db_path: Path) -> None:
    broker.publish([msg(1)])
    locked = threading.Event()
    unlock = threading.Event()

    def hold_lock() -> None:
        with raw(db_path) as locker:
            locker.execute("BEGIN IMMEDIATE")
            locked.set()
            unlock.wait(5)
            locker.execute("COMMIT")

    holder = threading.Thread(target=hold_lock)
    holder.start()
    assert locked.wait(5)
    timer = threading.Timer(0.3, unlock.set)
    timer.start()
    began = time.monotonic()
    broker.publish([msg(2)])
    assert time.monotonic() - began >= 0.25
    timer.join()
    holder.join()
    assert broker.stats([Q])[Q].ready == 2


def test_a_lock_held_too_long_is_a_clear_error(
    make: Callable[..., SQLiteBroker], db_path: Path
) -> None:
    broker = make(transport_options={"busy_timeout": 0.05, "lock_timeout": 0.2})
    broker.publish([msg(1)])
    with raw(db_path) as locker:
        locker.execute("BEGIN IMMEDIATE")
        assert_one_error(lambda: broker.publish([msg(2)]), db_path, "locked")
        locker.execute("ROLLBACK")
    broker.publish([msg(3)])  # usable again
    assert broker.stats([Q])[Q].ready == 2


def test_close_then_reuse_reopens(broker: SQLiteBroker) -> None:
    broker.publish([msg(1)])
    broker.close()
    assert [d.id for d in broker.lease([Q], 1, 0)] == ["1"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fork_child_opens_its_own_connections(broker: SQLiteBroker) -> None:
    broker.publish([msg("parent")])  # the parent holds an open connection now
    pid = os.fork()
    if pid == 0:  # child: must not reuse the parent's connection
        code = 1
        try:
            [got] = broker.lease([Q], 1, 0)
            broker.ack([got])
            broker.publish([msg("child")])
            code = 0 if got.id == "parent" else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert [d.id for d in broker.lease([Q], 10, 0)] == ["child"]
    assert broker.stats([Q])[Q] == QueueStats(leased=1)


def test_dead_letter_many_buries_each_with_its_reason_in_one_transaction(
    broker: SQLiteBroker,
) -> None:
    broker.publish([msg(n) for n in range(4)])
    leased = broker.lease([Q], 4, 0)
    broker.ack([leased[2]])  # its receipt is no longer live: skipped
    broker.dead_letter_many(
        [(leased[0], "malformed", "a"), (leased[1], "undecodable", "b"), (leased[2], "x", "")]
    )
    dead = {d.id: (d.reason, d.detail) for d in broker.dead_letters()}
    assert dead == {"0": ("malformed", "a"), "1": ("undecodable", "b")}
    assert broker.stats([Q])[Q] == QueueStats(ready=0, delayed=0, leased=1, dead=2)
    broker.dead_letter_many([])  # nothing: no transaction
