"""Unique tasks on real brokers (SQLite, Redis, PostgreSQL): many producer processes and
threads calling at once queue exactly one task; a worker that dies holding it keeps the key
until the redelivered task ends; debounce across processes keeps one waiting task."""

from __future__ import annotations

import multiprocessing
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from conveyor import Conveyor, states
from conveyor.testing import TestWorker
from tests.conftest import wait_until
from tests.helpers import redis_fixture
from tests.pg_server import PostgresServer
from tests.servers import RedisServer

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("redis", id="redis", marks=pytest.mark.redis),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]
PROCESSES, THREADS = 4, 6

unique_redis = redis_fixture(appendonly=False)


def create_app(url: str, prefix: str) -> Conveyor:
    app = Conveyor(
        "unique_it",
        broker=url,
        result_backend=url,
        set_as_default=False,
        broker_lease_timeout=1.0,
        broker_sweep_interval=0.5,
        broker_transport_options={"key_prefix": prefix},
        result_backend_transport_options={"key_prefix": prefix},
    )

    @app.task(name="unique_it.build", unique_for=120)
    def build(user: int) -> int:
        return user

    @app.task(name="unique_it.index", unique_for=2, unique_mode="debounce")
    def index(text: str) -> str:
        return text

    return app


def producer(
    url: str, prefix: str, barrier: Any, out: Any, name: str, arg: object
) -> None:  # pragma: no cover - runs in a spawned process
    import threading

    app = create_app(url, prefix)
    found: list[str] = []
    lock = threading.Lock()

    def call() -> None:
        barrier.wait(30)
        result = app.tasks[name].delay(arg if name.endswith("build") else f"{arg}")
        with lock:
            found.append(result.id)

    threads = [threading.Thread(target=call) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    out.put(found)
    app.close()


@pytest.fixture(params=BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Any) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/unique.db"
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("unique_redis")
        return server.url
    pg: PostgresServer = request.getfixturevalue("postgres_server")
    return f"{pg.url()}?schema=u{uuid.uuid4().hex[:12]}"


@pytest.fixture
def prefix() -> str:
    return f"u{uuid.uuid4().hex[:8]}"


@pytest.fixture
def app(url: str, prefix: str) -> Iterator[Conveyor]:
    app = create_app(url, prefix)
    yield app
    app.close()


def run_producers(url: str, prefix: str, name: str, arg: object) -> list[str]:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(PROCESSES * THREADS)
    out = ctx.Queue()
    procs = [
        ctx.Process(target=producer, args=(url, prefix, barrier, out, name, arg))
        for _ in range(PROCESSES)
    ]
    for proc in procs:
        proc.start()
    ids = [task_id for _ in procs for task_id in out.get(timeout=90)]
    for proc in procs:
        proc.join(30)
        assert proc.exitcode == 0
    return ids


def waiting(app: Conveyor) -> int:
    stats = app.broker.stats(["default"]).get("default")
    return 0 if stats is None else stats.ready + stats.delayed


def test_concurrent_producer_processes_queue_one_task(app: Conveyor, url: str, prefix: str) -> None:
    ids = run_producers(url, prefix, "unique_it.build", 42)
    assert len(ids) == PROCESSES * THREADS
    assert len(set(ids)) == 1, set(ids)
    assert waiting(app) == 1
    with TestWorker(app) as worker:
        worker.run_until_idle()
    assert app.AsyncResult(ids[0]).get(timeout=10) == 42
    again = app.tasks["unique_it.build"].delay(42)
    assert again.duplicate_of is None and again.id != ids[0]


@pytest.mark.slow  # spawns producer processes again; debounce's swap is covered by test_kv_locks
def test_debounce_across_processes_leaves_one_waiting_task(
    app: Conveyor, url: str, prefix: str
) -> None:
    ids = run_producers(url, prefix, "unique_it.index", "q")
    assert len(set(ids)) == PROCESSES * THREADS  # each call replaced the one before
    assert waiting(app) == PROCESSES * THREADS  # revoked ones are dropped when due
    with TestWorker(app) as worker:
        worker.run_until_idle()
    finals = {task_id: app.AsyncResult(task_id).state for task_id in ids}
    ran = [task_id for task_id, state in finals.items() if state == states.SUCCESS]
    assert len(ran) == 1, finals
    assert all(s == states.REVOKED for t, s in finals.items() if t not in ran), finals


def test_a_dead_workers_task_keeps_its_key_until_it_ends(app: Conveyor) -> None:
    build = app.tasks["unique_it.build"]
    first = build.delay(7)
    # A worker leases it and dies (never acks, never renews): the task is not done.
    (delivery,) = app.broker.lease(["default"], 1, 1.0)
    assert delivery.id == first.id
    assert build.delay(7).duplicate_of == first.id
    # The lease runs out; the sweep puts it back; a live worker runs it and frees the key.
    with TestWorker(app) as worker:
        worker.start()
        assert first.get(timeout=20) == 7
        wait_until(lambda: build.delay(7).duplicate_of is None, 10, "key freed after the run")
        worker.run_until_idle()


@pytest.mark.redis
@pytest.mark.parametrize("appendonly", [True, False], ids=["aof", "no-persistence"])
def test_keys_share_the_fate_of_their_messages_across_a_redis_crash(appendonly: bool) -> None:
    server = RedisServer(appendonly=appendonly)
    server.start()
    try:
        app = create_app(server.url, f"u{uuid.uuid4().hex[:8]}")
        build = app.tasks["unique_it.build"]
        first = build.delay(5)
        server.kill()  # SIGKILL: no shutdown save
        server.start()
        wait_until(lambda: _answers(app), 10, "Redis back")
        again = build.delay(5)
        if appendonly:  # both kept: the key still guards the queued task (closed)
            assert again.duplicate_of == first.id and waiting(app) == 1
        else:  # both lost: the call queues the only task there is (nothing duplicated)
            assert again.duplicate_of is None and waiting(app) == 1
        app.close()
    finally:
        server.cleanup()


def _answers(app: Conveyor) -> bool:
    try:
        app.broker.stats(["default"])
    except Exception:
        return False
    return True
