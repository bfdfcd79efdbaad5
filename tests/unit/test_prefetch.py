"""The adaptive prefetch's estimate and its holding of prefetched messages (no broker: the
process tests in tests/integration/test_prefetch_processes.py run it against real ones), and
which runs a worker has the broker record before they start (memory broker)."""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Sequence

import pytest

from conveyor.brokers.base import Delivery
from conveyor.exceptions import BrokerError
from conveyor.testing import make_test_app
from conveyor.worker.inflight import InFlight
from conveyor.worker.ledger import ChildLedger, PrefetchLedger
from conveyor.worker.prefetch import AdaptivePrefetch, RuntimeEstimate
from tests.conftest import wait_until
from tests.helpers import consuming


def delivery(n: int) -> Delivery:
    return Delivery(f"id{n}", "default", b"{}", 0, f"r{n}", 1)


def test_estimate_starts_at_the_first_runtime_then_moves_by_its_weight() -> None:
    estimate = RuntimeEstimate(weight=0.5)
    assert estimate.get("q") is None
    estimate.observe("q", 1.0)
    assert estimate.get("q") == 1.0
    estimate.observe("q", 0.0)
    assert estimate.get("q") == 0.5
    estimate.observe("q", 0.0)
    assert estimate.get("q") == 0.25
    assert estimate.get("other") is None  # per queue


def test_estimate_is_short_only_when_known_and_every_queue_is_short() -> None:
    estimate = RuntimeEstimate()
    assert not estimate.short(["a", "b"], 0.005)  # nothing known yet: one per slot
    estimate.observe("a", 0.0001)
    assert estimate.short(["a", "b"], 0.005)  # b unknown, a short
    estimate.observe("b", 1.0)
    assert not estimate.short(["a", "b"], 0.005)  # one long queue is enough
    assert estimate.short(["a"], 0.005)


def test_estimate_falls_back_after_one_long_task_and_recovers_after_short_ones() -> None:
    estimate = RuntimeEstimate()  # default weight 0.2
    for _ in range(50):
        estimate.observe("q", 0.0001)
    assert estimate.short(["q"], 0.005)
    estimate.observe("q", 1.0)  # one 1-s task
    assert not estimate.short(["q"], 0.005)
    shorts = 0
    while not estimate.short(["q"], 0.005):
        estimate.observe("q", 0.0001)
        shorts += 1
    assert 10 < shorts < 30  # 0.2 * 0.8**n < 0.005: n = 17


@pytest.mark.parametrize("weight", [0.0, -0.1, 1.5])
def test_estimate_refuses_a_weight_outside_0_1(weight: float) -> None:
    with pytest.raises(ValueError, match="weight"):
        RuntimeEstimate(weight)


def prefetcher(inflight: InFlight, release: list[list[Delivery]] | None = None) -> AdaptivePrefetch:
    released = release if release is not None else []
    return AdaptivePrefetch(
        inflight, short=0.005, most=4, release=released.append, stopped=threading.Event()
    )


def test_per_slot_follows_the_estimate() -> None:
    prefetch = prefetcher(InFlight())
    assert prefetch.per_slot(["default"]) == 1
    prefetch.runtimes.observe("default", 0.001)
    assert prefetch.per_slot(["default"]) == 4
    prefetch.runtimes.observe("default", 5.0)
    assert prefetch.per_slot(["default"]) == 1


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="most"):
        AdaptivePrefetch(InFlight(), short=0.005, most=0, release=print, stopped=threading.Event())
    with pytest.raises(ValueError, match="short"):
        AdaptivePrefetch(InFlight(), short=0, most=4, release=print, stopped=threading.Event())


def test_prefetched_messages_are_held_taken_in_order_and_reclaimed_only_when_old() -> None:
    inflight, released = InFlight(), []
    prefetch = prefetcher(inflight, released)
    inflight.prefetch([delivery(n) for n in range(4)])
    assert set(inflight.held) == {"r0", "r1", "r2", "r3"}  # renewed by the heartbeat
    assert inflight.prefetching.is_set()
    with inflight.cond:
        taken, _ = inflight.take_prefetched(1)
        assert inflight.handing_over  # a stop waits for their admission
    assert [d.id for d in taken] == ["id0"]
    assert prefetch.reclaim() == 0  # not waited long yet
    inflight.prefetched[0] = (inflight.prefetched[0][0] - 1.0, inflight.prefetched[0][1])
    assert prefetch.reclaim() == 3
    assert [[d.id for d in batch] for batch in released] == [["id1", "id2", "id3"]]
    assert set(inflight.held) == {"r0"}  # no longer renewed: back in the broker
    assert not inflight.prefetched and not inflight.prefetching.is_set()


