"""Adaptive prefetch (the default) in real worker processes on SQLite and Redis: a short task
never waits behind a prefetched long one (on processes or task threads), the prefetch adapts
up and down with the queue's runtimes, a worker with task threads prefetches too,
``--prefetch N`` stays fixed, a stop gives prefetched messages back uncharged (and acks the
tasks that ran before), and a prefetched message revoked while it waited never runs.

Leases are observed from the broker's counts while a ``block`` task holds the only slot
(it runs until the test creates a file), never by timing.
"""

from __future__ import annotations

import signal
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from conveyor import states
from tests.integration import test_worker_processes as processes
from tests.integration.test_worker_processes import Harness, WorkerProcess, wait_for
from tests.integration.workerapp import runs


# The harness and workers of the process tests, on SQLite and Redis (the brokers whose
# counts show leased messages at once; the AMQP broker has its own consume path).
@pytest.fixture(params=processes.BACKENDS[:2])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


redis_server = processes.redis_server
harness_factory = processes.harness_factory
harness = processes.harness


#: How far ahead messages meant for one lease are due: all are published by then, even on a
#: loaded machine.
AHEAD = timedelta(seconds=2)


def counts(harness: Harness) -> tuple[int, int]:
    stats = harness.client.broker.stats(["default"])["default"]
    return stats.ready, stats.leased


def no_ops(harness: Harness, path: Path, count: int, **options: Any) -> list[Any]:
    return [harness.send("stamp", str(path), **options) for _ in range(count)]


def warm_up(harness: Harness, count: int = 60) -> None:
    """Run ``count`` no-ops, so the worker's estimate says the queue's tasks are short."""
    path = harness.file()
    results = no_ops(harness, path, count)
    wait_for(lambda: len(runs(path)) == count, 30, f"{count} warm-up no-ops")
    for result in results:
        result.get(timeout=10)


def blocked_lease(harness: Harness, tmp_path: Path, followers: int) -> tuple[Path, Any, Path]:
    """Send a ``block`` task and ``followers`` no-ops, due at the same moment so that one
    lease can take them all (the block first: priority 9); wait until the block runs."""
    go = tmp_path / f"go-{uuid.uuid4().hex[:8]}"
    path, stamps = harness.file(), harness.file()
    eta = datetime.now(UTC) + AHEAD
    blocker = harness.send("block", str(path), str(go), 60.0, eta=eta, priority=9)
    no_ops(harness, stamps, followers, eta=eta, priority=0)
    wait_for(lambda: runs(path), 30, "the blocking task started")
    return go, blocker, stamps


@pytest.mark.parametrize(
    "slots", [("-c", "2"), ("-c", "1", "--threads", "2")], ids=["processes", "threads"]
)
def test_no_op_never_waits_behind_a_prefetched_long_task(
    harness: Harness, slots: tuple[str, ...]
) -> None:
    # 2 slots (2 processes, or 2 threads of one), default settings. Each round: one long
    # task (1 s, and until the round's no-ops all ran) followed by no-ops. A no-op
    # prefetched with the long task and kept behind it would only run after it: the long
    # task would then see its count only at its timeout (30 s) and return False.
    harness.worker(*slots)
    warm_up(harness, 100)
    long_path, stamps = harness.file(), harness.file()
    per_round, sent = 40, 0
    for _ in range(3):
        sent += per_round
        eta = datetime.now(UTC) + AHEAD  # one lease can take them all
        long = harness.send(
            "until_runs", str(long_path), str(stamps), sent, 1.0, 30.0, eta=eta, priority=9
        )
        no_ops(harness, stamps, per_round, eta=eta, priority=0)
        assert long.get(timeout=60) is True, harness.output()
    ends = [float(line.split()[2]) for line in runs(long_path)]
    starts = [float(line.split()[1]) for line in runs(stamps)]
    for round_, end in enumerate(ends):  # every no-op of a round started before its long task ended
        assert max(starts[round_ * per_round : (round_ + 1) * per_round]) < end


