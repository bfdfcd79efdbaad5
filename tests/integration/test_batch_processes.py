"""Batches on real brokers (SQLite, Redis, PostgreSQL; RabbitMQ with the batch state in a Redis
result store) with a real ``conveyor worker`` process whose member is SIGKILLed at each
dangerous point: every callback still runs exactly once.

This module is also that worker's app module (``app`` exists only when ``BATCH_IT_BROKER``
is set); the crash hook named by ``BATCH_IT_CRASH`` is installed in the worker processes.
"""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor import Conveyor, batch, states
from conveyor.testing import TestWorker
from tests.conftest import wait_until
from tests.helpers import redis_fixture
from tests.integration.test_canvas_brokers import CliWorker as _CanvasCliWorker
from tests.integration.test_canvas_brokers import first_time, idle, lines, mark
from tests.pg_server import PostgresServer
from tests.rabbit_server import RabbitServer
from tests.servers import RedisServer

ROOT = Path(__file__).resolve().parents[2]


def create_app(broker: str, prefix: str, results: str | None = None) -> Conveyor:
    app = Conveyor(
        "batch_it",
        broker=broker,
        result_backend=results,
        set_as_default=False,
        broker_lease_timeout=1.0,
        broker_sweep_interval=0.5,
        broker_transport_options={"key_prefix": prefix},
    )

    @app.task(name="batch_it.work")
    def work(i: int) -> int:
        return i

    @app.task(name="batch_it.victim")
    def victim(i: int, directory: str) -> int:
        folder = Path(directory)
        mark(folder / "victim", "start")
        if os.environ.get("BATCH_IT_CRASH") == "mid_run" and first_time(folder / "crashed"):
            os.kill(os.getpid(), signal.SIGKILL)
        deadline = time.monotonic() + 30
        while not (folder / "go").exists():  # the test says when the other members are done
            if time.monotonic() > deadline:
                raise TimeoutError("no go")
            time.sleep(0.02)  # polling a file under a deadline
        return i

    @app.task(name="batch_it.callback")
    def callback(summary: dict[str, Any], kind: str, directory: str) -> None:
        mark(Path(directory) / "callbacks", json.dumps([kind, summary["total"], summary["failed"]]))

    return app


def install_crash_hook(mode: str, folder: Path) -> None:
    """Kill this worker process the first time the victim gets to ``mode``:

    * ``before_count``: its result is stored; the batch never counted it;
    * ``before_ack``: counted, the batch completed, callbacks sent; the message is not acked;
    * ``after_send``: the first callback was sent, its "sent" marker not written.
    """
    from conveyor.canvas import batch as batches
    from conveyor.canvas import followups

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    if mode in {"before_count", "before_ack"}:
        real = followups.member_finished

        def hooked(app: Conveyor, batch_id: str, member_id: str, state: str) -> None:
            if mode == "before_count" and first_time(folder / "crashed"):
                die()
            real(app, batch_id, member_id, state)
            if mode == "before_ack" and first_time(folder / "crashed"):
                die()

        followups.member_finished = hooked  # type: ignore[assignment]
    elif mode == "after_send":
        real_send = batches.SendPlan.send

        def send(self: Any) -> None:
            real_send(self)
            if self.once and first_time(folder / "crashed"):
                die()

        batches.SendPlan.send = send  # type: ignore[method-assign]


if os.environ.get("BATCH_IT_BROKER"):  # imported by `conveyor worker -A` in the crash test
    app = create_app(
        os.environ["BATCH_IT_BROKER"],
        os.environ["BATCH_IT_PREFIX"],
        os.environ.get("BATCH_IT_RESULTS"),
    )
    install_crash_hook(os.environ.get("BATCH_IT_CRASH", ""), Path(os.environ["BATCH_IT_DIR"]))


class CliWorker(_CanvasCliWorker):
    """``conveyor worker -A tests.integration.test_batch_processes``."""

    def __init__(self, env: dict[str, str], log: Path, queues: str) -> None:
        import subprocess
        import sys

        self.log = log.open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                *("-m", "conveyor", "worker", "-A", "tests.integration.test_batch_processes"),
                *("-c", "1", "-Q", queues, "-l", "warning"),
            ],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


