"""Inspect and control of real worker processes (``python -m conveyor worker``) on every broker
(PostgreSQL and RabbitMQ with ``--slow``): replies per process, node commands by the
supervisor, durable queue pause (also for workers started later), pool size and autoscale, and
bad requests refused with nothing sent."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import pytest

from conveyor.control import ControlError
from conveyor.control.protocol import STREAM
from tests.integration.test_worker_processes import (  # noqa: F401 - fixtures
    ROOT,
    Harness,
    WorkerProcess,
    backend,
    harness_factory,
    redis_server,
    wait_for,
)


def _started(harness: Harness, worker: WorkerProcess, processes: int) -> list[str]:
    """The worker's process names once all of them announced themselves."""
    pid = str(worker.pid)

    def names() -> list[str]:
        return sorted(h for h in harness.client.control.workers() if h.split("/")[0].endswith(pid))

    return wait_for(lambda: len(found := names()) == processes and found, 20, "workers up")


#: The default suite runs a long test on SQLite only; the other brokers join with ``--slow``.
SQLITE_FIRST = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("redis", id="redis", marks=(pytest.mark.redis, pytest.mark.slow)),
    pytest.param("postgres", id="postgres", marks=(pytest.mark.postgres, pytest.mark.slow)),
    pytest.param("amqp", id="amqp", marks=(pytest.mark.amqp, pytest.mark.slow)),
]


@pytest.fixture
def harness(harness_factory: Callable[..., Harness]) -> Harness:  # noqa: F811
    return harness_factory(worker_send_task_events=True)


def _conveyor(harness: Harness, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "conveyor", "-A", "tests.integration.workerapp", *args]
    return subprocess.run(
        command, cwd=ROOT, env=harness.env, capture_output=True, text=True, timeout=60
    )


def test_inspect_replies_per_process_with_celery_shapes(harness: Harness) -> None:
    worker = harness.worker("-c", "2")
    names = _started(harness, worker, 2)
    node = names[0].split("/")[0]
    control = harness.client.control
    inspect = control.inspect(timeout=10)
    assert inspect.ping() == {name: {"ok": "pong"} for name in names}
    path = harness.file()
    slow = harness.send("sleep", str(path), 30)
    wait_for(lambda: path.exists(), 20, "the slow task to start")
    active = inspect.active()
    assert active is not None
    running = [task for tasks in active.values() for task in tasks]  # type: ignore[attr-defined]
    assert [(t["id"], t["name"]) for t in running] == [(slow.id, "workerapp.sleep")]
    found = inspect.query_task(slow.id)
    assert found is not None and [v for v in found.values() if v] == [
        {slow.id: ["active", running[0]]}
    ]
    stats = control.inspect(destination=[names[0]], timeout=10).stats()
    assert stats is not None and list(stats) == [names[0]]
    assert stats[names[0]]["pool"] == {"max-concurrency": 1, "threads": 1}  # type: ignore[index]
    assert stats[names[0]]["prefetch"].startswith("adaptive: up to 16 per free slot")  # type: ignore[index]
    registered = inspect.registered()
    assert registered is not None and "workerapp.add" in registered[names[1]]  # type: ignore[operator]
    queues = control.inspect(destination=node, timeout=10).active_queues()
    assert queues == {name: [{"name": "default", "paused": False}] for name in names}
    conf = inspect.conf()
    assert conf is not None and conf[names[0]]["broker_lease_timeout"] == 1.0  # type: ignore[index]
    assert inspect.scheduled() == {name: [] for name in names}
    replies = control.revoke(slow.id, terminate=True, reply=True, timeout=10)
    assert replies is not None and len(replies) == 2
    harness.wait_state(slow.id, "REVOKED", 20)
    assert all(slow.id in v for v in (inspect.revoked() or {}).values())  # type: ignore[operator]


