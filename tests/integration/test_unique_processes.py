"""Unique tasks in a real ``conveyor worker`` (SQLite, Redis; RabbitMQ with its keys in a
SQLite result store): the worker frees keys at the mode's point, and a worker SIGKILLed while
running a task leaves its key held until the redelivered task ends in another worker.

This module is also that worker's app module (``app`` exists only when ``UNIQUE_IT_BROKER``
is set).
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor import Conveyor, states
from conveyor.testing import TestWorker
from tests.conftest import wait_until
from tests.helpers import redis_fixture
from tests.integration.test_canvas_brokers import CliWorker as _CanvasCliWorker
from tests.integration.test_canvas_brokers import first_time, lines, mark
from tests.rabbit_server import RabbitServer
from tests.servers import RedisServer

ROOT = Path(__file__).resolve().parents[2]


def create_app(broker: str, prefix: str, results: str | None = None) -> Conveyor:
    app = Conveyor(
        "unique_proc",
        broker=broker,
        result_backend=results,
        set_as_default=False,
        broker_lease_timeout=1.0,
        broker_sweep_interval=0.5,
        broker_transport_options={"key_prefix": prefix},
    )

    @app.task(name="unique_proc.build", unique_for=120)
    def build(n: int, directory: str) -> int:
        folder = Path(directory)
        mark(folder / "runs", "start")
        if n == 1 and first_time(folder / "crashed"):
            os.kill(os.getpid(), signal.SIGKILL)  # the worker dies holding the task
        deadline = time.monotonic() + 30
        while not (folder / "go").exists():  # the test says when to finish
            if time.monotonic() > deadline:
                raise TimeoutError("no go")
            time.sleep(0.02)  # polling a file under a deadline
        return n

    @app.task(name="unique_proc.started", unique_for=120, unique_mode="until_started")
    def started(directory: str) -> None:
        mark(Path(directory) / "started", "start")
        deadline = time.monotonic() + 30
        while not (Path(directory) / "go-started").exists():
            if time.monotonic() > deadline:
                raise TimeoutError("no go")
            time.sleep(0.02)  # polling a file under a deadline

    return app


if os.environ.get("UNIQUE_IT_BROKER"):  # imported by `conveyor worker -A`
    app = create_app(
        os.environ["UNIQUE_IT_BROKER"],
        os.environ["UNIQUE_IT_PREFIX"],
        os.environ.get("UNIQUE_IT_RESULTS"),
    )


class CliWorker(_CanvasCliWorker):
    """``conveyor worker -A tests.integration.test_unique_processes``."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        import subprocess
        import sys

        self.log = log.open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                *("-m", "conveyor", "worker", "-A", "tests.integration.test_unique_processes"),
                *("-c", "1", "-l", "warning"),
            ],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


unique_proc_redis = redis_fixture(appendonly=False)


@pytest.fixture(
    params=[
        pytest.param("sqlite"),
        pytest.param("redis", marks=(pytest.mark.redis, pytest.mark.slow)),  # the suite's budget
        pytest.param("amqp", marks=pytest.mark.amqp),
    ]
)
def broker_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/conveyor.db"
    if request.param == "amqp":
        rabbit: RabbitServer = request.getfixturevalue("rabbit_server")
        return rabbit.url
    server: RedisServer = request.getfixturevalue("unique_proc_redis")
    return server.url


@pytest.fixture
def results_url(broker_url: str, tmp_path: Path) -> str | None:
    """RabbitMQ holds messages only: its unique keys live in the result store's server."""
    return f"sqlite:///{tmp_path}/results.db" if broker_url.startswith("amqp") else None


@pytest.fixture
def prefix() -> str:
    return f"up{uuid.uuid4().hex[:10]}"


@pytest.fixture
def it_app(broker_url: str, prefix: str, results_url: str | None) -> Iterator[Conveyor]:
    app = create_app(broker_url, prefix, results_url)
    yield app
    app.close()


def test_keys_in_a_worker_process_and_after_its_death(
    it_app: Conveyor, broker_url: str, results_url: str | None, prefix: str, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    env.update(UNIQUE_IT_BROKER=broker_url, UNIQUE_IT_PREFIX=prefix, PYTHONPATH=str(ROOT))
    if results_url is not None:
        env["UNIQUE_IT_RESULTS"] = results_url
    folder = str(tmp_path)
    build, started = it_app.tasks["unique_proc.build"], it_app.tasks["unique_proc.started"]
    cli = CliWorker(env, tmp_path / "worker.log")
    try:
        # until_started: free as soon as the worker process starts it
        first = started.delay(folder)
        wait_until(lambda: lines(tmp_path / "started"), 30, "the worker starts it")
        second = wait_until(
            lambda: (r := started.delay(folder)).duplicate_of is None and r, 10, "key freed"
        )
        assert second.id != first.id
        (tmp_path / "go-started").touch()
        # until_finished: the worker process dies running it; the key stays with the task
        victim = build.delay(1, folder)
        wait_until(lambda: (tmp_path / "crashed").exists(), 30, "the crash")
        assert build.delay(1, folder).duplicate_of == victim.id
        wait_until(lambda: len(lines(tmp_path / "runs")) >= 2, 30, "the redelivered run")
        assert build.delay(1, folder).duplicate_of == victim.id  # running again: still held
        (tmp_path / "go").touch()
        assert victim.get(timeout=30) == 1
        fresh = wait_until(
            lambda: (r := build.delay(1, folder)).duplicate_of is None and r, 10, "key freed"
        )
        assert fresh.id != victim.id
        assert fresh.get(timeout=30) == 1
        assert second.get(timeout=30) is None and first.state == states.SUCCESS
    except BaseException:
        print((tmp_path / "worker.log").read_text(errors="replace"))
        raise
    finally:
        cli.stop()
    with TestWorker(it_app) as worker:
        worker.run_until_idle()
