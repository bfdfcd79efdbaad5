"""Redis Sentinel: workers and producers on ``redis+sentinel://`` follow a failover by
themselves. Real processes: a primary, a replica and three sentinels started by the test
(``tests/sentinel_servers.py``), and a ``conveyor worker`` process."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor import Conveyor, states
from conveyor.exceptions import BrokerError
from tests.helpers import Call
from tests.integration.test_worker_processes import Harness, wait_for
from tests.integration.workerapp import runs
from tests.sentinel_servers import SERVICE, SentinelDeployment, running_sentinels

pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def sentinels() -> Iterator[SentinelDeployment]:
    with running_sentinels() as deployment:
        yield deployment


@pytest.fixture
def harness_for(tmp_path: Path) -> Iterator[Any]:
    made: list[Harness] = []

    def make(url: str, settings: dict[str, Any] | None = None, **options: Any) -> Harness:
        prefix = f"s{uuid.uuid4().hex[:8]}"
        settings = {
            **(settings or {}),
            "broker_transport_options": {"key_prefix": prefix, **options},
        }
        harness = Harness(url, settings, tmp_path)
        made.append(harness)
        return harness

    yield make
    for harness in made:
        print(harness.output())  # shown when the test failed
        harness.close()


def test_both_url_forms_reach_the_primary(sentinels: SentinelDeployment, harness_for: Any) -> None:
    harness: Harness = harness_for(sentinels.url)
    harness.worker("-c", "1")
    assert harness.send("add", 2, 3).get(timeout=20) == 5
    # Celery's spelling: ;-joined sentinel:// URLs with master_name in the transport options.
    celery_url = ";".join(f"sentinel://127.0.0.1:{s.port}" for s in sentinels.sentinels)
    app = Conveyor(
        "celerystyle",
        broker=celery_url,
        broker_transport_options={
            "master_name": SERVICE,
            "key_prefix": harness.settings["broker_transport_options"]["key_prefix"],
        },
    )
    try:
        assert app.send_task("workerapp.add", (4, 5)).get(timeout=20) == 9
        assert app.results.kv is not None
    finally:
        app.close()


def test_wait_for_replicas_confirms_every_publish(
    sentinels: SentinelDeployment, harness_for: Any
) -> None:
    harness: Harness = harness_for(sentinels.url, wait_for_replicas=1)
    result = harness.send("add", 1, 1)
    assert harness.state(result.id) == states.QUEUED
    # More replicas than exist: the publish is on the primary but not confirmed -> an error
    # (the producer's publish retry then sends it again; the id dedupe keeps it single).
    strict: Harness = harness_for(sentinels.url, wait_for_replicas=2, wait_timeout=0.2)
    with pytest.raises(BrokerError, match="1 of 2 replicas"):
        strict.client.send_task("workerapp.add", (1, 2), retry=False)


def test_worker_and_producer_follow_a_failover(harness_for: Any) -> None:
    with running_sentinels() as sentinels:  # its own: the failover leaves it with one node
        harness: Harness = harness_for(sentinels.url)
        worker = harness.worker("-c", "2")
        path = harness.file()
        before = [harness.send("record", str(path)) for _ in range(60)]
        wait_for(lambda: len(runs(path)) >= 20, 30, "20 tasks ran before the failover")
        old_primary = sentinels.primary_port()
        assert sentinels.kill_primary() != old_primary
        # Published right after the failover: the producer's publish retry rides it out.
        after = [harness.send("record", str(path)) for _ in range(60)]
        everything = before + after
        wait_for(
            lambda: all(harness.state(r.id) == states.SUCCESS for r in everything),
            60,
            "every task published before and after the failover succeeded",
        )
        assert worker.process.poll() is None, "the worker survived the failover"
        # At least once: every task ran; a task whose ack was not replicated may run twice.
        assert len(runs(path)) >= len(everything)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_three_failovers_during_10000_tasks_lose_nothing(harness_for: Any) -> None:
    """The figures of docs/scaling.md: tasks lost and duplicated across 3 failovers, with
    ``wait_for_replicas=1`` so that every publish the producer saw succeed is on a replica.
    Each failover happens while a producer publishes and the worker runs tasks."""
    total, rounds = 9_999, 3
    with running_sentinels() as sentinels:
        settings = {
            "broker_lease_timeout": 5.0,
            # Publishes wait for a replica, and there is none until the killed node is back.
            "task_publish_retry_policy": {"max_retries": 120, "interval_max": 0.5},
        }
        harness: Harness = harness_for(
            sentinels.url, settings, wait_for_replicas=1, wait_timeout=1.0
        )
        worker = harness.worker("-c", "2", "--threads", "4")
        path = harness.file()
        for round_ in range(rounds):
            start = len(runs(path))
            tags = [f"r{round_}-{i}" for i in range(total // rounds)]
            publisher = Call(
                lambda tags=tags: [harness.send("mark_id", str(path), t) for t in tags]
            )
            wait_for(lambda start=start: len(runs(path)) > start + 300, 120, "work under way")
            sentinels.kill_primary()
            sentinels.restart_killed(timeout=60)
            publisher.result(timeout=300)
        wait_for(
            lambda: len({line.split()[1] for line in runs(path)}) >= total,
            300,
            "every task ran",
        )
        ran = [line.split()[1] for line in runs(path)]
        lost = total - len(set(ran))
        duplicated = len(ran) - len(set(ran))
        print(f"sentinel: {total} tasks, {rounds} failovers: lost {lost}, duplicated {duplicated}")
        assert lost == 0
        assert worker.process.poll() is None
