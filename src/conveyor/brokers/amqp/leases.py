"""The leases one client holds: unacked AMQP deliveries with Conveyor lease deadlines.

RabbitMQ keeps an unacked message out of other consumers' reach until the channel that got it
acks, nacks or closes; it has no lease deadline of its own. Conveyor's lease (``lease_timeout``,
renewed by the worker's heartbeat through ``extend``) is therefore kept here, by the client that
holds the message, and :class:`Reaper` returns an expired one (``basic.nack`` with requeue) or
dead-letters it once it was delivered ``max_deliveries`` times. A worker process that dies
closes its connection and RabbitMQ requeues its messages at once, counting the delivery in the
quorum queue's ``x-delivery-count`` (and dead-lettering past ``x-delivery-limit``).

A receipt is ``<client uid>:<connection generation>:<delivery tag>``; it is held while it is in
this table. A receipt from an earlier connection is stale: RabbitMQ put that message back when
the connection closed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import amqp

logger = logging.getLogger("conveyor.brokers.amqp")


@dataclass(slots=True)
class Held:
    tag: int
    generation: int
    deadline: float
    delivery_count: int
    queue: str
    message: amqp.Message
    message_id: str
    #: Whether a kept count (:mod:`.attempts`) exists for the message: its settlement
    #: deletes it.
    recorded: bool = False


class Leases:
    """Thread-safe table receipt -> :class:`Held`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[str, Held] = {}

    def add(self, receipt: str, held: Held) -> None:
        with self._lock:
            self._held[receipt] = held

    def take(self, receipts: Iterable[str], generation: int) -> list[Held]:
        """Remove and return the entries of ``receipts`` still held on ``generation``."""
        out = []
        with self._lock:
            for receipt in receipts:
                held = self._held.get(receipt)
                if held is not None and held.generation == generation:
                    del self._held[receipt]
                    out.append(held)
        return out

    def find(self, receipts: Iterable[str]) -> list[Held]:
        """The entries of ``receipts`` still held."""
        with self._lock:
            return [held for r in receipts if (held := self._held.get(r)) is not None]

    def extend(self, receipts: Iterable[str], deadline: float) -> None:
        with self._lock:
            for receipt in receipts:
                held = self._held.get(receipt)
                if held is not None:
                    held.deadline = deadline

    def expired(self, now: float) -> list[Held]:
        """Remove and return the leases whose deadline passed."""
        with self._lock:
            gone = [r for r, held in self._held.items() if held.deadline <= now]
            return [self._held.pop(r) for r in gone]

    def forget_before(self, generation: int) -> None:
        """Drop the leases of closed connections (RabbitMQ requeued them)."""
        with self._lock:
            for receipt in [r for r, h in self._held.items() if h.generation < generation]:
                del self._held[receipt]

    def held(self) -> list[Held]:
        """A snapshot of the leases held."""
        with self._lock:
            return list(self._held.values())

    def count(self, queue: str) -> int:
        with self._lock:
            return sum(1 for held in self._held.values() if held.queue == queue)

    def __len__(self) -> int:
        with self._lock:
            return len(self._held)


class Reaper(threading.Thread):
    """Calls ``reap()`` every ``interval`` seconds until stopped; an error is logged and the
    loop goes on (the next pass retries on a new connection)."""

    def __init__(self, reap: Callable[[], int], interval: float) -> None:
        super().__init__(name="conveyor-amqp-leases", daemon=True)
        self._reap = reap
        self._interval = interval
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self._interval):
            try:
                self._reap()
            except Exception as exc:  # the connection is gone: RabbitMQ requeued what it held
                logger.warning("returning expired AMQP leases failed: %s", exc)

    def stop(self) -> None:
        self.stopped.set()
