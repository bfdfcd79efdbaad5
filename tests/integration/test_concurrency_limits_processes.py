"""Cluster-wide concurrency limits with real worker processes (SQLite, Redis, PostgreSQL, RabbitMQ):
two nodes never run more than the limit at once, and the slot of a node killed with SIGKILL
is freed with its leases. Tasks live in tests/integration/limitsapp.py; the cluster harness
is the rate-limit process tests'."""

from __future__ import annotations

import os
import signal
from typing import Any

from conveyor import states
from tests.conftest import wait_until
from tests.integration.test_rate_limits_processes import (  # noqa: F401 - fixtures
    backend_fixture,
    cluster_factory_fixture,
    redis_server,
)


def most_at_once(starts: list[float], ends: list[float]) -> int:
    moments = sorted([(t, 1) for t in starts] + [(t, -1) for t in ends])
    running = most = 0
    for _, step in moments:  # an end at the same instant as a start counts first
        running += step
        most = max(most, running)
    return most


def test_two_nodes_run_at_most_the_limit(cluster_factory: Any) -> None:
    cluster = cluster_factory()
    results = [cluster.send("hold", 0.4) for _ in range(8)]
    for _ in range(2):
        cluster.node("-c", "2")  # four processes with a free slot each
    for result in results:
        wait_until(lambda r=result: r.state == states.SUCCESS, 60, "all ran", interval=0.1)
    assert most_at_once(cluster.times("start"), cluster.times("end")) == 2


def test_the_slot_of_a_killed_node_is_freed_with_its_leases(
    cluster_factory: Any, backend: str
) -> None:
    cluster = cluster_factory()
    first = cluster.node("-c", "1", "--threads", "4")
    # acked when it starts (at-most-once): it is not redelivered, only its slot is left
    cluster.send("mutex", 1, 120.0, acks_late=False)
    wait_until(lambda: cluster.times("start-1"), 30, "the long task started", interval=0.1)
    waiting = cluster.send("mutex", 1, 0.1)
    other = cluster.send("mutex", 2, 0.1)  # another key is not held up
    wait_until(lambda: other.state == states.SUCCESS, 30, "the other key ran", interval=0.1)
    assert waiting.state == states.QUEUED  # the mutex of account 1 is held
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(10)
    cluster.node("-c", "1")
    # lease timeout 1 s (+ a slot backoff of at most 2 s, + the new node's start)
    wait_until(lambda: waiting.state == states.SUCCESS, 30, "the waiting task ran", interval=0.1)
    starts = cluster.times("start-1")
    if backend == "amqp" and len(starts) == 3:
        # RabbitMQ puts a waiting task back by a confirmed publish, then an ack: a node
        # killed in between leaves a copy (docs/rabbitmq.md). The copy is the short task,
        # run after the first under the mutex - not the killed long one again.
        wait_until(lambda: len(cluster.times("end-1")) == 2, 30, "the copy ended", interval=0.1)
        assert cluster.times("end-1")[0] <= starts[2]
    else:
        assert len(starts) == 2
