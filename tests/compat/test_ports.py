"""Celery's own examples and the seeds' code, ported by the import swap, against a real worker
on SQLite and on Redis: a change that breaks Celery code fails here.

One worker per broker (``tests.compat.workerapp``: every port's tasks) serves the module;
each test loads the ports afresh, so their apps connect to that broker through
``CELERY_BROKER_URL`` / ``CELERY_RESULT_BACKEND`` (the code keeps its ``amqp://`` URLs).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from conveyor import ConfigurationError, Conveyor, SerializationError, chain, group, states
from conveyor.celery_names import CeleryNameWarning, forget_warnings
from tests.conftest import wait_until
from tests.helpers import redis_fixture
from tests.servers import RedisServer

from .support import PORTS, load_all

ROOT = Path(__file__).resolve().parents[2]
redis_server = redis_fixture(appendonly=False)


class Worker:
    """``conveyor -A tests.compat.workerapp worker`` on one broker, and fresh ports on it."""

    def __init__(self, url: str, log: Path) -> None:
        self.url = url
        self.log = log
        self.env = {
            **os.environ,
            "CELERY_BROKER_URL": url,
            "CELERY_RESULT_BACKEND": url,
            "PYTHONPATH": str(ROOT),
        }
        for name in ("CONVEYOR_BROKER_URL", "CONVEYOR_RESULT_BACKEND", "CONVEYOR_APP"):
            self.env.pop(name, None)
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "conveyor",
                    "-A",
                    "tests.compat.workerapp",
                    "worker",
                    "-c",
                    "1",
                    "--threads",
                    "4",
                    "-l",
                    "info",
                ],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.apps: list[Conveyor] = []
        # examples/app's task sleeps 10 s: sent now, read by the last test, so the wait
        # overlaps the other tests.
        self.slow_add = self.ports()["app/myapp.py"].add.delay(16, 16)

    def ports(self) -> dict[str, ModuleType]:
        ports = load_all()
        self.apps += [port.app for port in ports.values()]
        return ports

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def close(self) -> None:
        for app in self.apps:
            app.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)


@pytest.fixture(
    scope="module",
    params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)],
)
def worker(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Worker]:
    tmp = tmp_path_factory.mktemp(f"compat-{request.param}")
    if request.param == "sqlite":
        url = f"sqlite:///{tmp}/broker.db"
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        url = server.url
    saved = {name: os.environ.get(name) for name in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND")}
    os.environ.update(CELERY_BROKER_URL=url, CELERY_RESULT_BACKEND=url)
    started = Worker(url, tmp / "worker.log")
    try:
        yield started
    finally:
        started.close()
        print(started.output())
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture
def ports(worker: Worker) -> dict[str, ModuleType]:
    return worker.ports()


# -- Celery's examples -----------------------------------------------------------------------
def test_tutorial(ports: dict[str, ModuleType]) -> None:
    tasks = ports["tutorial/tasks.py"]
    assert tasks.add.name == "tasks.add"
    result = tasks.add.delay(4, 4)
    assert result.get(timeout=30) == 8
    assert result.state == states.SUCCESS and result.successful()


def test_next_steps(ports: dict[str, ModuleType], worker: Worker) -> None:
    celery = ports["next_steps"]
    assert celery.app.conf.result_expires == 3600
    from proj import tasks  # loaded by include=["proj.tasks"] when the app is finalized

    celery.app.finalize()
    assert tasks.add.delay(2, 2).get(timeout=20) == 4
    assert tasks.add.apply_async((2, 2), countdown=1).get(timeout=20) == 4
    assert tasks.xsum.delay([1, 2, 3]).get(timeout=20) == 6
    # The canvas chapter of "next steps": partials, chains, groups, chords.
    assert tasks.add.s(2, 2).delay().get(timeout=20) == 4
    assert (tasks.add.s(4, 4) | tasks.mul.s(8))().get(timeout=20) == 64
    assert chain(tasks.add.s(4, 4), tasks.mul.s(8))().get(timeout=20) == 64
    assert group(tasks.add.s(i, i) for i in range(10))().get(timeout=20) == list(range(0, 20, 2))
    mapped = tasks.add.chunks(zip(range(10), range(10), strict=True), 5)().get(timeout=20)
    assert mapped == [[0, 2, 4, 6, 8], [10, 12, 14, 16, 18]]
    chord_of = group(tasks.add.s(i, i) for i in range(10)) | tasks.xsum.s()
    assert chord_of().get(timeout=20) == 90
    # `celery -A proj worker` finds proj/celery.py (here: `conveyor -A proj`).
    shown = subprocess.run(
        [sys.executable, "-m", "conveyor", "-A", "proj", "result", "some-id"],
        cwd=PORTS / "next_steps",
        env=worker.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (shown.returncode, shown.stdout.strip()) == (0, "PENDING"), shown.stderr


def test_periodic_tasks(ports: dict[str, ModuleType]) -> None:
    myapp = ports["periodic_tasks/myapp.py"]
    myapp.app.finalize()  # sends on_after_configure, which adds the entry
    entry = myapp.app.conf.beat_schedule["add every 10"]
    assert (entry["task"], entry["schedule"], entry["args"]) == ("myapp.say", 10.0, ("hello",))
    assert myapp.say.delay("hello").get(timeout=20) is None


def test_resultgraph(ports: dict[str, ModuleType]) -> None:
    tasks = ports["resultgraph/tasks.py"]
    # The example's docstring: a task (A) returning a group of tasks (B) that each return a
    # chord, joined through every level by joinall() (ResultSet.join, AsyncResult.get).
    graph = list(tasks.joinall(tasks.A.apply_async(), timeout=60))
    assert graph == [[f"{c} {i!r}" for i in range(10)] for c in "ABCDEFGH"]
    # Its asynchronous join passes an AsyncResult as an argument: Celery's JSON serializer
    # refuses that (only pickle sends it); so does Conveyor, at the call site and by name.
    with pytest.raises(SerializationError, match=r"argument 0 is a conveyor.result.AsyncResult"):
        tasks.unlock_graph.apply_async((tasks.A.apply_async(), tasks.A_callback.s()), countdown=1)


def test_app_example(ports: dict[str, ModuleType], worker: Worker) -> None:
    myapp = ports["app/myapp.py"]
    assert myapp.app.conf.task_acks_late is True
    for spec in ("myapp", "myapp:app"):
        found = subprocess.run(
            [sys.executable, "-m", "conveyor", "-A", spec, "result", "x"],
            cwd=PORTS / "app",
            env=worker.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert found.returncode == 0, found.stderr
    assert worker.slow_add.get(timeout=40) == 32  # myapp.add, sent when the worker started


# -- the seeds -------------------------------------------------------------------------------
def test_seed_tasks_chains_groups_and_signatures(ports: dict[str, ModuleType]) -> None:
    tasks = ports["seeds/tasks.py"]
    chained = chain(tasks.add.s(3, 4) | tasks.mul.s(2))
    assert chained().get(timeout=20) == 14
    assert tasks.greet.signature(("John", "Doe")).apply_async().get(timeout=20) == (
        "Hello John Doe"
    )
    assert group([tasks.add.s(i, i) for i in range(10)]).apply_async().get(timeout=20) == [
        2 * i for i in range(10)
    ]
    failing = tasks.error_task.delay()
    wait_until(lambda: failing.state == states.RETRY, timeout=20, interval=0.05)
    assert tasks.app.conf.beat_schedule["add-every-minute"]["args"] == (16, 16)
    # `@current_app.task`: on the app the module created last, with its retry options.
    retry_task = tasks.app.tasks["tasks.retry_task"]
    assert retry_task is tasks.retry_task
    assert (retry_task.max_retries, retry_task.default_retry_delay) == (3, 5)
    # It takes an exception as its argument: JSON cannot carry one (nor can Celery's JSON
    # serializer); the call fails where it is made.
    with pytest.raises(SerializationError, match=r"argument 0 is a builtins\.ValueError"):
        tasks.retry_task.delay(ValueError("boom"))


def test_seed_custom_task_classes_run_their_call_in_the_worker(
    ports: dict[str, ModuleType], worker: Worker
) -> None:
    tasks = ports["seeds/tasks.py"]
    assert tasks.my_task.delay().get(timeout=20) == "done"
    wait_until(
        lambda: "Task tasks.my_task completed successfully" in worker.output(),
        timeout=20,
        interval=0.05,
    )
    assert "Starting task tasks.my_task" in worker.output()
    sent = tasks.process_data.delay([1, 2], location="us")
    assert sent.get(timeout=20) == {"data": [1, 2], "location": "us"}
    assert tasks.process_data.apply(args=([3],)).get() == {"data": [3], "location": "eu"}


def test_seed_configuration_objects() -> None:
    forget_warnings()
    app = Conveyor("seed", broker="memory://")
    with pytest.warns(CeleryNameWarning, match="CELERYD_(PREFETCH_MULTIPLIER|MAX_TASKS)"):
        app.config_from_object("tests.compat.ports.seeds.celeryconfig:Config")
    assert (app.conf.worker_prefetch_multiplier, app.conf.worker_max_tasks_per_child) == (4, 1000)
    # The RabbitMQ module loads as it is: the queues are read (as conveyor.Queue); the default
    # exchange and routing key name the default queue, which changes nothing.
    other = Conveyor("seed2", broker="memory://")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CeleryNameWarning)
        other.config_from_object("tests.compat.ports.seeds.celery_config")
        with pytest.raises(ConfigurationError, match="routes by queue name"):
            other.conf.task_default_exchange = "elsewhere"  # type: ignore[attr-defined]
    queues = {q.name: q.max_priority for q in other.conf.task_queues}
    assert queues == {"default": None, "high_priority": 10}
    assert other.conf.task_default_queue == "default"


def test_django_example(tmp_path: Path) -> None:
    """Celery's examples/django: `conveyor -A proj worker` in the project (which has no
    conveyor.contrib.django in INSTALLED_APPS) and a Django process sending its tasks."""
    project = PORTS / "django"
    env = {
        **os.environ,
        "CELERY_BROKER_URL": f"sqlite:///{tmp_path}/broker.db",
        "CELERY_RESULT_BACKEND": f"sqlite:///{tmp_path}/broker.db",
        "COMPAT_DJANGO_DB": str(tmp_path / "django.db"),
        "PYTHONPATH": str(project),
    }
    for name in ("CONVEYOR_BROKER_URL", "CONVEYOR_RESULT_BACKEND", "DJANGO_SETTINGS_MODULE"):
        env.pop(name, None)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, *args],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
            timeout=90,
        )

    migrated = run("manage.py", "migrate", "-v", "0")
    assert migrated.returncode == 0, migrated.stderr
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "conveyor", "-A", "proj", "worker", "-c", "1"],
            cwd=project,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        produced = run("produce.py")
        assert produced.returncode == 0, produced.stderr + log.read_text()
        assert "django example: ok" in produced.stdout
        lines = produced.stdout.splitlines()
        sent = dict(line.split() for line in lines if line.startswith("error"))
        # retry_kwargs' countdown (10 minutes), and retry_backoff=5 without jitter: 5 s, 10 s.
        for name, retry in [
            ("error_task", "retry 1 in 600s"),
            ("error_backoff_test", "retry 1 in 5s"),
            ("error_backoff_test", "retry 2 in 10s"),
        ]:
            logged = f"demoapp.tasks.{name}[{sent[name]}] {retry}: Exception('Test error')"
            wait_until(lambda text=logged: text in log.read_text(), timeout=30, interval=0.1)
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(10)
    text = log.read_text()
    for name in ("demoapp.tasks.add", "demoapp.tasks.rename_widget", "proj.celery.debug_task"):
        assert f". {name}" in text, text  # autodiscovered and shown in the banner
    assert "Traceback" not in text
