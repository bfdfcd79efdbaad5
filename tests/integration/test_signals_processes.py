"""Worker signals in real worker processes (SQLite): ``worker_process_init`` in each child.

The worker processes run ``tests/integration/signalsapp.py`` (``-A``): its receivers append
``pid signal`` lines to the file named by ``$SIGNALS_RECORD``.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.test_worker_processes import (  # noqa: F401 - fixtures
    Harness,
    WorkerProcess,
    harness_factory,
    redis_server,
    wait_for,
)
from tests.integration.workerapp import runs


@pytest.fixture
def backend() -> str:
    return "sqlite"


@pytest.fixture
def harness(harness_factory: Callable[..., Harness]) -> Harness:  # noqa: F811
    return harness_factory()


def start(harness: Harness, record: Path, *args: str) -> WorkerProcess:
    env = {**harness.env, "SIGNALS_RECORD": str(record)}
    log = harness.tmp_path / f"worker{len(harness.workers) + 1}.log"
    spec = "tests.integration.signalsapp:app"
    worker = WorkerProcess(env, log, ["-l", "info", *args, "-A", spec])
    harness.workers.append(worker)
    return worker


def by_pid(record: Path) -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    for line in runs(record):
        pid, name = line.split()
        found.setdefault(name, []).append(int(pid))
    return found


def test_worker_process_init_runs_in_each_child_and_worker_init_in_the_supervisor(
    harness: Harness,
) -> None:
    record = harness.file("signals")
    worker = start(harness, record, "-c", "2")
    assert harness.send("add", 1, 2).get(timeout=20) == 3
    kids = worker.wait_children(2)
    wait_for(lambda: len(by_pid(record).get("worker_process_init", [])) == 2, 10, "2 inits")
    worker.signal(signal.SIGTERM)
    assert worker.wait(15) == 0
    sent = by_pid(record)
    assert sent["worker_init"] == [worker.pid] and sent["worker_shutdown"] == [worker.pid]
    assert sorted(sent["worker_process_init"]) == kids  # once in each child
    assert sorted(sent["worker_process_shutdown"]) == kids
    assert len(sent["task_success"]) == 1 and sent["task_success"][0] in kids
