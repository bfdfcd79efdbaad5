"""Storing result records and settling messages, in that order.

A worker finishing a task stores its result record and acks its message; a producer stores a
QUEUED record and publishes. Both orders are fixed (records first: a crash in between leads to
a redelivery or a duplicate QUEUED record, never to a message acked without its result).
:class:`Settlement` does this for any broker and result store; :func:`open_settlement` picks a
faster version when both live on one server and can be written in one round trip.
"""

from __future__ import annotations

from collections.abc import Sequence

from .brokers.base import Broker, Delivery, Message
from .results.base import ResultRecord, ResultStore


class Settlement:
    """Records + queue operations for one broker and one result store."""

    def __init__(self, broker: Broker, results: ResultStore) -> None:
        self.broker = broker
        self.results = results

    def publish(self, messages: Sequence[Message], records: Sequence[ResultRecord]) -> None:
        """Store ``records`` (QUEUED states), then publish ``messages``."""
        self.broker.publish_recorded(messages, self.results, records)

    def ack(self, deliveries: Sequence[Delivery], records: Sequence[ResultRecord]) -> None:
        """Store ``records``, then ack ``deliveries``: no ack takes effect before every
        record is stored."""
        self.broker.ack_recorded(deliveries, self.results, records)

    def ack_and_lease(
        self,
        deliveries: Sequence[Delivery],
        records: Sequence[ResultRecord],
        queues: Sequence[str],
        limit: int,
        wait: float,
    ) -> list[Delivery]:
        """:meth:`ack`, then lease up to ``limit`` messages from ``queues`` (waiting up to
        ``wait`` s). The records and acks take effect before the lease waits. If this raises,
        any part may have happened: ack again (both steps are idempotent)."""
        return self.broker.ack_and_lease(deliveries, self.results, records, queues, limit, wait)

    def retry_later(self, delivery: Delivery, message: Message) -> None:
        """Ack ``delivery`` and publish its retry ``message`` atomically."""
        self.broker.retry_later(delivery, message)

    def dead_letter(self, delivery: Delivery, reason: str, detail: str) -> None:
        """Move ``delivery`` to the dead-letter queue with ``reason``."""
        self.broker.dead_letter(delivery, reason, detail)


def open_settlement(broker: Broker, results: ResultStore) -> Settlement:
    """The settlement for ``broker`` and ``results``."""
    return Settlement(broker, results)
