"""The production worker as real processes: ``python -m conveyor worker`` on SQLite, Redis and
PostgreSQL; RabbitMQ (the session's rabbitmq-server; results in a SQLite file of the test).

Every test synchronises on facts with deadlines (result states, lines tasks append to files,
process exits), never on bare sleeps. Tasks live in ``tests/integration/workerapp.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from conveyor import Conveyor, states
from tests.conftest import wait_until
from tests.helpers import redis_fixture
from tests.integration.workerapp import create_app, runs

ROOT = Path(__file__).resolve().parents[2]

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("redis", id="redis", marks=pytest.mark.redis),
    # Every test runs on PostgreSQL and RabbitMQ with --slow; the crash tests of
    # ``on_every_broker`` by default.
    pytest.param("postgres", id="postgres", marks=(pytest.mark.postgres, pytest.mark.slow)),
    pytest.param("amqp", id="amqp", marks=(pytest.mark.amqp, pytest.mark.slow)),
]
#: Tests that run on every broker in the default suite (the others skip PostgreSQL and
#: RabbitMQ unless --slow: their conformance suites already cover their broker operations).
on_every_broker = pytest.mark.parametrize(
    "backend",
    [
        *BACKENDS[:2],
        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
        pytest.param("amqp", id="amqp", marks=pytest.mark.amqp),
    ],
    indirect=True,
)


#: ``wait_until`` polling every 50 ms (tests/integration/test_cli.py imports it too).
wait_for = partial(wait_until, interval=0.05)


def child_pids(pid: int) -> list[int]:
    """Live child processes of ``pid`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return sorted(found)


def pids_of(path: Path, text: str = "start") -> list[int]:
    """Pids of the processes that appended ``text`` lines to ``path``."""
    return [int(line.split()[0]) for line in runs(path) if line.split()[1:] == [text]]


class WorkerProcess:
    """``python -m conveyor worker -A tests.integration.workerapp ARGS`` in its own session."""

    def __init__(self, env: dict[str, str], log: Path, args: list[str]) -> None:
        self.log = log
        command = [sys.executable, "-m", "conveyor", "worker", "-A", "tests.integration.workerapp"]
        self._log_file = log.open("ab")
        self.process = subprocess.Popen(
            [*command, *args],
            cwd=ROOT,
            env=env,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.pid = self.process.pid

    def children(self) -> list[int]:
        return child_pids(self.pid)

    def wait_children(self, count: int, timeout: float = 15.0) -> list[int]:
        return list(
            wait_for(
                lambda: (kids := self.children()) and len(kids) == count and kids,
                timeout,
                f"{count} child process(es)",
            )
        )

    def signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"worker did not exit within {timeout} s\n{self.output()}")

    def kill_all(self) -> None:
        """SIGKILL the supervisor and its children (the whole session)."""
        kids = self.children()
        if self.process.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
        for kid in kids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(kid, signal.SIGKILL)
        self.process.wait(10)

    def output(self) -> str:
        self._log_file.flush()
        return self.log.read_text(errors="replace")

    def close(self) -> None:
        if self.process.poll() is None:
            self.kill_all()
        self._log_file.close()


redis_server = redis_fixture(appendonly=False)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name = str(request.param)
    return name


class Harness:
    """A broker for one test, a client app on it, and workers started on demand."""

    def __init__(self, broker_url: str, settings: dict[str, Any], tmp_path: Path) -> None:
        self.broker_url = broker_url
        self.settings = settings
        self.tmp_path = tmp_path
        self.client: Conveyor = create_app(broker_url, **settings)
        self.workers: list[WorkerProcess] = []

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("CONVEYOR_APP", None)
        env["CONVEYOR_BROKER_URL"] = self.broker_url
        env["WORKERAPP_SETTINGS"] = json.dumps(self.settings)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        return env

    def file(self, name: str | None = None) -> Path:
        return self.tmp_path / f"{name or uuid.uuid4().hex[:8]}.runs"

    def worker(self, *args: str) -> WorkerProcess:
        log = self.tmp_path / f"worker{len(self.workers) + 1}.log"
        worker = WorkerProcess(self.env, log, ["-l", "info", *args])
        self.workers.append(worker)
        return worker

    def send(self, name: str, *args: Any, **options: Any) -> Any:
        return self.client.send_task(f"workerapp.{name}", args, **options)

    def state(self, task_id: str) -> str:
        return str(self.client.AsyncResult(task_id).state)

    def wait_state(self, task_id: str, state: str, timeout: float) -> None:
        wait_for(lambda: self.state(task_id) == state, timeout, f"task {task_id} in {state}")

    def output(self) -> str:
        return "\n".join(f"--- {w.log.name}\n{w.output()}" for w in self.workers)

    def close(self) -> None:
        for worker in self.workers:
            worker.close()
        self.client.close()


@pytest.fixture
def harness_factory(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def make(**settings: Any) -> Harness:
        if backend == "sqlite":
            url = f"sqlite:///{tmp_path}/broker.db"
        elif backend == "amqp":
            url = request.getfixturevalue("rabbit_server").url
            prefix = f"wp{uuid.uuid4().hex[:10]}"
            settings.setdefault("broker_transport_options", {"key_prefix": prefix})
            settings.setdefault("result_backend", f"sqlite:///{tmp_path}/results.db")
        else:
            server = request.getfixturevalue(f"{backend}_server")
            url = server.url if backend == "redis" else server.url()
            prefix = f"wp{uuid.uuid4().hex[:10]}"
            settings.setdefault("broker_transport_options", {"key_prefix": prefix})
        harness = Harness(url, settings, tmp_path)
        made.append(harness)
        return harness

    yield make
    for harness in made:
        print(harness.output())  # shown when the test failed
        harness.close()


@pytest.fixture
def harness(harness_factory: Callable[..., Harness]) -> Harness:
    return harness_factory()


# -- basics and shutdown ---------------------------------------------------------------------
def test_runs_tasks_and_stops_cleanly_on_sigterm(harness: Harness) -> None:
    worker = harness.worker("-c", "2")
    results = [harness.send("add", i, i) for i in range(10)]
    assert [r.get(timeout=20) for r in results] == [2 * i for i in range(10)]
    assert len(worker.wait_children(2)) == 2
    worker.signal(signal.SIGTERM)
    assert worker.wait(15) == 0
    assert "stopped" in worker.output()


@on_every_broker
def test_sigterm_with_20_running_tasks_finishes_them_all_once(harness: Harness) -> None:
    worker = harness.worker("-c", "2", "--threads", "10")
    path = harness.file()
    results = [harness.send("sleep", str(path), 1.5) for _ in range(20)]
    wait_for(lambda: len(pids_of(path)) == 20, 20, "20 tasks running")
    worker.signal(signal.SIGTERM)
    assert worker.wait(20) == 0
    assert [harness.state(r.id) for r in results] == [states.SUCCESS] * 20
    assert len(pids_of(path, "start")) == 20
    assert len(pids_of(path, "end")) == 20


def test_second_signal_is_a_cold_shutdown_that_returns_leases_at_once(harness: Harness) -> None:
    worker = harness.worker("-c", "1")
    path = harness.file()
    result = harness.send("sleep", str(path), 60)
    harness.wait_state(result.id, states.STARTED, 15)
    worker.signal(signal.SIGTERM)
    wait_for(lambda: "warm shutdown" in worker.output(), 10, "warm shutdown logged")
    worker.signal(signal.SIGTERM)
    assert worker.wait(15) == 0
    stats = harness.client.broker.stats(["default"])["default"]
    assert (stats.ready, stats.leased) == (1, 0)  # back in the queue without a sweep
    assert harness.state(result.id) == states.STARTED


def test_shutdown_timeout_turns_a_warm_shutdown_cold(harness: Harness) -> None:
    worker = harness.worker("-c", "1", "--shutdown-timeout", "1")
    path = harness.file()
    harness.send("sleep", str(path), 60)
    wait_for(lambda: pids_of(path), 15, "task started")
    started = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert worker.wait(15) == 0
    assert time.monotonic() - started < 8
    assert "shutdown timeout of 1.0s passed" in worker.output()
    stats = harness.client.broker.stats(["default"])["default"]
    assert (stats.ready, stats.leased) == (1, 0)


# -- losing processes ------------------------------------------------------------------------
@on_every_broker
def test_child_killed_mid_task_is_replaced_and_the_task_completes(harness: Harness) -> None:
    worker = harness.worker("-c", "2")
    worker.wait_children(2)
    path = harness.file()
    result = harness.send("sleep", str(path), 1.0)
    victim = wait_for(lambda: pids_of(path), 15, "task started")[0]
    os.kill(victim, signal.SIGKILL)
    assert result.get(timeout=20) != victim
    assert 2 <= len(pids_of(path)) <= 2
    assert harness.state(result.id) == states.SUCCESS
    kids = worker.wait_children(2)
    assert victim not in kids


@on_every_broker
def test_killed_worker_loses_nothing_a_second_worker_finishes(harness: Harness) -> None:
    first = harness.worker("-c", "2")
    path = harness.file()
    results = [harness.send("sleep", str(path), 0.5) for _ in range(6)]
    wait_for(lambda: len(pids_of(path)) >= 2, 15, "tasks started")
    first.kill_all()
    second = harness.worker("-c", "2")
    for r in results:
        harness.wait_state(r.id, states.SUCCESS, 30)
    ended = pids_of(path, "end")
    assert len(ended) >= 6
    assert set(pids_of(path, "end")) & set(second.children())
    second.signal(signal.SIGTERM)
    assert second.wait(15) == 0


@on_every_broker
def test_task_that_kills_its_process_is_dead_lettered_after_max_deliveries(
    harness_factory: Callable[..., Harness],
) -> None:
    harness = harness_factory(task_max_deliveries=3)
    harness.worker("-c", "1")
    path = harness.file()
    result = harness.send("suicide", str(path))

    def dead() -> list[Any]:
        return [d for d in harness.client.broker.dead_letters() if d.id == result.id]

    letters = wait_for(dead, 40, "message dead-lettered")
    assert letters[0].reason == "worker_lost"
    assert len(runs(path)) == 3


def test_acks_early_task_of_a_dead_child_fails_with_worker_lost(harness: Harness) -> None:
    harness.worker("-c", "1")
    path = harness.file()
    result = harness.send("sleep_at_most_once", str(path), 30)
    victim = wait_for(lambda: pids_of(path), 15, "task started")[0]
    os.kill(victim, signal.SIGKILL)
    harness.wait_state(result.id, states.FAILURE, 10)
    record = harness.client.results.get(result.id)
    assert record is not None
    assert record.result["type"].endswith("WorkerLostError")
    assert len(runs(path)) == 1


# -- timing ----------------------------------------------------------------------------------
def test_long_task_is_not_redelivered_while_its_worker_lives(harness: Harness) -> None:
    harness.worker("-c", "2")
    path = harness.file()
    result = harness.send("sleep", str(path), 6.0)
    harness.wait_state(result.id, states.SUCCESS, 30)
    assert len(pids_of(path)) == 1


@pytest.mark.slow  # 10 s per broker
def test_eta_runs_once_at_its_time_despite_short_leases(harness: Harness) -> None:
    harness.worker("-c", "2")
    path = harness.file()
    eta = time.time() + 10
    result = harness.send("record", str(path), countdown=10)
    ran_at = result.get(timeout=40)
    assert ran_at >= eta - 0.05
    assert len(runs(path)) == 1


# -- revocation ------------------------------------------------------------------------------
def test_revoked_before_start_and_while_delayed_never_run(harness: Harness) -> None:
    path = harness.file()
    queued = harness.send("record", str(path))
    delayed = harness.send("record", str(path), countdown=2)
    harness.client.revoke([queued.id, delayed.id])
    harness.worker("-c", "1")
    after = harness.send("add", 1, 2)
    assert after.get(timeout=20) == 3
    harness.wait_state(queued.id, states.REVOKED, 10)
    harness.wait_state(delayed.id, states.REVOKED, 15)
    assert runs(path) == []


def test_terminate_interrupts_a_running_task(harness: Harness) -> None:
    worker = harness.worker("-c", "1")
    kids = worker.wait_children(1)
    path = harness.file()
    result = harness.send("sleep", str(path), 60)
    wait_for(lambda: pids_of(path), 15, "task started")
    harness.client.revoke(result.id, terminate=True)
    harness.wait_state(result.id, states.REVOKED, 10)
    assert pids_of(path, "end") == []
    assert worker.children() == kids  # interrupted, not killed
    assert harness.send("add", 2, 2).get(timeout=10) == 4


def test_terminate_kills_a_task_that_ignores_it_after_the_grace(harness: Harness) -> None:
    worker = harness.worker("-c", "1", "--terminate-grace", "1")
    kids = worker.wait_children(1)
    path = harness.file()
    result = harness.send("stubborn", str(path), 60)
    wait_for(lambda: pids_of(path), 15, "task started")
    harness.client.revoke(result.id, terminate=True)
    harness.wait_state(result.id, states.REVOKED, 15)
    assert pids_of(path, "ignored")  # it was asked first
    assert harness.send("add", 2, 3).get(timeout=15) == 5
    assert worker.children() != kids
    # The supervisor settles the killed task's message after the kill; the result comes first.
    wait_for(
        lambda: harness.client.broker.stats(["default"])["default"].leased == 0,
        15,
        "the killed task's message settled",
    )


# -- limits ----------------------------------------------------------------------------------
def test_hard_time_limit_kills_and_replaces_the_child(harness: Harness) -> None:
    worker = harness.worker("-c", "1")
    kids = worker.wait_children(1)
    path = harness.file()
    result = harness.send("hard_limited", str(path), 60)
    harness.wait_state(result.id, states.FAILURE, 15)
    record = harness.client.results.get(result.id)
    assert record is not None
    assert record.result["type"].endswith("TimeLimitExceeded")
    # The supervisor stores the FAILURE record first, then dead-letters the message.
    letters = wait_for(
        lambda: [d for d in harness.client.broker.dead_letters() if d.id == result.id],
        15,
        "the killed task's dead letter",
    )
    assert [d.reason for d in letters] == ["time_limit"]
    assert harness.send("add", 20, 22).get(timeout=15) == 42
    assert worker.children() != kids
    assert len(runs(path)) == 1


def test_hard_limit_kill_releases_the_other_tasks_of_that_child_at_once(
    harness_factory: Callable[..., Harness],
) -> None:
    # The lease outlives the test: only the supervisor's release brings the task back in time.
    harness = harness_factory(broker_lease_timeout=120.0)
    worker = harness.worker("-c", "1", "--threads", "2")
    first_child = worker.wait_children(1)[0]
    path, limited = harness.file(), harness.file()
    innocent = harness.send("sleep", str(path), 4.0)  # reported to the supervisor by snapshot
    wait_for(lambda: pids_of(path), 15, "innocent task started")
    harness.send("hard_limited", str(limited), 60)
    assert innocent.get(timeout=30) != first_child
    assert len(pids_of(path)) == 2  # cut off by the kill, then run again at once
    assert "hard time limit" in worker.output()


def test_soft_time_limit_interrupts_a_sleeping_task(harness: Harness) -> None:
    harness.worker("-c", "1")
    path = harness.file()
    started = time.monotonic()
    result = harness.send("soft_limited", str(path), 60)
    assert result.get(timeout=15) == "interrupted"
    assert time.monotonic() - started < 10
    assert [line.split()[1] for line in runs(path)] == ["start", "soft"]


def test_max_tasks_per_child_recycles_children(harness: Harness) -> None:
    worker = harness.worker("-c", "1", "--max-tasks-per-child", "2")
    pids = [harness.send("pid").get(timeout=15) for _ in range(6)]
    assert len(set(pids)) == 3
    assert all(pids.count(pid) == 2 for pid in set(pids))
    worker.signal(signal.SIGTERM)
    assert worker.wait(15) == 0


def test_max_memory_per_child_recycles_after_the_task(harness: Harness) -> None:
    harness.worker("-c", "1", "--max-memory-per-child", "1")
    pids = [harness.send("pid").get(timeout=15) for _ in range(3)]
    assert len(set(pids)) == 3


# -- solo pool -------------------------------------------------------------------------------
def test_solo_pool_runs_tasks_with_soft_limits_and_stops_on_sigterm(harness: Harness) -> None:
    worker = harness.worker("--pool", "solo")
    path = harness.file()
    assert harness.send("soft_limited", str(path), 60).get(timeout=15) == "interrupted"
    assert harness.send("add", 1, 1).get(timeout=10) == 2
    assert worker.children() == []
    worker.signal(signal.SIGTERM)
    assert worker.wait(15) == 0