def test_prefetch_adapts_up_and_down_with_the_runtimes(
    harness_factory: Callable[..., Harness], tmp_path: Path
) -> None:
    # "Short" below 0.3 s, so the long tasks need only be 1 s and prefetched messages wait
    # 3 s before they are reclaimed: long enough to see them leased.
    harness = harness_factory(worker_prefetch_short=0.3)
    harness.worker("-c", "1")
    warm_up(harness, 20)
    go, blocker, stamps = blocked_lease(harness, tmp_path, 3)
    # short tasks: the block and 3 more per free slot (worker_prefetch_max=4)
    wait_for(lambda: counts(harness) == (0, 4), 10, "4 leased")
    go.touch()
    assert blocker.get(timeout=30) is True
    wait_for(lambda: len(runs(stamps)) == 3, 30, "the prefetched no-ops ran")
    # long tasks: the estimate rises above 0.3 s; one per free slot
    path = harness.file()
    for result in [harness.send("sleep", str(path), 1.0) for _ in range(2)]:
        result.get(timeout=30)
    go, blocker, stamps = blocked_lease(harness, tmp_path, 3)
    assert counts(harness) == (3, 1)  # leased before the block started: final until it ends
    go.touch()
    assert blocker.get(timeout=30) is True
    wait_for(lambda: len(runs(stamps)) == 3, 30, "the no-ops ran")
    # short tasks again: back up
    warm_up(harness, 20)
    go, blocker, _ = blocked_lease(harness, tmp_path, 3)
    wait_for(lambda: counts(harness) == (0, 4), 10, "4 leased again")
    go.touch()
    assert blocker.get(timeout=30) is True


def test_a_worker_with_task_threads_prefetches_short_tasks_too(
    harness_factory: Callable[..., Harness], tmp_path: Path
) -> None:
    # 2 threads, both free: one lease takes 2 blocks and 6 no-ops (up to 16 per free slot
    # once the tasks are known to be short). The no-ops wait prefetched while the blocks
    # hold both threads, then run from there without a lease of their own, uncharged.
    harness = harness_factory(worker_prefetch_short=10.0)  # no reclaim within the test
    harness.worker("-c", "1", "--threads", "2")
    warm_up(harness, 20)
    go = tmp_path / "go"
    blocks, stamps = harness.file(), harness.file()
    eta = datetime.now(UTC) + AHEAD
    blockers = [harness.send("block", str(blocks), str(go), 60.0, eta=eta, priority=9)]
    blockers.append(harness.send("block", str(blocks), str(go), 60.0, eta=eta, priority=9))
    no_ops(harness, stamps, 6, eta=eta, priority=0)
    wait_for(lambda: len(runs(blocks)) == 2, 30, "both blocks started")
    assert counts(harness) == (0, 8)  # one per free slot would have leased 2: (6, 2)
    assert runs(stamps) == []
    go.touch()
    assert [b.get(timeout=30) for b in blockers] == [True, True]
    wait_for(lambda: len(runs(stamps)) == 6, 30, "the prefetched no-ops ran")
    wait_for(lambda: counts(harness) == (0, 0), 10, "every message acked")


def test_prefetched_messages_behind_a_long_task_are_given_back(
    harness: Harness, tmp_path: Path
) -> None:
    # One slot: the no-ops prefetched with the blocking task go back to the queue (50 ms
    # at the defaults) rather than wait in the worker.
    worker = harness.worker("-c", "1")
    warm_up(harness, 60)
    go, blocker, stamps = blocked_lease(harness, tmp_path, 3)
    wait_for(lambda: counts(harness) == (3, 1), 10, "the no-ops back in the queue")
    go.touch()
    assert blocker.get(timeout=30) is True
    wait_for(lambda: len(runs(stamps)) == 3, 30, "the no-ops ran")
    assert "gave back" not in worker.output()  # debug only: no noise at info


