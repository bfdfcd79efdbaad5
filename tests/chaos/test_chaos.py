"""The chaos suite (issue 13, item 5): every scenario of ``tests/chaos/scenarios.py`` on every
broker of its ``BROKERS`` list, full size, asserting the promises the figures of
docs/reliability.md show. All slow: ``scripts/test --slow`` (about 15 minutes on 2 cores)."""

from __future__ import annotations

from typing import Any

import pytest

from conveyor.publishing import DEFAULT_POLICY
from tests.chaos.scenarios import BROKERS, BrokerSpec, run

#: Poison tasks take about 6 minutes per broker (child restarts back off up to 10 s).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

#: The promise of DESIGN.md: leases of a dead worker return within lease + sweep (30 + 5 s);
#: the rest is the time to lease them again behind the queue, on a loaded 2-core machine.
RECOVERY_BOUND = 30.0 + 5.0 + 15.0


@pytest.fixture(
    params=[
        pytest.param(b, id=b.name, marks=tuple(getattr(pytest.mark, m) for m in b.marks))
        for b in BROKERS
    ]
)
def broker(request: pytest.FixtureRequest) -> BrokerSpec:
    spec: BrokerSpec = request.param
    return spec


def seconds(spread: Any) -> list[float]:
    """The median and max of a ``"m / x (n=k)"`` figure."""
    median, _, rest = str(spread).partition(" / ")
    return [float(median), float(rest.split()[0])]


def test_kills_of_children_and_whole_workers_lose_nothing(broker: BrokerSpec) -> None:
    figures = run(broker, "kills")
    assert (figures["child kills"], figures["worker kills"]) == (10, 10)
    assert figures["queued at worker kills"] >= 1000  # thousands behind the killed tasks
    assert figures["lost"] == 0
    assert figures["duplicates in flight"] is True
    assert max(seconds(figures["re-run after a worker kill (s, median / max)"])) < RECOVERY_BOUND


def test_broker_crashes_lose_no_sent_task(broker: BrokerSpec) -> None:
    if broker.name == "sqlite":
        pytest.skip("a file: there is no server to crash")
    figures = run(broker, "broker restarts")
    if figures["longest outage s"] < (DEFAULT_POLICY.total_wait or 0.0) - 1.0:
        assert figures["send errors"] == 0  # publish retries ride out each outage
    assert figures["lost"] == 0
    assert figures["children replaced"] is False  # workers reconnect; no child dies


def test_sigterm_under_load_finishes_what_runs_and_reruns_nothing(broker: BrokerSpec) -> None:
    figures = run(broker, "sigterm")
    assert figures["exit code"] == 0
    assert (figures["lost"], figures["re-runs"], figures["left unfinished"]) == (0, 0, 0)


def test_poison_tasks_are_dead_lettered_after_max_deliveries(broker: BrokerSpec) -> None:
    figures = run(broker, "poison")
    assert figures["dead-lettered worker_lost"] == figures["poison tasks"]
    assert figures["deliveries per poison"] == [4]
    assert (figures["good lost"], figures["good duplicated"]) == (0, 0)


def test_three_beats_with_the_leader_killed_send_each_tick_once(broker: BrokerSpec) -> None:
    figures = run(broker, "beats")
    assert (figures["missing ticks"], figures["duplicate ticks"]) == (0, 0)
    assert figures["ticks"] >= 10


def test_memory_stays_flat_over_20000_tasks(broker: BrokerSpec) -> None:
    figures = run(broker, "soak")
    assert figures["same child"] is True
    assert figures["PSS after MiB"] - figures["PSS before MiB"] < 5.0
