"""The generic settlement: store the records, then settle the messages with queue operations."""

from __future__ import annotations

from collections.abc import Sequence

from ..brokers.base import Broker, Delivery, Message
from ..exceptions import ConfigurationError
from ..results.base import ResultRecord, ResultStore
from .stream import BulkStream


class Settlement:
    """Records + queue operations for any broker and result store, one after the other."""

    #: Whether the dead letters of :meth:`ack_and_lease` ride in its transaction or round
    #: trip: the worker then settles those of messages it could not admit with its next
    #: lease; otherwise its finisher does, beside the lease loop.
    dead_letters_ride = False

    def __init__(self, broker: Broker, results: ResultStore) -> None:
        self.broker = broker
        self.results = results

    def publish(self, messages: Sequence[Message], records: Sequence[ResultRecord]) -> None:
        """Store ``records`` (QUEUED states), then publish ``messages``: a fast worker never
        overwrites a later state with QUEUED."""
        if records:
            self.results.store(records)
        self.broker.publish(messages)

    def open_stream(self) -> BulkStream | None:
        """A stream for a large bulk publish (sent chunk by chunk while it is encoded, all
        visible at once), or None: publish the batch with :meth:`publish` when it is built."""
        return None

    def can_publish_on(self, connection: object) -> bool:
        """Whether :meth:`publish_on` can enqueue in ``connection``'s transaction."""
        return False

    def publish_on(
        self, connection: object, messages: Sequence[Message], records: Sequence[ResultRecord]
    ) -> None:
        """Publish inside the transaction of ``connection`` (a database connection of the
        application): the messages commit or roll back with it. Only a broker that lives in
        that database can (PostgreSQL)."""
        raise ConfigurationError(
            f"apply_async(connection=...) needs a PostgreSQL broker; {type(self.broker).__name__} "
            "cannot enqueue inside a database transaction"
        )

    async def apublish_on(
        self, connection: object, messages: Sequence[Message], records: Sequence[ResultRecord]
    ) -> None:
        """:meth:`publish_on` for an async database connection (``aapply_async``)."""
        self.publish_on(connection, messages, records)

    def ack(self, deliveries: Sequence[Delivery], records: Sequence[ResultRecord]) -> None:
        """Store ``records``, then ack ``deliveries``: no ack takes effect before every
        record is stored."""
        if records:
            self.results.store(records)
        if deliveries:
            self.broker.ack(deliveries)

    def ack_and_lease(
        self,
        deliveries: Sequence[Delivery],
        records: Sequence[ResultRecord],
        queues: Sequence[str],
        limit: int,
        wait: float,
        dead: Sequence[tuple[Delivery, str, str]] = (),
    ) -> list[Delivery]:
        """:meth:`ack`, move each ``(delivery, reason, detail)`` of ``dead`` to the
        dead-letter queue, then lease up to ``limit`` messages from ``queues`` (waiting up to
        ``wait`` s; ``limit <= 0``: no lease). Records first; records, acks and dead letters
        take effect before the lease waits. If this raises, any part may have happened: call
        it again (every step is idempotent: a receipt acked or dead-lettered already is left
        alone)."""
        self.ack(deliveries, records)
        if dead:
            self.broker.dead_letter_many(dead)
        if limit <= 0 or not queues:
            return []
        return self.broker.lease(queues, limit, wait)

    def retry_later(self, delivery: Delivery, message: Message) -> None:
        """Ack ``delivery`` and publish its retry ``message`` atomically."""
        self.broker.retry_later(delivery, message)

    def retry_later_many(self, retries: Sequence[tuple[Delivery, Message]]) -> None:
        """:meth:`retry_later` for each pair (in one round trip where the broker can)."""
        if retries:
            self.broker.retry_later_many(retries)

    def dead_letter(self, delivery: Delivery, reason: str, detail: str) -> None:
        """Move ``delivery`` to the dead-letter queue with ``reason``."""
        self.broker.dead_letter(delivery, reason, detail)

    def dead_letter_many(self, letters: Sequence[tuple[Delivery, str, str]]) -> None:
        """Move each ``(delivery, reason, detail)`` to the dead-letter queue, in one round
        trip where the broker can."""
        self.broker.dead_letter_many(letters)
