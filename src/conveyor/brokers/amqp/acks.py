"""Acks of one channel, sent as one ``basic.ack`` with ``multiple=True`` where that is exact.

A multiple ack of tag *t* settles every unsettled delivery of the channel up to *t*. That is
exactly the batch being acked when every lower tag was settled already (AMQP numbers a
channel's deliveries 1, 2, 3, ...), which is the usual case for a worker: it runs its leased
messages in delivery order and acks them together after they finished. :class:`Settled` keeps
which tags of the channel were acked or rejected (everything up to :attr:`Settled.floor`, and
the tags above it in a set) and sends one frame for the run of the batch that starts at the
floor; the tags past a gap (a delivery still running or still in the pushed buffer) are acked
one by one. RabbitMQ then applies one settle to the queue instead of one per message: on a
quorum queue one Raft command for the run (``bench/amqp_ceiling.py`` measures the difference).

A tag is recorded only after its frame was written, so the set never claims a delivery that
is still held: a multiple ack never covers an unfinished task. A new connection (new channel,
tags from 1 again) starts a new :class:`Settled`.
"""

from __future__ import annotations

from collections.abc import Iterable

import amqp


class Settled:
    """The settled delivery tags of one channel (not thread-safe: the session lock)."""

    def __init__(self) -> None:
        #: Every tag up to this one was acked or rejected.
        self.floor = 0
        self._above: set[int] = set()

    def ack(self, channel: amqp.Channel, tags: Iterable[int]) -> int:
        """Ack ``tags`` (delivered on ``channel``, not settled yet) in as few frames as
        exact; returns how many frames were sent."""
        pending = set(tags)
        if not pending:
            return 0
        reach = self.floor  # the last tag of the run [floor + 1, reach] settled or pending
        while reach + 1 in pending or reach + 1 in self._above:
            reach += 1
        run = [tag for tag in pending if tag <= reach]
        frames = 0
        if len(run) > 1:
            top = max(run)  # a tag being acked now: a multiple ack names an unacked tag
            channel.basic_ack(top, multiple=True)
            frames = 1
            pending.difference_update(run)
            self._above.update(run)
            self._advance()
        for tag in sorted(pending):
            channel.basic_ack(tag)
            self._settle(tag)
            frames += 1
        return frames

    def reject(self, channel: amqp.Channel, tags: Iterable[int], requeue: bool) -> None:
        """``basic.reject`` each of ``tags``."""
        for tag in tags:
            channel.basic_reject(tag, requeue=requeue)
            self._settle(tag)

    def _settle(self, tag: int) -> None:
        if tag > self.floor:
            self._above.add(tag)
            self._advance()

    def _advance(self) -> None:
        above = self._above
        while self.floor + 1 in above:
            self.floor += 1
            above.discard(self.floor)
