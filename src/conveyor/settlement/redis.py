"""Settling on a Redis broker: acks ride on the next lease script call; the records of a Redis
result store on the same server and the dead letters (a script call each) ride in the same round
trip (a pipeline: the store's commands, the dead letters, then the lease call)."""

from __future__ import annotations

from collections.abc import Sequence

from .._redis import same_server
from .._redis_calls import Calls
from ..brokers.base import Delivery, Message
from ..brokers.redis import RedisBroker
from ..brokers.redis.staging import StagedPublish
from ..results.base import ResultRecord, ResultStore
from ..results.redis import RedisResultStore
from .base import Settlement
from .stream import BulkStream


class RedisSettlement(Settlement):
    """:class:`Settlement` in fewer round trips for a :class:`RedisBroker`."""

    broker: RedisBroker
    dead_letters_ride = True

    def __init__(self, broker: RedisBroker, results: ResultStore) -> None:
        super().__init__(broker, results)
        #: ``results`` when its commands can be sent with the broker's (same server,
        #: database and user), else None.
        self.together: RedisResultStore | None = None
        if isinstance(results, RedisResultStore) and same_server(broker.client, results.client):
            self.together = results

    def _records(self, records: Sequence[ResultRecord]) -> Calls:
        """Calls storing ``records`` in the same round trip, or storing them now if the
        result store is elsewhere (records always go first)."""
        first = Calls()
        if records:
            if self.together is None:
                self.results.store(records)
            else:
                first.add(self.together.store_commands(records))
        return first

    def publish(self, messages: Sequence[Message], records: Sequence[ResultRecord]) -> None:
        self.broker.publish_with(self._records(records), messages)

    def open_stream(self) -> BulkStream | None:
        """Chunks staged on the server while the next is encoded (one server: not on
        Cluster or with ``wait_for_replicas``); the records stored just before the commit."""
        staged = self.broker.staged()
        return None if staged is None else _StagedStream(self, staged)

    def ack(self, deliveries: Sequence[Delivery], records: Sequence[ResultRecord]) -> None:
        self.broker.ack_with(self._records(records), deliveries)

    def ack_and_lease(
        self,
        deliveries: Sequence[Delivery],
        records: Sequence[ResultRecord],
        queues: Sequence[str],
        limit: int,
        wait: float,
        dead: Sequence[tuple[Delivery, str, str]] = (),
    ) -> list[Delivery]:
        first = self._records(records)
        if dead:  # after the records, before the lease: the same round trip
            self.broker.dead_letter_calls(first, dead)
        return self.broker.lease_with(first, deliveries, queues, limit, wait)


class _StagedStream:
    """:class:`BulkStream` of a Redis broker: :class:`StagedPublish`, with the QUEUED
    records kept until the commit (a batch aborted before it leaves none)."""

    def __init__(self, settlement: RedisSettlement, staged: StagedPublish) -> None:
        self._settlement = settlement
        self._staged = staged
        self._records: list[ResultRecord] = []

    def add(self, messages: Sequence[Message], records: Sequence[ResultRecord]) -> None:
        self._records.extend(records)
        self._staged.add(messages)

    def finish(self) -> BaseException | None:
        try:
            self._staged.commit(self._settlement._records(self._records))
        except Exception as exc:  # reported as the PostgreSQL stream does
            return exc
        return None

    def abort(self) -> None:
        self._staged.abort()
