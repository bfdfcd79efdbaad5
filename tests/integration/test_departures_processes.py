"""Messages that leave without a worker settling them, with real ``conveyor worker``
processes on every broker: a task whose worker is SIGKILLed on each of its
``task_max_deliveries`` deliveries is dead-lettered by the broker's sweep (``worker_lost``;
on RabbitMQ by the queue's delivery limit), and ``conveyor purge`` deletes queued ones. Either
way its unique key is freed, its concurrency slot given back and its batch told - each
callback once, also after the dead letter is replayed (docs/flow-control.md)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conveyor import batch, states
from conveyor.canvas.batch import BatchResult
from tests.integration import test_worker_processes as processes
from tests.integration.test_worker_processes import Harness, on_every_broker, wait_for
from tests.integration.workerapp import runs

# The brokers, harness and workers of the process tests.
backend = processes.backend
redis_server = processes.redis_server
harness_factory = processes.harness_factory


def callbacks(harness: Harness, path: Path) -> dict[str, Any]:
    sig = harness.client.signature
    return {
        f"on_{kind}": sig("workerapp.batch_callback", (str(path), kind))
        for kind in ("success", "complete", "death")
    }


def fired(path: Path) -> list[list[Any]]:
    """The callbacks that ran: ``[kind, total, failed, dead]`` each."""
    return [json.loads(line.split(" ", 1)[1]) for line in runs(path)]


def kinds(path: Path) -> list[str]:
    return sorted(str(call[0]) for call in fired(path))


@on_every_broker
def test_a_task_whose_workers_died_frees_its_key_and_slot_and_ends_its_batch_once(
    harness_factory: Callable[..., Harness],
) -> None:
    harness = harness_factory(task_max_deliveries=2)
    client = harness.client
    path, flag, calls = str(harness.file()), harness.tmp_path / "survive", harness.file()
    # A unique task with a concurrency limit, and a batch member: both die each time.
    unique = harness.send("die_limited", path, str(flag), unique_for=600)
    assert harness.send("die_limited", path, str(flag), unique_for=600).duplicate_of == unique.id
    members = [
        client.signature("workerapp.die_until", (path, str(flag), "member")),
        client.signature("workerapp.add", (1, 2)),
    ]
    group = batch(members, app=client, **callbacks(harness, calls)).apply_async()
    member = group.results[0]
    # One message per slot: a neighbour prefetched beside a task that kills its process would
    # be charged a delivery without running (docs/workers.md, bounded redelivery).
    harness.worker("-c", "2", "--prefetch", "1")

    lost = {unique.id, member.id}
    for task_id in lost:  # recorded by the bookkeeping, after the key and slot were freed
        harness.wait_state(task_id, states.FAILURE, 90)
    letters = [d for d in client.broker.dead_letters() if d.id in lost]
    assert sorted(d.reason for d in letters) == ["worker_lost"] * 2
    assert len(runs(path)) == 4, "each ran task_max_deliveries times"
    assert "WorkerLostError" in repr(client.AsyncResult(unique.id).result)
    assert client.broker.limits is not None
    assert client.broker.limits.holders("task:workerapp.die_limited") == [], "slot held"

    flag.touch()  # from now on the task survives: a new one, and the member's replay
    again = harness.send("die_limited", path, str(flag), unique_for=600)
    assert again.duplicate_of is None and again.id != unique.id, "the key is free"
    wait_for(lambda: kinds(calls) == ["complete", "death"], 30, "on_death and on_complete")
    assert sorted(fired(calls)) == [["complete", 2, 1, 1], ["death", 2, 0, 1]]

    assert again.get(timeout=30) == "limited"
    assert client.broker.replay_dead([member.id]) == 1  # the batch counted it already
    harness.wait_state(member.id, states.SUCCESS, 30)
    progress = BatchResult(group.id, client).progress()
    assert (progress.total, progress.done, progress.failed, progress.dead) == (2, 2, 1, 1)
    assert kinds(calls) == ["complete", "death"], "a callback fired twice"


@on_every_broker
def test_purge_frees_the_keys_of_what_it_removed_and_ends_their_batches(
    harness_factory: Callable[..., Harness],
) -> None:
    harness = harness_factory()
    client, calls = harness.client, harness.file()
    first = harness.send("add", 1, 2, unique_for=600)
    members = [client.signature("workerapp.add", (3, 4))]
    batch(members, app=client, **callbacks(harness, calls)).apply_async()
    assert client.broker.purge(["default"]) == 2
    assert harness.send("add", 1, 2, unique_for=600).duplicate_of == first.id

    harness.worker("-c", "1")  # its first sweep does the bookkeeping of the purged ones
    wait_for(lambda: kinds(calls) == ["complete"], 30, "on_complete of the purged batch")
    assert fired(calls) == [["complete", 1, 1, 0]]
    again = wait_for(
        lambda: (r := harness.send("add", 1, 2, unique_for=600)).duplicate_of is None and r,
        30,
        "the key of the purged task is free",
    )
    assert again.get(timeout=30) == 3
