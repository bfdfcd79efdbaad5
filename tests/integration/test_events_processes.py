"""Events from real worker processes (``python -m conveyor worker``) on every broker
(PostgreSQL and RabbitMQ with ``--slow``): each child writes its own batches; the supervisor
writes online/offline; history outlives the workers; ``conveyor events`` prints, filters and
skips malformed entries."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable

import pytest

from conveyor.events import EventFilter
from conveyor.events.model import STREAM
from tests.integration.test_worker_processes import (  # noqa: F401 - fixtures
    ROOT,
    Harness,
    backend,
    harness_factory,
    redis_server,
    wait_for,
)

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


def test_a_fleet_tells_its_story_and_the_story_outlives_it(harness: Harness) -> None:
    worker = harness.worker("-c", "2")
    path = harness.file()
    ok = harness.send("add", 2, 3)
    slow = harness.send("sleep", str(path), 0.2)
    harness.wait_state(ok.id, "SUCCESS", 30)
    harness.wait_state(slow.id, "SUCCESS", 30)
    events = harness.client.events

    def kinds(task_id: str) -> list[str]:
        return [e.type for e in events.read(limit=100_000) if e.task_id == task_id]

    expected = ["task-sent", "task-received", "task-started", "task-succeeded"]
    wait_for(lambda: kinds(ok.id) == expected, 15, "the task's events")
    succeeded = [e for e in events.read(limit=100_000) if e.type == "task-succeeded"]
    assert {e.hostname.rpartition("/")[0] for e in succeeded} == {
        e.hostname for e in events.read(where=EventFilter.of(types=["worker-online"]))
    }
    # every child beats, with its counts
    wait_for(
        lambda: (
            len({e.hostname for e in events.read(where=EventFilter.of(types=["worker-heartbeat"]))})
            == 2
        ),
        15,
        "heartbeats of both children",
    )
    beat = events.read(where=EventFilter.of(types=["worker-heartbeat"]))[-1]
    assert isinstance(beat["running"], int) and isinstance(beat["processed"], int)
    assert isinstance(beat["load"], list)
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    wait_for(
        lambda: events.read(where=EventFilter.of(types=["worker-offline"])), 10, "worker-offline"
    )
    # A new reader (a new client, as after a restart) sees the whole history.
    fresh = harness.client.__class__("again", broker=harness.broker_url, **harness.settings)
    try:
        assert [e.type for e in fresh.events.read(limit=100_000) if e.task_id == ok.id] == expected
    finally:
        fresh.close()


# Slow on both brokers: the second one runs in the slow suite.
@pytest.mark.parametrize("backend", SQLITE_FIRST)
def test_conveyor_events_filters_prints_json_and_skips_bad_entries(harness: Harness) -> None:
    harness.worker("-c", "1")
    first = harness.send("add", 1, 1)
    path = harness.file()
    second = harness.send("record", str(path))
    harness.wait_state(first.id, "SUCCESS", 30)
    harness.wait_state(second.id, "SUCCESS", 30)
    harness.client.broker.streams.append(
        STREAM, [b"{not json", b'{"type": "task-sent"}'], max_length=1000, max_age=3600
    )
    harness.client.events.writer.emit("task-sent", {"uuid": "after-the-bad-ones"})
    harness.client.events.flush()
    wait_for(
        lambda: [e for e in harness.client.events.read(limit=100_000) if e.task_id == second.id
                 and e.type == "task-succeeded"],
        15,
        "the events to be written",
    )  # fmt: skip
    done = _conveyor(
        harness, "events", "--no-follow", "--json", "--name", "workerapp.rec*", "--state", "SUCCESS"
    )
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(e["type"], e["uuid"]) for e in lines] == [("task-succeeded", second.id)]
    everything = _conveyor(harness, "events", "--no-follow", "--type", "task-sent")
    assert everything.returncode == 0, everything.stderr
    assert "after-the-bad-ones" in everything.stdout  # read past the malformed entries
    assert everything.stderr.count("skipping a malformed event") == 2
    assert f"workerapp.add[{first.id}]" in everything.stdout
    bad = _conveyor(harness, "events", "--no-follow", "--state", "EXPLODED")
    assert bad.returncode == 2 and "unknown task state" in bad.stderr


def test_conveyor_events_follows_live_and_worker_dash_e_turns_events_on(
    harness_factory: Callable[..., Harness],  # noqa: F811
) -> None:
    harness = harness_factory()  # events off in the settings: -E turns them on
    command = [sys.executable, "-m", "conveyor", "-A", "tests.integration.workerapp", "events",
               "--json", "--limit", "1", "--type", "task-succeeded", "--since", "5m"]  # fmt: skip
    tail = subprocess.Popen(
        command, cwd=ROOT, env=harness.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        harness.worker("-c", "1", "-E")
        result = harness.send("add", 20, 22)
        harness.wait_state(result.id, "SUCCESS", 30)
        out, err = tail.communicate(timeout=30)
    finally:
        if tail.poll() is None:
            tail.kill()
            tail.wait(10)
    assert tail.returncode == 0, err
    assert json.loads(out)["uuid"] == result.id


@pytest.mark.parametrize("backend", SQLITE_FIRST)
def test_the_supervisor_tells_of_tasks_it_kills(harness: Harness) -> None:
    """The supervisor (one thread: it forks) writes its events directly, not in batches."""
    harness.worker("-c", "1")
    path = harness.file()
    result = harness.send("hard_limited", str(path), 60)
    harness.wait_state(result.id, "FAILURE", 30)
    events = harness.client.events

    def dead() -> list[object]:
        return [e for e in events.read(limit=100_000) if e.task_id == result.id
                and e.type == "task-dead-lettered"]  # fmt: skip

    found = wait_for(dead, 15, "the dead-letter event")
    event = found[0]
    assert event["reason"] == "time_limit"  # type: ignore[index]
    assert "/" not in event.hostname  # type: ignore[attr-defined]  # the supervisor's
