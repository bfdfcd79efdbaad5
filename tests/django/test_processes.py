"""The test project against real worker and beat processes (``manage.py conveyor_worker`` /
``conveyor_beat``), on the SQLite broker and on Redis, sharing the test database file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from django.tasks import TaskResultStatus
from django.test import Client

from conveyor import Conveyor, states
from conveyor.contrib.django.models import PeriodicTask, TaskResult
from tests.conftest import wait_until
from tests.helpers import redis_fixture
from tests.servers import RedisServer

from .testproj.shop import tasks
from .testproj.shop.models import Order

pytestmark = pytest.mark.django_db(transaction=True)

MANAGE = Path(__file__).resolve().parent / "manage.py"
REPO = MANAGE.parents[2]


wait_for = partial(wait_until, timeout=20.0, interval=0.05)
redis_server = redis_fixture(appendonly=False)


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def broker_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/broker.db"
    import redis

    server: RedisServer = request.getfixturevalue("redis_server")
    client = redis.Redis.from_url(server.url)
    client.flushall()
    client.close()
    return server.url


class Processes:
    """Processes of the test project, stopped (SIGTERM) and their output shown at the end."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.running: list[tuple[subprocess.Popen[bytes], Path]] = []

    def manage(self, *args: str) -> subprocess.Popen[bytes]:
        log = self.logs / f"{len(self.running)}-{args[0]}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, str(MANAGE), *args],
                env=self.env,
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.running.append((process, log))
        return process

    def stop(self, process: subprocess.Popen[bytes], timeout: float = 30.0) -> int:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        return process.returncode

    def close(self) -> None:
        for process, log in self.running:
            self.stop(process)
            print(f"---- {log.name} (exit {process.returncode})\n{log.read_text()[-4000:]}")


@pytest.fixture
def project(
    app: Conveyor, broker_url: str, tmp_path: Path, transactional_db: None
) -> Iterator[Processes]:
    app.conf.broker_url = broker_url
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.django.testproj.settings",
        "TESTPROJ_DB": str(connection.settings_dict["NAME"]),
        "TESTPROJ_BROKER": broker_url,
        "PYTHONUNBUFFERED": "1",
    }
    processes = Processes(env, tmp_path)
    yield processes
    processes.close()


def start_worker(project: Processes, *args: str) -> subprocess.Popen[bytes]:
    process = project.manage("conveyor_worker", "-c", "1", "-Q", "default,emails", *args)
    assert tasks.add.delay(1, 1).get(timeout=30) == 2  # up and consuming
    return process


def test_seed_flow_view_on_commit_and_status_polling(app: Conveyor, project: Processes) -> None:
    start_worker(project)
    client = Client()
    created = client.post("/orders/", {"item": "book"}, content_type="application/json").json()

    def finished() -> dict[str, Any] | None:
        status = client.get(f"/tasks/{created['task_id']}/").json()
        return status if status["ready"] else None

    assert wait_for(finished, what="task finished")["state"] == states.SUCCESS
    assert Order.objects.get(pk=created["order"]).confirmed

    rolled_back = client.post(
        "/orders/", {"item": "pen", "fail": True}, content_type="application/json"
    ).json()
    assert not Order.objects.filter(pk=rolled_back["order"]).exists()
    assert tasks.add.delay(2, 2).get(timeout=20) == 4  # the worker is idle by now
    assert client.get(f"/tasks/{rolled_back['task_id']}/").json()["state"] == states.PENDING


