"""Bad messages against real ``conveyor worker`` processes (issue 13): a body nested thousands
of levels deep, a malformed chord field or a callback with a numeric task name is dead-lettered
as ``malformed`` at once, by every pool, and the worker goes on; ``conveyor dlq list`` shows
such a body without crashing."""

from __future__ import annotations

import json
import signal

import pytest

from conveyor.brokers.base import Message
from tests.integration import test_worker_processes as processes
from tests.integration.test_cli import conveyor
from tests.integration.test_worker_processes import Harness, wait_for
from tests.integration.workerapp import runs

# The brokers, harness and workers of the process tests.
backend = processes.backend
redis_server = processes.redis_server
harness_factory = processes.harness_factory
harness = processes.harness

DEEP = b'{"id":"deep","task":"workerapp.add","args":[' + b"[" * 3000 + b"]" * 3000 + b"]}"
BAD_CHORD = json.dumps({"id": "chord", "task": "workerapp.add", "args": [1, 2], "chord": {"x": 1}})
BAD_CALLBACK = json.dumps(
    {"id": "callback", "task": "workerapp.add", "args": [1, 2], "callbacks": [{"task": 5}]}
)
BAD_BODIES = {"deep": DEEP, "chord": BAD_CHORD.encode(), "callback": BAD_CALLBACK.encode()}


@pytest.mark.parametrize(
    "pool",
    [
        pytest.param(["-c", "1"], id="prefork"),
        pytest.param(["-c", "1", "--threads", "2"], id="threads"),
        pytest.param(["--pool", "solo"], id="solo"),
    ],
)
def test_bad_messages_are_dead_lettered_malformed_and_the_worker_goes_on(
    harness: Harness, pool: list[str]
) -> None:
    broker = harness.client.broker
    broker.publish([Message(key, "default", data) for key, data in BAD_BODIES.items()])
    worker = harness.worker(*pool)
    dead = wait_for(lambda: len(broker.dead_letters()) == 3 and broker.dead_letters(), 30)
    expected = dict.fromkeys(BAD_BODIES, ("malformed", 1))
    assert {d.id: (d.reason, d.delivery_count) for d in dead} == expected
    assert harness.send("add", 2, 3).get(timeout=20) == 5  # the same process goes on
    assert worker.process.poll() is None
    if pool[0] == "-c":
        assert len(worker.children()) == 1  # never restarted

    listed = conveyor(harness, "dlq", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    bodies = {d["id"]: d["body"] for d in json.loads(listed.stdout)}
    assert bodies["deep"].startswith("<malformed: b'{")
    table = conveyor(harness, "dlq", "list")
    assert table.returncode == 0, table.stderr
    assert "deep" in table.stdout

    worker.signal(signal.SIGTERM)
    assert worker.wait(20) == 0


FLOOD_BODIES = [
    (b"\x00\xff random bytes", "undecodable"),
    (b'{"id": "t", "task": "workerapp.add", "ar', "undecodable"),
    (b"[1, 2]", "malformed"),
    (b'{"id": "w", "task": "workerapp.add", "retries": "3"}', "malformed"),
    (b'{"id": "u", "task": "workerapp.nope"}', "unknown_task"),
]


def test_a_flood_of_malformed_messages_is_summed_up_not_logged_line_by_line(
    harness: Harness,
) -> None:
    broker = harness.client.broker
    path = harness.file("good")
    count = 300
    bad = [
        Message(f"bad-{i}", "default", FLOOD_BODIES[i % len(FLOOD_BODIES)][0]) for i in range(count)
    ]
    for i, message in enumerate(bad):  # interleaved: good, bad, good, ...
        harness.send("mark_id", str(path), f"g{i}")
        broker.publish([message])
    worker = harness.worker("-c", "2")
    wait_for(lambda: len(runs(path)) == count, 60, "every good task ran")
    letters = wait_for(
        lambda: (found := broker.dead_letters(1000)) and len(found) == count and found,
        30,
        "every bad message dead-lettered",
    )
    assert sorted(line.split()[1] for line in runs(path)) == sorted(f"g{i}" for i in range(count))
    expected = {m.id: FLOOD_BODIES[i % len(FLOOD_BODIES)][1] for i, m in enumerate(bad)}
    assert {d.id: d.reason for d in letters} == expected
    assert all(d.detail and d.delivery_count == 1 for d in letters)
    worker.signal(signal.SIGTERM)
    assert worker.wait(20) == 0

    logged = [line for line in worker.output().splitlines() if "dead-lettered" in line]
    firsts = [line for line in logged if "dead-lettered message" in line]
    summaries = [
        int(line.split("dead-lettered ")[1].split()[0])
        for line in logged
        if " more message(s) " in line
    ]
    # Each child logs the first of its burst in full, then sums up the rest (here at its stop).
    assert 1 <= len(firsts) <= 2, logged
    assert len(logged) <= 6, logged
    assert len(firsts) + sum(summaries) == count, logged
