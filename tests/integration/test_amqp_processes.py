"""RabbitMQ-only process tests: the broker restarted under running workers, an ETA task across
a restart, foreign messages (Celery's format, raw bytes, no properties) on a Conveyor queue,
the seeds' ``pyamqp://guest@localhost//``, a task that kills its process among prefetched
neighbours.

The worker scenarios of every broker (kill -9 of a child or a whole worker, SIGTERM under load,
poison tasks) run on RabbitMQ through the ``amqp`` parameter of test_worker_processes.py.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import amqp
import pytest

from conveyor import Conveyor, states
from conveyor.testing import TestWorker
from tests.integration import test_worker_processes as processes
from tests.integration.test_prefetch_processes import AHEAD, warm_up
from tests.integration.test_worker_processes import Harness, pids_of, wait_for
from tests.integration.workerapp import runs
from tests.rabbit_server import RabbitServer

pytestmark = pytest.mark.amqp


@pytest.fixture
def backend() -> str:
    return "amqp"


harness_factory = processes.harness_factory
harness = processes.harness


def _raw_publish(server: RabbitServer, exchange: str, routing_key: str, msg: amqp.Message) -> None:
    """Publish as another application would (plain py-amqp, no Conveyor)."""
    with amqp.Connection(f"127.0.0.1:{server.port}", userid="guest", password="guest") as conn:
        channel = conn.channel()
        channel.confirm_select()
        channel.basic_publish_confirm(msg, exchange, routing_key, mandatory=True)


def test_broker_restart_mid_run_loses_nothing_and_workers_reconnect(
    harness: Harness, rabbit_server: RabbitServer
) -> None:
    worker = harness.worker("-c", "2", "--threads", "4")
    path, late = harness.file(), harness.file()
    running = [harness.send("sleep", str(path), 1.0) for _ in range(8)]
    # due after the restart: waits in RabbitMQ's delay queues through it
    eta = time.time() + 6
    delayed = harness.send("record", str(late), countdown=6)
    wait_for(lambda: len(pids_of(path)) >= 2, 20, "tasks running")

    rabbit_server.restart()

    after = [harness.send("add", i, 1) for i in range(5)]
    assert [r.get(timeout=60) for r in after] == [i + 1 for i in range(5)]
    for result in running:
        harness.wait_state(result.id, states.SUCCESS, 60)
    ran_at = delayed.get(timeout=60)
    assert ran_at >= eta - 0.05, "the ETA task ran early"
    assert len(runs(late)) == 1
    assert len(pids_of(path, "end")) >= 8  # tasks cut off by the restart ran again
    assert worker.process.poll() is None


def test_a_task_that_kills_its_process_costs_its_prefetched_neighbours_nothing(
    harness_factory: Callable[..., Harness],
) -> None:
    # One lease takes three no-ops, a task that kills its process, and three more no-ops.
    # RabbitMQ puts a dead connection's unacked messages back at once, charged, before the
    # supervisor could give them back uncharged: so before a task that never ended in this
    # process starts, the child acks what finished (and waits until RabbitMQ applied the
    # acks) and gives back what it prefetched.
    harness = harness_factory(worker_prefetch_short=10.0, broker_lease_timeout=60.0)
    harness.worker("-c", "1")
    warm_up(harness, 20)
    path, before, after = harness.file(), harness.file(), harness.file()
    eta = datetime.now(UTC) + AHEAD  # one lease takes them all, in publishing order
    for _ in range(3):
        harness.send("stamp_count", str(before), eta=eta)
    harness.send("suicide", str(path), eta=eta)
    for _ in range(3):
        harness.send("stamp_count", str(after), eta=eta)
    wait_for(lambda: runs(path), 30, "the poison task ran")
    wait_for(lambda: len(runs(after)) == 3, 30, "the prefetched no-ops ran in a new child")
    # "<pid> <delivery count>": uncharged
    assert [line.split()[-1] for line in runs(after)] == ["1", "1", "1"]
    # a task sent last ran after anything RabbitMQ put back when the child died
    assert harness.send("add", 1, 1).get(timeout=30) == 2
    assert [line.split()[-1] for line in runs(before)] == ["1", "1", "1"]


def test_foreign_messages_are_dead_lettered_with_a_reason(
    harness: Harness, rabbit_server: RabbitServer
) -> None:
    broker = harness.client.broker
    prefix = harness.settings["broker_transport_options"]["key_prefix"]
    harness.worker("-c", "1")
    assert harness.send("add", 1, 1).get(timeout=20) == 2  # the queue exists
    celery_body = json.dumps([[2, 2], {}, {"callbacks": None, "errbacks": None}]).encode()
    celery = amqp.Message(
        celery_body,
        content_type="application/json",
        content_encoding="utf-8",
        application_headers={"lang": "py", "task": "tasks.add", "id": "celery-1"},
        message_id="celery-1",
    )
    _raw_publish(rabbit_server, prefix, "default", celery)
    _raw_publish(rabbit_server, prefix, "default", amqp.Message(b"\xff\xfe raw", message_id="raw"))
    _raw_publish(rabbit_server, prefix, "default", amqp.Message(b"no properties at all"))

    dead = wait_for(lambda: len(broker.dead_letters()) == 3 and broker.dead_letters(), 30)
    reasons = {d.id or "anonymous": d.reason for d in dead}
    assert reasons["celery-1"] == "malformed"
    assert reasons["raw"] == "undecodable"
    assert set(reasons.values()) <= {"malformed", "undecodable"}
    assert all(d.detail for d in dead)
    assert harness.send("add", 2, 3).get(timeout=20) == 5  # the worker goes on


def test_seed_url_pyamqp_guest_at_localhost_reaches_the_local_node(
    rabbit_server: RabbitServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The seeds' ``pyamqp://guest@localhost//`` (password defaults to guest), here with the
    test node's port; no result backend configured: results go to the default ``sqlite://``
    file (beside the module that made the app)."""
    monkeypatch.chdir(tmp_path)
    url = f"pyamqp://guest@localhost:{rabbit_server.port}//"
    app = Conveyor("tasks", broker=url, set_as_default=False)
    app.conf.broker_transport_options = {"key_prefix": f"seed{uuid.uuid4().hex[:8]}"}

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    results = Path(app.result_backend_url.removeprefix("sqlite:///"))
    assert results.name == "conveyor.sqlite3" and results.parent == Path(__file__).parent
    worker = TestWorker(app)
    worker.start()
    try:
        assert add.delay(2, 3).get(timeout=20) == 5
        assert results.exists()
    finally:
        worker.stop(timeout=10)
        app.close()
        for leftover in results.parent.glob("conveyor.sqlite3*"):
            if leftover.is_dir():
                shutil.rmtree(leftover)
            else:
                leftover.unlink()