def test_a_failed_give_back_keeps_the_messages() -> None:
    inflight = InFlight()

    def refuse(deliveries: list[Delivery]) -> None:
        raise BrokerError("down")

    prefetch = AdaptivePrefetch(
        inflight, short=0.005, most=4, release=refuse, stopped=threading.Event()
    )
    inflight.prefetch([delivery(1)])
    inflight.prefetched[0] = (inflight.prefetched[0][0] - 1.0, inflight.prefetched[0][1])
    assert prefetch.reclaim() == 0
    assert [d.id for _, d in inflight.prefetched] == ["id1"]
    assert "r1" in inflight.held


def test_a_stop_takes_every_prefetched_message() -> None:
    inflight = InFlight()
    inflight.prefetch([delivery(n) for n in range(3)])
    assert [d.id for d in inflight.take_all_prefetched()] == ["id0", "id1", "id2"]
    assert not inflight.held and not inflight.prefetched


def test_the_ledger_gives_back_what_never_left_the_prefetch_queue() -> None:
    # The child writes its prefetch queue to memory shared with the supervisor, and counts
    # what leaves it; the supervisor reads what is left once the child ended.
    supervisor = PrefetchLedger(multiprocessing.get_context())
    inflight = InFlight()
    inflight.ledger = ChildLedger(supervisor.memory)
    first = [Delivery(f"a{i}", "q", b"{}", 0, f"r-a{i}", 1) for i in range(3)]
    second = [Delivery(f"b{i}", "q", b"{}", 5, f"r-b{i}", 2) for i in range(2)]
    assert supervisor.unstarted() == []  # nothing written yet
    inflight.prefetch(first)
    with inflight.cond:
        taken, _ = inflight.take_prefetched(2)
    assert [d.id for d in taken] == ["a0", "a1"]
    inflight.prefetch(second)  # a2 still waits: the queue is written again, whole
    assert [
        (d.id, d.receipt, d.priority, d.delivery_count, d.body) for d in supervisor.unstarted()
    ] == [
        ("a2", "r-a2", 0, 1, b""),
        ("b0", "r-b0", 5, 2, b""),
        ("b1", "r-b1", 5, 2, b""),
    ]
    with inflight.cond:
        inflight.take_prefetched(2)
    assert [d.id for d in supervisor.unstarted()] == ["b1"]
    assert inflight.take_all_prefetched() == [second[1]]  # a stop gives it back itself
    assert supervisor.unstarted() == []


def test_a_prefetch_queue_too_big_for_the_ledger_is_left_to_lease_expiry() -> None:
    supervisor = PrefetchLedger(multiprocessing.get_context())
    inflight = InFlight()
    inflight.ledger = ChildLedger(supervisor.memory)
    inflight.prefetch([Delivery("a", "q", b"{}", 0, "r-a", 1)])
    assert len(supervisor.unstarted()) == 1
    huge = [Delivery(f"b{i}", "q" * 1000, b"{}", 0, f"r{i}", 1) for i in range(100)]
    inflight.prefetch(huge)
    assert supervisor.unstarted() == []


def test_the_broker_records_the_attempts_of_tasks_that_never_ended_in_the_process(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Broker.record_attempts (RabbitMQ keeps its own count from it): the first run of each
    # task name in the process, where a task that kills its process would go unseen; not
    # the runs after one ended (failed or not).
    app = make_test_app()
    recorded: list[str] = []

    def record(deliveries: Sequence[Delivery]) -> None:
        recorded.extend(d.id for d in deliveries)

    monkeypatch.setattr(app.broker, "record_attempts", record)

    @app.task
    def fine() -> int:
        return 1

    @app.task
    def fails() -> None:
        raise ValueError("expected")

    sent = []
    with consuming(app):
        for task in (fine, fine, fails, fails, fine):
            result = task.delay()
            wait_until(result.ready, 10, "the task ended")
            sent.append(result.id)
    assert recorded == [sent[0], sent[2]]
