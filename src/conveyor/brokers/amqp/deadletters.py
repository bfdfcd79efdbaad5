"""The dead-letter queue ``P.dead``: list, replay and purge by browsing.

AMQP has no way to read a queue without taking its messages, so these operations take every
dead letter on a channel of their own (``basic.get`` without ack), act on the chosen ones, and
close the channel: RabbitMQ puts the rest back in their places (a classic queue keeps the
order of requeued messages). While one of these runs, another client sees fewer dead letters;
the DLQ is for operators and tooling, not a hot path.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import amqp

from ..base import DeadLetter, Message
from .convert import as_message, dead_letter_of


def browse(channel: amqp.Channel, queue: str) -> list[tuple[int, amqp.Message, DeadLetter]]:
    """Take every message of ``queue`` unacked: ``(delivery tag, message, dead letter)``."""
    out: list[tuple[int, amqp.Message, DeadLetter]] = []
    while True:
        msg = channel.basic_get(queue, no_ack=False)
        if msg is None:
            return out
        out.append((msg.delivery_info["delivery_tag"], msg, dead_letter_of(msg)))


def listing(channel: amqp.Channel, queue: str, limit: int, only: str | None) -> list[DeadLetter]:
    found = [dead for _, _, dead in browse(channel, queue)]
    if only is not None:
        found = [dead for dead in found if dead.queue == only]
    found.sort(key=lambda dead: dead.dead_at)  # stable: RabbitMQ order within one second
    return found[:limit]


def counts(channel: amqp.Channel, queue: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for _, _, dead in browse(channel, queue):
        out[dead.queue] = out.get(dead.queue, 0) + 1
    return out


def settle(
    channel: amqp.Channel,
    queue: str,
    ids: Sequence[str] | None,
    republish: Callable[[list[Message]], None] | None,
) -> int:
    """Remove the dead letters with ``ids`` (all when None), after ``republish`` confirmed
    their messages when given (replay); return how many."""
    chosen = [
        (tag, msg)
        for tag, msg, dead in browse(channel, queue)
        if ids is None or dead.id in set(ids)
    ]
    if republish is not None and chosen:
        republish([as_message(msg, "") for _, msg in chosen])
    for tag, _ in chosen:
        channel.basic_ack(tag)
    return len(chosen)