def test_bad_requests_are_refused_and_no_worker_is_affected(harness: Harness) -> None:
    worker = harness.worker("-c", "1")
    names = _started(harness, worker, 1)
    control = harness.client.control
    streams = harness.client.broker.streams
    before = streams.last(STREAM)
    with pytest.raises(ControlError, match="no live worker named nobody@nowhere"):
        control.inspect(destination="nobody@nowhere").ping()
    with pytest.raises(ControlError, match="unknown control command 'explode'"):
        control.broadcast("explode", reply=True)
    with pytest.raises(ControlError, match="'n' must be an integer"):
        control.pool_grow(-3)  # type: ignore[arg-type]
    with pytest.raises(ControlError, match="invalid rate_limit"):
        control.rate_limit("workerapp.add", "fast")
    with pytest.raises(ControlError, match="unknown task"):
        control.rate_limit("workerapp.nope", "1/s")
    with pytest.raises(ControlError, match="unexpected argument"):
        control.broadcast("ping", {"loud": True})
    assert streams.last(STREAM) == before  # nothing was sent
    # A malformed request and bad arguments sent around the checks: skipped or refused.
    streams.append(STREAM, [b"{garbage"], max_length=100, max_age=60)
    raw = b'{"id": "x1", "command": "rate_limit", "arguments": {"task_name": 3}, "reply": true}'
    streams.append(STREAM, [raw], max_length=100, max_age=60)
    reply = control._gather("x1", 10, 1, set(names))
    assert "must be a non-empty string" in str(reply[0][names[0]]["error"])  # type: ignore[index]
    assert control.ping(timeout=10) == [{names[0]: {"ok": "pong"}}]
    result = harness.send("add", 1, 2)
    assert result.get(timeout=20) == 3
    done = _conveyor(harness, "control", "rate_limit", "workerapp.add", "lots")
    assert done.returncode == 2 and "invalid rate_limit" in done.stderr
    done = _conveyor(harness, "inspect", "ping", "-d", "ghost")
    assert done.returncode == 2 and "no live worker named ghost" in done.stderr
    done = _conveyor(harness, "inspect", "ping", "-t", "10")
    assert done.returncode == 0 and f"-> {names[0]}: OK" in done.stdout


def test_queue_pause_is_durable_and_reaches_workers_started_later(harness: Harness) -> None:
    first = harness.worker("-c", "1", "-Q", "default,other")
    _started(harness, first, 1)
    control = harness.client.control
    control.pause_queue("default")
    assert control.paused_queues() == ["default"]
    wait_for(
        lambda: all(
            q == [{"name": "default", "paused": True}, {"name": "other", "paused": False}]
            for q in (control.inspect(timeout=5).active_queues() or {"x": None}).values()
        ),
        20,
        "the pause to reach the worker",
    )
    held = harness.send("add", 1, 1)
    other = harness.send("add", 2, 2, queue="other")
    assert other.get(timeout=20) == 4
    first.signal(15)
    assert first.wait(30) == 0
    later = harness.worker("-c", "1", "-Q", "default,other")
    _started(harness, later, 1)
    again = harness.send("add", 3, 3, queue="other")
    assert again.get(timeout=20) == 6  # the later worker consumes, but not from default
    assert harness.state(held.id) == "QUEUED"
    assert harness.client.broker.stats(["default"])["default"].ready == 1
    done = _conveyor(harness, "queue", "resume", "default")
    assert done.returncode == 0, done.stderr
    assert held.get(timeout=20) == 2
    assert control.paused_queues() == []


def test_pool_grow_shrink_and_shutdown(harness: Harness) -> None:
    worker = harness.worker("-c", "1")
    node = _started(harness, worker, 1)[0].split("/")[0]
    control = harness.client.control
    replies = control.pool_grow(2, destination=node, reply=True, timeout=10)
    assert replies == [{node: {"ok": "pool will grow to 3"}}]
    worker.wait_children(3)
    _started(harness, worker, 3)
    assert control.pool_shrink(2, reply=True, timeout=10) == [
        {node: {"ok": "pool will shrink to 1"}}
    ]
    worker.wait_children(1)
    error = control.pool_shrink(1, reply=True, timeout=10)
    assert error is not None and "one child must remain" in str(error[0][node])
    assert harness.send("add", 5, 5).get(timeout=20) == 10
    done = _conveyor(harness, "control", "shutdown", "-t", "10")
    assert done.returncode == 0 and f"-> {node}: OK" in done.stdout
    assert worker.wait(30) == 0


# Slow on both brokers: the second one runs in the slow suite.
@pytest.mark.parametrize("backend", SQLITE_FIRST)
def test_autoscale_grows_with_the_backlog_and_shrinks_when_idle(
    harness_factory: Callable[..., Harness],  # noqa: F811
) -> None:
    harness = harness_factory(worker_autoscale_keepalive=1.0, worker_send_task_events=True)
    worker = harness.worker("--autoscale", "3,1")
    _started(harness, worker, 1)
    path = harness.file()
    slow = [harness.send("sleep", str(path), 3) for _ in range(3)]
    worker.wait_children(3, timeout=20)
    for result in slow:
        harness.wait_state(result.id, "SUCCESS", 30)
    worker.wait_children(1, timeout=30)
    bad = subprocess.run(
        [sys.executable, "-m", "conveyor", "-A", "tests.integration.workerapp", "worker",
         "--autoscale", "2,5"],
        cwd=ROOT, env=harness.env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 2 and "MIN <= MAX" in bad.stderr
