"""A RabbitMQ node that is alive on TCP but does not answer (stopped with SIGSTOP; a queue that
lost its leader looks the same to a client) makes calls fail with ``BrokerError`` in bounded
time - they used to block forever: the publish waited for confirms, gave up, then blocked in
``connection.close()`` waiting for the close-ok, holding the session lock so every lease of
the process blocked too. Found by the chaos suite's RabbitMQ restarts (issue 13)."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conveyor.brokers import BrokerOptions, create_broker
from conveyor.brokers.amqp import connection, session
from conveyor.brokers.base import Broker, Message
from conveyor.exceptions import BrokerError
from tests.conftest import wait_until
from tests.rabbit_server import RabbitServer

pytestmark = pytest.mark.amqp
Q = "default"


@pytest.fixture
def stalling_rabbit(rabbit_server: RabbitServer) -> Iterator[RabbitServer]:
    """The session's node, continued whatever happens (other tests of this process use it
    after this one; a few seconds stopped are far below its AMQP heartbeats)."""
    try:
        yield rabbit_server
    finally:
        if rabbit_server.process is not None:
            os.kill(rabbit_server.process.pid, signal.SIGCONT)


def stop(pid: int) -> None:
    """SIGSTOP ``pid`` and wait until every thread of it is stopped: the kernel stops the
    threads only once one of them runs, and on a busy machine the node kept answering for
    milliseconds after ``kill`` returned (it confirmed the publish this test expects to
    fail)."""
    os.kill(pid, signal.SIGSTOP)

    def stopped() -> bool:
        states = []
        for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
            try:  # the state follows the parenthesised command name
                states.append(stat.read_text().rsplit(")", 1)[1].split()[0])
            except (OSError, IndexError):  # a thread that just ended
                continue
        return bool(states) and all(state in "tT" for state in states)

    wait_until(stopped, 10, f"process {pid} stopped")


def outcome(call: Callable[[], object], limit: float) -> tuple[BaseException | None, float]:
    """Run ``call`` on a thread; its exception (None: it returned) and how long it took."""
    result: list[BaseException | None] = []
    started = time.monotonic()

    def run() -> None:
        try:
            call()
            result.append(None)
        except BaseException as exc:  # the outcome under test
            result.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(limit)
    assert result, f"still blocked after {limit} s"
    return result[0], time.monotonic() - started


def test_calls_to_a_stalled_node_fail_in_bounded_time_and_recover(
    stalling_rabbit: RabbitServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(session, "CONFIRM_TIMEOUT", 2.0)
    monkeypatch.setattr(connection, "RPC_TIMEOUT", 2.0)
    broker: Broker = create_broker(
        f"{stalling_rabbit.url}?kv_url=sqlite:///{tmp_path}/kv.db",
        BrokerOptions(key_prefix=f"st{uuid.uuid4().hex[:8]}"),
    )
    try:
        broker.publish([Message("before", Q, b"{}")])
        broker.ack(broker.lease([Q], 10, 0))
        assert stalling_rabbit.process is not None
        stop(stalling_rabbit.process.pid)
        try:
            error, took = outcome(lambda: broker.publish([Message("during", Q, b"{}")]), 30)
            assert isinstance(error, BrokerError) and took < 15, (error, took)
            error, took = outcome(lambda: broker.lease([Q], 10, 0), 30)
            assert isinstance(error, BrokerError) and took < 15, (error, took)
        finally:
            os.kill(stalling_rabbit.process.pid, signal.SIGCONT)
        wait_until(lambda: outcome(lambda: broker.stats([Q]), 30)[0] is None, 30, "reconnected")
        broker.publish([Message("after", Q, b"{}")])
        assert "after" in {d.id for d in broker.lease([Q], 10, 0)}
    finally:
        broker.close()