def test_fixed_prefetch_still_leases_n_per_slot_from_the_start(
    harness: Harness, tmp_path: Path
) -> None:
    # --prefetch 3: three per free slot at once, though the worker knows no runtimes yet,
    # and kept (not given back) while the long task runs.
    harness.worker("-c", "1", "--prefetch", "3")
    go, blocker, stamps = blocked_lease(harness, tmp_path, 3)
    wait_for(lambda: counts(harness) == (1, 3), 10, "3 leased")
    go.touch()
    assert blocker.get(timeout=30) is True
    wait_for(lambda: len(runs(stamps)) == 3, 30, "the no-ops ran")


def test_stop_gives_prefetched_messages_back_uncharged(
    harness_factory: Callable[..., Harness], tmp_path: Path
) -> None:
    # Reclaim after 100 s: the prefetched no-ops stay in the worker until the stop.
    harness = harness_factory(worker_prefetch_short=10.0)
    worker: WorkerProcess = harness.worker("-c", "1")
    warm_up(harness, 20)
    go, blocker, stamps = blocked_lease(harness, tmp_path, 3)
    wait_for(lambda: counts(harness) == (0, 4), 10, "4 leased")
    worker.signal(signal.SIGTERM)  # warm: the block finishes, the prefetched go back now
    wait_for(lambda: counts(harness) == (3, 1), 10, "the prefetched no-ops back in the queue")
    go.touch()
    assert worker.wait(30) == 0
    assert blocker.state == states.SUCCESS
    assert runs(stamps) == []  # they never ran here
    leased = harness.client.broker.lease(["default"], 10, 1.0)
    assert sorted(d.delivery_count for d in leased) == [1, 1, 1]  # no delivery charged
    harness.client.broker.release(leased)


def test_warm_stop_during_a_prefetched_task_settles_the_tasks_run_before_it(
    harness_factory: Callable[..., Harness], tmp_path: Path
) -> None:
    # One lease of 4: no-op, no-op, block, no-op (priorities 9, 8, 7, 0). The no-ops before
    # the block run from the prefetched messages and wait for the next lease to be acked;
    # a warm stop while the block runs must ack them (not leave them to a cold stop's release,
    # which would run them twice) and give the last no-op back.
    harness = harness_factory(worker_prefetch_short=10.0)  # no reclaim within the test
    worker = harness.worker("-c", "1", "--shutdown-timeout", "60")
    warm_up(harness, 20)
    go, path, stamps = tmp_path / "go", harness.file(), harness.file()
    # A block that ends at once: the worker knows the task ends (one it never saw end
    # would have the acks sent before it starts; see the test below).
    done = tmp_path / "done"
    done.touch()
    assert harness.send("block", str(harness.file()), str(done), 1.0).get(timeout=30) is True
    eta = datetime.now(UTC) + AHEAD
    first = [harness.send("stamp", str(stamps), eta=eta, priority=p) for p in (9, 8)]
    blocker = harness.send("block", str(path), str(go), 60.0, eta=eta, priority=7)
    harness.send("stamp", str(stamps), eta=eta, priority=0)
    wait_for(lambda: runs(path), 30, "the blocking task started")
    assert len(runs(stamps)) == 2
    worker.signal(signal.SIGTERM)
    wait_for(lambda: counts(harness) == (1, 3), 10, "the last no-op back in the queue")
    go.touch()
    assert worker.wait(30) == 0
    assert [r.state for r in first] == [states.SUCCESS] * 2
    assert blocker.state == states.SUCCESS
    assert counts(harness) == (1, 0)  # only the given-back no-op: the others were acked
    assert len(runs(stamps)) == 2


