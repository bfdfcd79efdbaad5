"""The dashboard over a real worker on every broker (PostgreSQL and RabbitMQ with ``--slow``):
its live worker processes, a finished task, and a dead letter replayed from the page. The
pages and their security in detail: tests/unit/test_dashboard.py (SQLite)."""

from __future__ import annotations

import re

from starlette.testclient import TestClient

from conveyor.dashboard import create_dashboard
from tests.integration.test_worker_processes import (  # noqa: F401 - fixtures
    Harness,
    backend,
    harness,
    harness_factory,
    redis_server,
    wait_for,
)


def test_the_dashboard_shows_the_fleet_and_replays_a_dead_letter(harness: Harness) -> None:  # noqa: F811
    worker = harness.worker("-c", "2")
    done = harness.send("add", 20, 22)
    assert done.get(timeout=30) == 42
    unknown = harness.client.send_task("workerapp.no_such_task", (1,))
    client = TestClient(create_dashboard(harness.client))  # type: ignore[arg-type]

    def figure(name: str) -> int:
        found = re.search(rf'data-figure="{name}">(\d+)<', client.get("/").text)
        assert found, f"the overview shows {name}"
        return int(found.group(1))

    wait_for(lambda: figure("workers") == 2 and figure("dead") == 1, 30, "workers and a DLQ")
    workers = client.get("/workers").text
    assert f"{worker.pid}" in workers and 'data-queue="default"' in client.get("/queues").text
    task = client.get(f"/tasks/{done.id}").text
    assert "SUCCESS" in task and "workerapp.add" in task
    dead = client.get("/dead").text
    assert f'data-dead="{unknown.id}"' in dead and "unknown_task" in dead
    # Paused (durable, every worker obeys) so the replayed message waits where we can see it.
    harness.client.control.pause_queue("default")
    inspect = harness.client.control.inspect(timeout=5)

    def paused_everywhere() -> bool:
        replies = inspect.active_queues() or {}
        flags = [q["paused"] for queues in replies.values() for q in queues]  # type: ignore[attr-defined, index]
        return len(replies) == 2 and all(flags)

    wait_for(paused_everywhere, 30, "both processes to pause the queue")
    token = re.search(r'name="token" value="([^"]+)"', dead)
    assert token is not None
    form = {"token": token.group(1), "id": [unknown.id]}
    answer = client.post("/actions/replay-dead", data=form, follow_redirects=False)
    assert answer.status_code == 303
    # A lease already under way when the pause came may hold it a moment: the worker gives
    # it back uncharged (worker/consumer.py), so it ends up waiting in the paused queue.
    wait_for(lambda: figure("dead") == 0 and figure("ready") == 1, 30, "waiting while paused")
    # Its queue's counts per priority: RabbitMQ cannot split ready messages, and says so.
    queues = client.get("/queues").text.partition('data-queue="default"')[2]
    if harness.broker_url.startswith("amqp"):
        assert "not split by priority here: ready" in queues
    else:
        assert '<tr data-priority="5">' in queues and "data-unsplit" not in queues
    assert "replay-dead" in client.get("/audit").text
    harness.client.control.resume_queue("default")
    # Back in its queue, a worker dead-letters it again (there is still no such task).
    wait_for(lambda: figure("dead") == 1 and figure("ready") == 0, 30, "dead again")
