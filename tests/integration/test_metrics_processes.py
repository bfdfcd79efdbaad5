"""Prometheus metrics of real worker processes: a prefork worker's children send their figures
to the supervisor, which serves their sum (also across recycled children); ``conveyor
metrics`` serves queue depths and live workers read from the broker."""

from __future__ import annotations

import socket
import subprocess
import sys
import urllib.request
from collections.abc import Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conveyor import Task
from tests.integration.test_worker_processes import (  # noqa: F401 - fixtures
    ROOT,
    Harness,
    WorkerProcess,
    backend,
    harness_factory,
    redis_server,
    wait_for,
)
from tests.integration.workerapp import create_app
from tests.servers import free_port

app = create_app()


@app.task(name="workerapp.fail")
def fail() -> None:
    raise ValueError("no")


@app.task(name="workerapp.flaky", bind=True)
def flaky(self: Task[[], str]) -> str:
    if self.request.retries == 0:
        raise self.retry(countdown=0)
    return "ok"


SPEC = "tests.integration.test_metrics_processes:app"

type Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def by_task(samples: Samples, metric: str) -> dict[str, float]:
    """``metric``'s value per task name (the ``name`` label)."""
    return {
        dict(labels)["name"]: value for (name, labels), value in samples.items() if name == metric
    }


def try_scrape(port: int) -> Samples | None:
    try:
        return scrape(port)
    except OSError:
        return None


@pytest.fixture
def harness(harness_factory: Callable[..., Harness]) -> Harness:  # noqa: F811
    return harness_factory()


def test_prefork_supervisor_serves_the_exact_sum_of_its_children(harness: Harness) -> None:
    port = free_port()
    log = harness.tmp_path / "worker.log"
    worker = WorkerProcess(
        harness.env,
        log,
        [
            "-l",
            "info",
            "-c",
            "2",
            "--max-tasks-per-child",
            "2",
            "--metrics-port",
            str(port),
            "-n",
            "metrics@test",
            "-A",
            SPEC,
        ],
    )
    harness.workers.append(worker)
    results = [harness.send("add", i, 1) for i in range(5)]
    results += [harness.send("fail") for _ in range(2)]
    results.append(harness.send("flaky"))
    # Killed by the supervisor at its hard time limit (1 s): the supervisor counts the failure.
    results.append(harness.send("hard_limited", str(harness.file()), 30))
    for result in results:
        result.get(timeout=30, propagate=False)

    expected = {
        "conveyor_task_started_total": {
            "workerapp.add": 5,
            "workerapp.fail": 2,
            "workerapp.flaky": 2,
            "workerapp.hard_limited": 1,
        },
        "conveyor_task_received_total": {
            "workerapp.add": 5,
            "workerapp.fail": 2,
            "workerapp.flaky": 2,
            "workerapp.hard_limited": 1,
        },
        "conveyor_task_succeeded_total": {"workerapp.add": 5, "workerapp.flaky": 1},
        "conveyor_task_failed_total": {"workerapp.fail": 2, "workerapp.hard_limited": 1},
        "conveyor_task_retried_total": {"workerapp.flaky": 1},
        "conveyor_task_dead_lettered_total": {"workerapp.hard_limited": 1},
        "conveyor_task_runtime_seconds_count": {
            "workerapp.add": 5,
            "workerapp.fail": 2,
            "workerapp.flaky": 2,
            "workerapp.hard_limited": 1,
        },
        "conveyor_task_queue_wait_seconds_count": {
            "workerapp.add": 5,
            "workerapp.fail": 2,
            "workerapp.flaky": 2,
            "workerapp.hard_limited": 1,
        },
    }

    def matches() -> bool:
        samples = try_scrape(port)
        return samples is not None and all(
            by_task(samples, metric) == want for metric, want in expected.items()
        )

    wait_for(matches, 20, f"exact counts; worker log:\n{harness.output()}")
    samples = scrape(port)
    # Children were recycled after 2 tasks each: their last figures were not lost.
    assert sum(by_task(samples, "conveyor_task_started_total").values()) == 10
    labels = {dict(labels)["hostname"] for (_, labels), _ in samples.items() if labels}
    assert labels == {"metrics@test"}
    assert samples[("conveyor_worker_slots", (("hostname", "metrics@test"),))] == 2
    queues = {
        dict(found).get("queue_name")
        for (name, found), _ in samples.items()
        if name.startswith("conveyor_task_")
    }
    assert queues == {"default"}


def test_solo_worker_serves_its_metrics(harness: Harness) -> None:
    port = free_port()
    worker = harness.worker("--pool", "solo", "--metrics-port", str(port), "-n", "solo@test")
    assert harness.send("add", 1, 2).get(timeout=20) == 3

    def counted() -> bool:
        samples = try_scrape(port)
        return samples is not None and by_task(samples, "conveyor_task_succeeded_total") == {
            "workerapp.add": 1
        }

    wait_for(counted, 15, f"one success; log:\n{worker.output()}")
    samples = scrape(port)
    assert samples[("conveyor_worker_slots", (("hostname", "solo@test"),))] == 1
    assert samples[("conveyor_worker_slots_idle", (("hostname", "solo@test"),))] == 1


def test_metrics_exporter_serves_queue_depths_and_workers(harness: Harness) -> None:
    for i in range(3):
        harness.send("add", i, i)
    harness.send("add", 0, 0, countdown=3600)
    port = free_port()
    env = harness.env
    exporter = subprocess.Popen(
        [sys.executable, "-m", "conveyor", "metrics", "-A", SPEC, "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(lambda: try_scrape(port) is not None, 15, "the exporter to listen")
        samples = scrape(port)
        assert samples[("conveyor_queue_length", (("queue_name", "default"),))] == 3
        state = {
            dict(labels)["state"]: value
            for (name, labels), value in samples.items()
            if name == "conveyor_queue_messages"
        }
        assert state == {"ready": 3, "delayed": 1, "leased": 0, "dead": 0}
        assert samples[("conveyor_active_worker_count", ())] == 0
        harness.worker("-c", "2", "-n", "node@test")
        processes = ("conveyor_worker_processes", (("hostname", "node@test"),))
        # Each child announces itself on its own: wait until both have.
        wait_for(lambda: (try_scrape(port) or {}).get(processes) == 2, 20, "both children")
        samples = scrape(port)
        assert samples[("conveyor_active_worker_count", ())] == 1
        assert samples[("conveyor_worker_up", (("hostname", "node@test"),))] == 1
        ready = ("conveyor_queue_length", (("queue_name", "default"),))
        wait_for(lambda: (try_scrape(port) or {}).get(ready) == 0, 20, "the queue to drain")
    finally:
        exporter.terminate()
        exporter.wait(10)
        assert exporter.stderr is not None
        exporter.stderr.close()


def test_bad_or_busy_metrics_port_is_a_clear_error(harness: Harness) -> None:
    def worker(port: int) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "conveyor", "worker", "-A", SPEC]
        return subprocess.run(
            [*command, "--metrics-port", str(port)],
            cwd=ROOT,
            env=harness.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    result = worker(70000)
    assert result.returncode == 2 and "70000" in result.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = worker(port)
    assert result.returncode == 1
    assert f"cannot serve metrics on 127.0.0.1:{port}: Address already in use" in result.stderr
