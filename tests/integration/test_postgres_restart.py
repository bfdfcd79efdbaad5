"""PostgreSQL restarted under running workers: nothing is lost, workers and producers
reconnect on their own. The server is this module's own (the session's one stays up)."""

from __future__ import annotations

import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor import states
from conveyor.exceptions import ResultStoreError
from tests.integration.test_worker_processes import Harness, pids_of, wait_for
from tests.integration.workerapp import runs
from tests.pg_server import PostgresServer, running_postgres

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def own_postgres() -> Iterator[PostgresServer]:
    with running_postgres() as server:
        yield server


@pytest.fixture
def harness(own_postgres: PostgresServer, tmp_path: Path) -> Iterator[Harness]:
    prefix = f"rs{uuid.uuid4().hex[:10]}"
    made = Harness(
        own_postgres.url(), {"broker_transport_options": {"key_prefix": prefix}}, tmp_path
    )
    yield made
    print(made.output())  # shown when the test failed
    made.close()


def state_or_none(harness: Harness, task_id: str) -> str | None:
    try:
        return harness.state(task_id)
    except ResultStoreError:  # the client's connection broke with the restart
        return None


def test_restart_mid_run_loses_nothing_and_everyone_reconnects(
    harness: Harness, own_postgres: PostgresServer
) -> None:
    worker = harness.worker("-c", "2", "--threads", "4")
    before, after = harness.file("before"), harness.file("after")
    first = [harness.send("sleep", str(before), 0.3) for _ in range(24)]
    wait_for(lambda: len(pids_of(before)) >= 4, 20, "tasks running")

    own_postgres.restart()

    # The producer's pooled connections broke: its publish retries reconnect.
    second = [harness.send("record", str(after)) for _ in range(10)]
    for result in first + second:
        wait_for(
            lambda r=result: state_or_none(harness, r.id) == states.SUCCESS,
            60,
            f"task {result.id} succeeded",
        )
    # At least once: every task ended; a task whose ack was lost with the server may run twice.
    assert len(pids_of(before, "end")) >= 24
    assert len(runs(after)) >= 10
    assert len(worker.children()) == 2, "a child died instead of reconnecting"
    worker.signal(signal.SIGTERM)
    assert worker.wait(20) == 0