def test_a_prefetched_message_revoked_while_it_waited_never_runs(
    harness_factory: Callable[..., Harness], tmp_path: Path
) -> None:
    harness = harness_factory(worker_prefetch_short=10.0)  # no reclaim within the test
    harness.worker("-c", "1")
    warm_up(harness, 20)
    go, path, stamps = tmp_path / "go", harness.file(), harness.file()
    eta = datetime.now(UTC) + AHEAD
    blocker = harness.send("block", str(path), str(go), 60.0, eta=eta, priority=9)
    waiting = harness.send("stamp", str(stamps), eta=eta, priority=0)
    wait_for(lambda: runs(path), 30, "the blocking task started")
    assert counts(harness) == (0, 2)  # the no-op is prefetched, its lease-time check passed
    waiting.revoke()
    go.touch()
    assert blocker.get(timeout=30) is True
    harness.wait_state(waiting.id, states.REVOKED, 30)
    assert runs(stamps) == []


def test_prefetched_messages_revoked_while_they_waited_are_found_in_one_check(
    harness_factory: Callable[..., Harness], tmp_path: Path
) -> None:
    # The first message taken after the block re-checks the revocations of every message
    # still prefetched; those taken right after it (within 10 ms) rely on that check.
    harness = harness_factory(worker_prefetch_short=10.0)  # no reclaim within the test
    harness.worker("-c", "1")
    warm_up(harness, 20)
    go, path = tmp_path / "go", harness.file()
    kept, dropped = harness.file(), harness.file()
    eta = datetime.now(UTC) + AHEAD
    blocker = harness.send("block", str(path), str(go), 60.0, eta=eta, priority=9)
    first = harness.send("stamp", str(kept), eta=eta, priority=5)
    waiting = [harness.send("stamp", str(dropped), eta=eta, priority=0) for _ in range(3)]
    wait_for(lambda: runs(path), 30, "the blocking task started")
    assert counts(harness) == (0, 5)  # 4 prefetched, their lease-time checks passed
    for result in waiting:
        result.revoke()
    go.touch()
    assert blocker.get(timeout=30) is True
    for result in waiting:
        harness.wait_state(result.id, states.REVOKED, 30)
    first.get(timeout=30)
    assert len(runs(kept)) == 1
    assert runs(dropped) == []


def test_a_task_that_kills_its_process_costs_its_prefetched_neighbours_nothing(
    harness_factory: Callable[..., Harness], tmp_path: Path
) -> None:
    # One lease takes three no-ops, a task that kills its process, and three more no-ops.
    # The first three finished before it: their acks (which wait for the next lease) go
    # out before a task that never ended in this process starts, so they never run again.
    # The last three waited prefetched: the supervisor gives them back at once (leases last
    # 60 s here) without charging a delivery.
    harness = harness_factory(
        worker_prefetch_short=10.0, broker_lease_timeout=60.0, broker_sweep_interval=1.0
    )
    harness.worker("-c", "1")
    warm_up(harness, 20)
    path, before, after = harness.file(), harness.file(), harness.file()
    eta = datetime.now(UTC) + AHEAD  # one lease takes them all, in priority order
    for _ in range(3):
        harness.send("stamp_count", str(before), eta=eta, priority=9)
    harness.send("suicide", str(path), eta=eta, priority=5)
    for _ in range(3):
        harness.send("stamp_count", str(after), eta=eta, priority=0)
    wait_for(lambda: runs(path), 30, "the poison task ran")
    wait_for(lambda: len(runs(after)) == 3, 30, "the prefetched no-ops ran in a new child")
    # "<pid> <delivery count>": uncharged, run by the new child
    assert [line.split()[-1] for line in runs(after)] == ["1", "1", "1"]
    # nothing held any more but the poison's lease (until it expires): the first three acked
    wait_for(lambda: counts(harness) == (0, 1), 10, "only the poison leased")
    assert len(runs(before)) == 3
    assert "gave back 3 message(s) child 1 prefetched and never started" in harness.output()
