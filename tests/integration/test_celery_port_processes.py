"""Celery-port behaviour in real worker processes on SQLite and Redis (issue 12): a Task base
class's ``__call__`` in every pool, ``rate_limit`` per worker (not per child),
``retry_kwargs``, Celery-style errbacks, and ``setup_logging`` receivers of the app module.

Tasks live in ``tests/integration/portapp.py``. Every wait is on a fact with a deadline.
"""

from __future__ import annotations

import bisect
import contextlib
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from conveyor import Conveyor, states
from conveyor.limits.gate import BOOKING_GRACE
from tests.conftest import wait_until
from tests.helpers import redis_fixture

ROOT = Path(__file__).resolve().parents[2]
WORKER = [sys.executable, "-m", "conveyor", "worker", "-A", "tests.integration.portapp"]
wait_for = partial(wait_until, interval=0.05)

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("redis", id="redis", marks=pytest.mark.redis),
]

redis_server = redis_fixture(appendonly=False)


class Port:
    """A broker for one test, a client app on it, and ``conveyor worker`` processes."""

    def __init__(self, broker_url: str, tmp_path: Path, prefix: str) -> None:
        self.broker_url = broker_url
        self.tmp_path = tmp_path
        self.prefix = prefix
        options = {"key_prefix": prefix} if prefix else {}
        self.client = Conveyor("portapp", broker=broker_url, broker_transport_options=options)
        self.processes: list[tuple[subprocess.Popen[bytes], Path]] = []

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("CONVEYOR_APP", None)
        env["CONVEYOR_BROKER_URL"] = self.broker_url
        env["PORTAPP_KEY_PREFIX"] = self.prefix
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        return {**env, **extra}

    def worker(self, *args: str, **env: str) -> Path:
        log = self.tmp_path / f"worker{len(self.processes) + 1}.log"
        with log.open("ab") as out:
            process = subprocess.Popen(
                [*WORKER, "-l", "info", *args],
                cwd=ROOT,
                env=self.env(**env),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.processes.append((process, log))
        return log

    def send(self, name: str, *args: object, **options: object) -> str:
        return self.client.send_task(f"portapp.{name}", args, **options).id

    def result(self, task_id: str, timeout: float = 30.0) -> object:
        return self.client.AsyncResult(task_id).get(timeout=timeout)

    def output(self) -> str:
        return "\n".join(
            f"--- {log.name}\n{log.read_text(errors='replace')}" for _, log in self.processes
        )

    def close(self) -> None:
        for process, _ in self.processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
        self.client.close()


@pytest.fixture(params=BACKENDS)
def port(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Port]:
    prefix = ""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/broker.db"
    else:
        url = request.getfixturevalue("redis_server").url
        prefix = f"pt{uuid.uuid4().hex[:10]}"
    made = Port(url, tmp_path, prefix)
    yield made
    print(made.output())  # shown when the test failed
    made.close()


def lines(path: Path) -> list[str]:
    try:
        return [line.split(" ", 1)[1] for line in path.read_text().splitlines()]
    except FileNotFoundError:
        return []


POOLS = {
    "prefork": ["-c", "1"],
    "prefork-threads": ["-c", "1", "--threads", "2"],
    "solo": ["--pool", "solo"],
}


@pytest.mark.parametrize("pool", list(POOLS))
def test_custom_task_call_runs_once_per_execution_in_every_pool(
    port: Port, tmp_path: Path, pool: str
) -> None:
    port.worker(*POOLS[pool])
    path = tmp_path / "calls.runs"
    sync_id = port.send("wrapped", str(path), 21)
    async_id = port.send("wrapped_async", str(path), 5)
    assert port.result(sync_id) == 42
    assert port.result(async_id) == 15
    seen = lines(path)
    for task_id in (sync_id, async_id):
        assert seen.count(f"before {task_id}") == 1, seen
        assert seen.count(f"after {task_id}") == 1, seen
    assert seen.count("body") == 2


def test_rate_limit_is_per_worker_not_per_child(port: Port) -> None:
    port.worker("-c", "2")
    ids = [port.send("limited") for _ in range(16)]
    starts = sorted(float(str(port.result(task_id, timeout=60))) for task_id in ids)
    rate = (len(starts) - 1) / (starts[-1] - starts[0])
    # 5/s for the worker: two children each allowed 5/s ran ~7.5-10/s before the fix.
    assert 2.0 < rate <= 5.5, f"{rate:.2f} tasks/s"
    # The limit is kept for the cluster (docs/flow-control.md): a start may come up to
    # BOOKING_GRACE after its booked time, so single gaps can be short; no second holds
    # more than the rate, one token of bucket and that grace's worth.
    most = max(bisect.bisect_right(starts, t + 1.0) - i for i, t in enumerate(starts))
    assert most <= 5 * (1 + BOOKING_GRACE) + 1, starts


def test_retry_kwargs_countdown_in_the_worker(port: Port) -> None:
    log = port.worker("-c", "1")
    task_id = port.send("flaky")
    wait_for(lambda: port.client.AsyncResult(task_id).state == states.RETRY, 30, "a retry")
    wait_for(lambda: "retry 1 in 600s" in log.read_text(), 10, "the retry log line")


def test_celery_style_errback_runs_with_request_exception_and_traceback(
    port: Port, tmp_path: Path
) -> None:
    port.worker("-c", "1")
    path = tmp_path / "errbacks.runs"
    errback = port.client.signature("portapp.on_error", args=(str(path),))
    failed = port.client.send_task("portapp.boom", (3,), link_error=errback)
    with pytest.raises(Exception, match="boom 3"):
        failed.get(timeout=30)
    found = wait_for(lambda: lines(path), 30, "the errback's line")
    assert found == [f"errback {failed.id} [3] ValueError True"]


def test_setup_logging_receiver_of_the_app_module_configures_the_worker(
    port: Port, tmp_path: Path
) -> None:
    logfile = tmp_path / "app.log"
    port.worker("-c", "1", PORTAPP_LOGFILE=str(logfile))
    task_id = port.send("wrapped", str(tmp_path / "x.runs"), 1)
    assert port.result(task_id) == 2
    wait_for(
        lambda: logfile.exists() and f"portapp.wrapped[{task_id}] succeeded" in logfile.read_text(),
        15,
        "the task's log line in the receiver's file",
    )
    assert logfile.read_text().startswith("PORTAPP ")
