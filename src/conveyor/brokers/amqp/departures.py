"""Departures on RabbitMQ (``Broker.take_departures``): the queue ``P.departures``.

``P.departures`` (durable classic) is bound to ``P.dlx`` beside ``P.dead``, so it gets a copy
of every dead letter - also of those RabbitMQ dead-letters itself, which no client sees: a
quorum queue's delivery limit, reached when the consumers of a message died
``max_deliveries`` times. A copy is a departure when no worker settled its message: RabbitMQ's
own ``worker_lost`` dead letters, and a client's expired leases (marked :data:`SWEPT`). The
copies of what a worker dead-lettered itself (its hooks ran then) are acked when taken.
``purge()`` publishes what it removes there directly, with reason ``purged``.

Taking is ``basic.get`` without ack on the client's work channel: a departure stays with the
client until it is forgotten (acked), requeued after :data:`DEPARTURE_CLAIM` if it was not,
and returned by RabbitMQ if the client's connection ends first.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import amqp

from ..base import DEPARTURE_CLAIM, PURGED, DeadLetterReason, Departure
from .convert import QUEUE, REASON, body_of, dead_letter_of, header_view, message_id_of

#: The header marking a dead letter of a client's sweep (an expired lease).
SWEPT = "conveyor-swept"


def departure_of(msg: amqp.Message, receipt: str) -> Departure | None:
    """The departure a message of ``P.departures`` records, or None (a worker settled it)."""
    headers = header_view(msg)
    reason = headers.get(REASON)
    queue = headers.get(QUEUE)
    if reason == PURGED:
        kind = PURGED
    elif isinstance(reason, str) and not headers.get(SWEPT):
        return None  # dead-lettered by a worker, which did its bookkeeping then
    elif dead_letter_of(msg).reason == DeadLetterReason.WORKER_LOST:
        kind = str(DeadLetterReason.WORKER_LOST)
    else:
        return None  # RabbitMQ dropped it for another reason (a queue's length limit)
    task_id = message_id_of(msg, "")
    return Departure(task_id, queue if isinstance(queue, str) else "", body_of(msg), kind, receipt)


class Taken:
    """The departures this client holds unacked: receipt ``"<generation>:<tag>"`` -> when
    taken (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._since: dict[str, float] = {}

    def add(self, receipt: str) -> None:
        with self._lock:
            self._since[receipt] = time.monotonic()

    def pop(self, receipts: Sequence[str]) -> list[str]:
        with self._lock:
            return [r for r in receipts if self._since.pop(r, None) is not None]

    def stale(self) -> list[str]:
        """Receipts held longer than the claim (their bookkeeping failed): forgotten here,
        for the caller to requeue."""
        limit = time.monotonic() - DEPARTURE_CLAIM
        with self._lock:
            old = [r for r, since in self._since.items() if since <= limit]
            for receipt in old:
                del self._since[receipt]
        return old


def tags_of(receipts: Sequence[str], generation: int) -> list[int]:
    """The delivery tags of ``receipts`` taken on connection ``generation`` (others are gone:
    RabbitMQ returned them when that connection closed)."""
    tags: list[int] = []
    for receipt in receipts:
        gen, _, tag = receipt.partition(":")
        if gen == str(generation) and tag.isdigit():
            tags.append(int(tag))
    return tags
