"""Helpers of the conformance suite: deadlines instead of sleeps, threads that report errors."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")

#: Lease timeout every conformance broker is built with (seconds).
LEASE_TIMEOUT = 1.0
#: ``max_deliveries`` every conformance broker is built with.
MAX_DELIVERIES = 3
#: How late a blocked call may return after the event that should wake it (seconds).
PROMPT = 0.5
#: Slack for "not earlier than" checks: clock resolution and call overhead (seconds).
EARLY_SLACK = 0.05


#: Documented weaker items (docs/rabbitmq.md, docs/choosing-a-broker.md), by backend: a test
#: that meets one asserts the weaker behaviour for that backend instead of the full one.
WEAKER: dict[str, frozenset[str]] = {
    "amqp": frozenset(
        {
            # quorum queues are FIFO (RabbitMQ 3.10; 4.x has two levels); several queues
            # are served in the order they are given
            "priority",
            # delayed messages wait in shared TTL queues: purge() cannot reach them
            "purge_delayed",
            # an expired lease is returned by the client holding it, not by another
            # client's sweep(); a released message joins the back of its queue
            "holder_returns",
            # AMQP reports no unacked count: stats() counts the leases of the client asked
            "leased_per_client",
            # shared TTL queues cannot be browsed or edited: scheduled() lists markers (no
            # body), cancel_scheduled() revokes, run_scheduled() publishes a copy and drops
            # the TTL copy (not within a margin of the due time: brokers/amqp/run_now.py);
            # no counts per priority
            "scheduled",
        }
    ),
}


def weaker(backend: str, item: str) -> bool:
    return item in WEAKER.get(backend, frozenset())


def new_id() -> str:
    return uuid.uuid4().hex


def wait_until(
    predicate: Callable[[], T], timeout: float, what: str = "condition", interval: float = 0.01
) -> T:
    """Poll ``predicate`` until it returns a truthy value (returned) or ``timeout`` passes
    (AssertionError naming ``what``)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} not reached within {timeout:.1f}s")
        time.sleep(interval)  # polling interval under a deadline


def hold(seconds: float) -> None:
    """Let time pass on purpose, to build a scenario (e.g. a consumer already blocked in
    ``lease`` when the publish happens). Never used to wait for a condition."""
    threading.Event().wait(seconds)


class Background(threading.Thread, Generic[T]):
    """Run ``fn(*args)`` in a daemon thread; ``outcome()`` re-raises its exception in the test.

    ``started`` is set just before ``fn`` runs; ``finished_at`` is the ``time.monotonic()``
    at which ``fn`` returned.
    """

    def __init__(self, fn: Callable[..., T], *args: Any) -> None:
        super().__init__(daemon=True)
        self._fn = fn
        self._args = args
        self.started = threading.Event()
        self.result: T | None = None
        self.error: BaseException | None = None
        self.finished_at = 0.0

    def run(self) -> None:
        self.started.set()
        try:
            self.result = self._fn(*self._args)
        except BaseException as exc:  # reported by outcome()
            self.error = exc
        finally:
            self.finished_at = time.monotonic()

    def outcome(self, timeout: float = 10.0) -> T:
        self.join(timeout)
        if self.is_alive():
            raise AssertionError(f"background call did not finish within {timeout:.1f}s")
        if self.error is not None:
            raise self.error
        return self.result  # type: ignore[return-value]


def start(fn: Callable[..., T], *args: Any) -> Background[T]:
    thread: Background[T] = Background(fn, *args)
    thread.start()
    thread.started.wait(5.0)
    return thread


def run_together(calls: list[Callable[[], T]], timeout: float = 20.0) -> list[T]:
    """Run ``calls`` in threads released at once by a barrier; return results in order."""
    barrier = threading.Barrier(len(calls))

    def gated(call: Callable[[], T]) -> T:
        barrier.wait(timeout)
        return call()

    threads = [Background(gated, call) for call in calls]
    for thread in threads:
        thread.start()
    return [thread.outcome(timeout) for thread in threads]