def test_django_tasks_on_a_real_worker(app: Conveyor, project: Processes) -> None:
    start_worker(project)
    welcome = tasks.send_welcome.enqueue("ann@example.com", name="Ann")
    crash = tasks.crash.enqueue("lost")
    flaky = tasks.flaky.enqueue(1)
    double = tasks.async_double.enqueue(4)
    urgent = tasks.urgent_email.enqueue("b@example.com")
    for result in (welcome, crash, flaky, double, urgent):
        wait_for(lambda r=result: r.refresh() or r.is_finished, what=f"{result.task.name}")
    assert welcome.return_value == {"to": "ann@example.com", "body": "Welcome Ann"}
    assert crash.status == TaskResultStatus.FAILED and crash.attempts == 3
    assert crash.errors[-1].exception_class_path == "builtins.KeyError"
    assert flaky.return_value == 2 and len(flaky.errors) == 1
    assert double.return_value == 8
    assert urgent.return_value == "urgent:b@example.com"
    assert all(worker.startswith(welcome.worker_ids[0][:8]) for worker in crash.worker_ids)


def test_connection_broken_between_tasks_on_a_real_worker(
    app: Conveyor, project: Processes
) -> None:
    start_worker(project)
    Order.objects.create(item="a")
    tasks.break_connection.delay().get(timeout=20)
    assert tasks.count_orders.delay().get(timeout=20) == 1


def test_beat_process_sends_database_schedules(app: Conveyor, project: Processes) -> None:
    start_worker(project)
    for n in range(2):
        project.manage(
            "conveyor_beat", "--poll-interval", "0.3", "--max-interval", "0.3", "-n", f"b{n}"
        )
    PeriodicTask.objects.create(
        name="tick", task=tasks.add.name, kind="interval", interval=timedelta(seconds=0.5),
        args=[20, 1],
    )  # fmt: skip

    def runs() -> int:
        return TaskResult.objects.filter(periodic_entry="tick", state=states.SUCCESS).count()

    wait_for(lambda: runs() >= 3, what="three runs")
    PeriodicTask.objects.filter(name="tick").update(enabled=False)
    time.sleep(1.5)
    settled = TaskResult.objects.filter(periodic_entry="tick").count()
    time.sleep(1.5)
    assert TaskResult.objects.filter(periodic_entry="tick").count() == settled
    row = PeriodicTask.objects.get(name="tick")
    assert row.total_run_count == settled  # every run sent once, by one of the two beats
    assert row.last_run_at is not None


def test_worker_with_embedded_beat(app: Conveyor, project: Processes) -> None:
    PeriodicTask.objects.create(
        name="embedded",
        task=tasks.add.name,
        kind="interval",
        interval=timedelta(seconds=0.5),
        args=[1, 2],
    )
    worker = start_worker(project, "-B")
    wait_for(
        lambda: TaskResult.objects.filter(periodic_entry="embedded", state=states.SUCCESS).count(),
        what="a run of the embedded beat",
    )
    assert project.stop(worker) == 0
    log = next(path for process, path in project.running if process is worker).read_text()
    assert "beat:         on (manage.py conveyor_beat, pid " in log  # not "off"


def test_reload_restarts_the_worker_on_code_change(app: Conveyor, project: Processes) -> None:
    start_worker(project, "--reload")
    first = tasks.worker_pid.delay().get(timeout=20)
    source = Path(tasks.__file__)
    stat = source.stat()
    try:
        os.utime(source, (stat.st_atime, stat.st_mtime + 5))
        wait_for(
            lambda: tasks.worker_pid.delay().get(timeout=20) != first,
            timeout=30,
            what="a restarted worker",
        )
    finally:
        os.utime(source, (stat.st_atime, stat.st_mtime))


def test_conveyor_cli_with_a_django_project(app: Conveyor, project: Processes) -> None:
    """`conveyor worker -A proj`, as with Celery: the app module sets DJANGO_SETTINGS_MODULE."""
    env = dict(project.env)
    del env["DJANGO_SETTINGS_MODULE"]
    Order.objects.create(item="a")
    process = subprocess.Popen(
        [sys.executable, "-m", "conveyor", "worker", "-A", "tests.django.testproj", "-c", "1"],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    result = tasks.count_orders.delay()
    try:
        wait_for(lambda: process.poll() is not None or result.ready(), what="the CLI worker")
        assert result.get(timeout=0) == 1
        tasks.break_connection.delay().get(timeout=20)
        assert tasks.count_orders.delay().get(timeout=20) == 1
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