batch_redis = redis_fixture(appendonly=False)


@pytest.fixture(
    params=[
        pytest.param("sqlite"),
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("amqp", marks=(pytest.mark.amqp, pytest.mark.redis)),
    ]
)
def broker_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/conveyor.db"
    if request.param == "postgres":
        pg: PostgresServer = request.getfixturevalue("postgres_server")
        return f"{pg.url()}?schema=b{uuid.uuid4().hex[:12]}"
    if request.param == "amqp":
        rabbit: RabbitServer = request.getfixturevalue("rabbit_server")
        return rabbit.url
    server: RedisServer = request.getfixturevalue("batch_redis")
    return server.url


@pytest.fixture
def results_url(broker_url: str, request: pytest.FixtureRequest) -> str | None:
    """RabbitMQ holds messages only: batch state lives in the result store's server."""
    if not broker_url.startswith("amqp"):
        return None
    server: RedisServer = request.getfixturevalue("batch_redis")
    return server.url


@pytest.fixture
def prefix() -> str:
    return f"b{uuid.uuid4().hex[:10]}"


@pytest.fixture
def it_app(broker_url: str, prefix: str, results_url: str | None) -> Iterator[Conveyor]:
    app = create_app(broker_url, prefix, results_url)
    yield app
    app.close()


@pytest.mark.parametrize(
    "crash",
    [
        "before_ack",  # the most dangerous point: counted, completed, sent, not acked
        pytest.param("mid_run", marks=pytest.mark.slow),
        pytest.param("before_count", marks=pytest.mark.slow),
        pytest.param("after_send", marks=pytest.mark.slow),
    ],
)
def test_callbacks_fire_once_when_a_members_worker_is_killed(
    it_app: Conveyor,
    broker_url: str,
    results_url: str | None,
    prefix: str,
    tmp_path: Path,
    crash: str,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    env.update(
        BATCH_IT_BROKER=broker_url,
        BATCH_IT_PREFIX=prefix,
        BATCH_IT_CRASH=crash,
        BATCH_IT_DIR=str(tmp_path),
        PYTHONPATH=str(ROOT),
    )
    if results_url is not None:
        env["BATCH_IT_RESULTS"] = results_url
    folder = str(tmp_path)
    callbacks = {
        f"on_{kind}": it_app.signature(
            "batch_it.callback", kwargs={"kind": kind, "directory": folder}
        )
        for kind in ("success", "complete", "death")
    }
    cli = CliWorker(env, tmp_path / "worker.log", "victim")
    worker = TestWorker(it_app, concurrency=4).start()
    try:
        members = [it_app.signature("batch_it.work", (i,)) for i in range(4)]
        members.append(it_app.signature("batch_it.victim", (4, folder)).set(queue="victim"))
        result = batch(members, **callbacks).apply_async()
        wait_until(lambda: result.progress().done == 4, 20, "the other members")
        (tmp_path / "go").touch()
        wait_until(lambda: result.completed, 40, "the batch completes")
        wait_until(lambda: (tmp_path / "crashed").exists(), 10, "the crash")
        wait_until(lambda: idle(it_app, ["victim", "default"]), 30, "empty queues")
        worker.drain(20)
        wait_until(lambda: len(lines(tmp_path / "callbacks")) >= 2, 10, "callbacks ran")
        progress = result.progress()
        assert (progress.done, progress.total, progress.failed) == (5, 5, 0)
    except BaseException:
        print((tmp_path / "worker.log").read_text(errors="replace"))
        raise
    finally:
        worker.stop(timeout=10)
        cli.stop()
    ran = sorted(line.split(" ", 1)[1] for line in lines(tmp_path / "callbacks"))
    assert ran == sorted([json.dumps(["complete", 5, 0]), json.dumps(["success", 5, 0])])
    assert [r.state for r in result.results] == [states.SUCCESS] * 5
