"""Lifecycle hooks in real worker processes: the prefork supervisor and ``--pool solo``.

The worker processes import this module as their app (``-A``): its middleware appends
``pid hook`` lines to the file named by ``$MIDDLEWARE_RECORD``.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from conveyor.middleware import Middleware, WorkerInfo
from tests.integration.test_worker_processes import (  # noqa: F401 - fixtures
    Harness,
    WorkerProcess,
    backend,
    harness_factory,
    redis_server,
    wait_for,
)
from tests.integration.workerapp import create_app, mark, runs


class PidRecorder(Middleware):
    def _mark(self, hook: str) -> None:
        path = os.environ.get("MIDDLEWARE_RECORD")
        if path:
            mark(path, hook)

    def worker_start(self, worker: WorkerInfo) -> None:
        self._mark("worker_start")

    def worker_stop(self, worker: WorkerInfo) -> None:
        self._mark("worker_stop")

    def child_start(self, worker: WorkerInfo) -> None:
        self._mark("child_start")

    def child_stop(self, worker: WorkerInfo) -> None:
        self._mark("child_stop")


app = create_app()
app.add_middleware(PidRecorder())


@pytest.fixture
def harness(harness_factory: Callable[..., Harness]) -> Harness:  # noqa: F811
    return harness_factory()


def start(harness: Harness, record: Path, *args: str) -> WorkerProcess:
    env = {**harness.env, "MIDDLEWARE_RECORD": str(record)}
    log = harness.tmp_path / f"worker{len(harness.workers) + 1}.log"
    spec = "tests.integration.test_middleware_processes:app"
    worker = WorkerProcess(env, log, ["-l", "info", *args, "-A", spec])
    harness.workers.append(worker)
    return worker


def hooks_by_pid(record: Path) -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    for line in runs(record):
        pid, hook = line.split()
        found.setdefault(hook, []).append(int(pid))
    return found


def test_prefork_runs_child_start_in_each_child_and_worker_hooks_in_the_supervisor(
    harness: Harness,
) -> None:
    record = harness.file("hooks")
    worker = start(harness, record, "-c", "2")
    assert harness.send("add", 1, 2).get(timeout=20) == 3
    kids = worker.wait_children(2)
    wait_for(lambda: len(hooks_by_pid(record).get("child_start", [])) == 2, 10, "2 children")
    worker.signal(signal.SIGTERM)
    assert worker.wait(15) == 0
    hooks = hooks_by_pid(record)
    assert hooks["worker_start"] == [worker.pid] and hooks["worker_stop"] == [worker.pid]
    assert sorted(hooks["child_start"]) == kids  # in the child processes, not the supervisor
    assert sorted(hooks["child_stop"]) == kids


def test_solo_runs_worker_and_child_hooks_in_its_one_process(harness: Harness) -> None:
    record = harness.file("hooks")
    worker = start(harness, record, "--pool", "solo")
    assert harness.send("add", 2, 3).get(timeout=20) == 5
    worker.signal(signal.SIGTERM)
    assert worker.wait(15) == 0
    lines = runs(record)
    assert lines == [
        f"{worker.pid} worker_start",
        f"{worker.pid} child_start",
        f"{worker.pid} child_stop",
        f"{worker.pid} worker_stop",
    ]
