"""Inspection and maintenance on RabbitMQ (a mixin of :class:`~.broker.AMQPBroker`): queue
statistics, counts per priority, the dead-letter queue, purges and the departures queue,
each on a short-lived channel of its own where RabbitMQ may close it."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import amqp

from ..base import PURGED, DeadLetter, DeadLetterReason, Departure, PriorityCounts, QueueStats
from . import counts, deadletters
from .convert import QUEUE, REASON, copy_of
from .core import QUEUE_KEY, AMQPCore
from .departures import departure_of, tags_of
from .scheduled import DELAYED_KEY


class Admin(AMQPCore):
    """``stats``, ``priority_counts``, dead letters, ``purge`` and departures."""

    def _ready(self, channel: amqp.Channel, queue: str) -> int:
        """Ready messages of ``queue`` and its lane; -1 if the queue does not exist."""
        count = _count(channel, self.names.queue(queue))
        if count < 0:
            return -1
        return count + max(_count(channel, self.names.lane(queue)), 0)

    def stats(self, queues: Sequence[str] | None = None) -> dict[str, QueueStats]:
        if queues is None:
            keys = self.kv.values(QUEUE_KEY)
            names = sorted(k[len(QUEUE_KEY) :] for k in keys)
        else:
            names = list(queues)
        dead = self._with_channel(lambda ch: deadletters.counts(ch, self.names.dead), "stats")
        pushed = self._session.run(lambda _: self._unleased(), "stats")
        out: dict[str, QueueStats] = {}
        for queue in names:
            ready = self._with_channel(functools.partial(self._ready, queue=queue), "stats")
            out[queue] = QueueStats(
                ready=max(ready, 0) + pushed.get(queue, 0),
                delayed=len(self.kv.values(f"{DELAYED_KEY}{queue}:")),
                leased=self._leases.count(queue),
                dead=dead.get(queue, 0),
            )
        return out

    def _unleased(self) -> dict[str, int]:
        """Messages pushed to this client and not leased yet, per queue (lock held): RabbitMQ
        counts them out of its ready ones, yet they wait for a lease like those."""
        current = [
            p for p in (self._pushed, self._lanes) if p.generation == self._session.generation
        ]
        if current:
            self._session.pump()
        out: dict[str, int] = {}
        for pushed in current:
            for queue, count in pushed.counts().items():
                out[queue] = out.get(queue, 0) + count
        return out

    def priority_counts(self, queues: Sequence[str] | None = None) -> dict[str, PriorityCounts]:
        names = list(self.stats()) if queues is None else list(dict.fromkeys(queues))
        dead = self._with_channel(lambda ch: counts.dead_by_priority(ch, self.names.dead), "stats")
        delayed = [item for _, item in self._markers(None)]
        return counts.split(names, delayed, self._leases.held(), dead)

    def dead_letters(self, limit: int = 100, queue: str | None = None) -> list[DeadLetter]:
        found = self._with_channel(
            lambda ch: deadletters.listing(ch, self.names.dead, limit, queue), "dead_letters"
        )
        # RabbitMQ's own dead-lettering (delivery limit) drops x-delivery-count
        most = self.options.max_deliveries
        return [
            dataclasses.replace(d, delivery_count=most)
            if d.reason == DeadLetterReason.WORKER_LOST and not d.delivery_count
            else d
            for d in found
        ]

    def replay_dead(self, ids: Sequence[str] | None = None) -> int:
        return self._with_channel(
            lambda ch: deadletters.settle(ch, self.names.dead, ids, self._send), "replay_dead"
        )

    def purge_dead(self, ids: Sequence[str] | None = None) -> int:
        return self._with_channel(
            lambda ch: deadletters.settle(ch, self.names.dead, ids, None), "purge_dead"
        )

    def purge(self, queues: Sequence[str]) -> int:
        """Move the ready messages of ``queues`` and their lanes into ``P.departures``
        (reason ``purged``): taken and republished in transactions of up to 500, each
        atomic."""

        def run(channel: amqp.Channel, queue: str, physical: str) -> int:
            count, moved = _count(channel, physical), 0
            if count <= 0:
                return 0
            channel.tx_select()
            while moved < count:
                msg = channel.basic_get(physical, no_ack=False)
                if msg is None:
                    break
                extra = {REASON: PURGED, QUEUE: queue}
                channel.basic_publish(copy_of(msg, extra), "", self.names.departures)
                channel.basic_ack(msg.delivery_info["delivery_tag"])
                moved += 1
                if moved % 500 == 0:
                    channel.tx_commit()
            channel.tx_commit()
            return moved

        return sum(
            self._with_channel(functools.partial(run, queue=q, physical=physical), "purge")
            for q in queues
            for physical in (self.names.queue(q), self.names.lane(q))
        )

    def take_departures(self, limit: int = 100) -> list[Departure]:
        def run(channel: amqp.Channel) -> list[Departure]:
            generation = self._session.generation
            stale = tags_of(self._departures.stale(), generation)
            # their bookkeeping failed: to be taken again
            self._session.settled.reject(channel, stale, True)
            out: list[Departure] = []
            while len(out) < limit:
                msg = channel.basic_get(self.names.departures, no_ack=False)
                if msg is None:
                    break
                tag = msg.delivery_info["delivery_tag"]
                departure = departure_of(msg, f"{generation}:{tag}")
                if departure is None:
                    self._session.settled.ack(channel, [tag])
                    continue
                self._departures.add(departure.receipt)
                out.append(departure)
            return out

        return self._session.run(run, "take_departures")

    def forget_departures(self, departures: Sequence[Departure]) -> None:
        held = self._departures.pop([d.receipt for d in departures])
        if not held:
            return

        def run(channel: amqp.Channel) -> None:
            self._session.settled.ack(channel, tags_of(held, self._session.generation))

        self._session.run(run, "forget_departures")


def _count(channel: amqp.Channel, physical: str) -> int:
    """Ready messages of AMQP queue ``physical``; -1 if it does not exist (which closes
    ``channel``: nothing may use it after that)."""
    try:
        _, count, _ = channel.queue_declare(physical, passive=True)
    except amqp.exceptions.NotFound:
        return -1
    return int(count)
