"""What RabbitMQ can tell of a queue's messages per priority (``Broker.priority_counts``).

* **ready**: nothing. ``queue.declare`` reports one count per queue; a quorum queue has no
  priorities at all and a classic priority queue does not report its per-priority counts, so
  the state is ``None`` (its total is in ``stats()``).
* **delayed**: yes, from the marker the broker keeps per delayed message (:mod:`.scheduled`),
  which records the priority.
* **leased**: the leases of this client, as ``stats()`` counts them (RabbitMQ does not say
  which client holds which message).
* **dead**: yes, by browsing ``P.dead`` as ``stats()`` does (:mod:`.deadletters`): each dead
  letter carries its priority in its headers.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import amqp

from ..base import PriorityCounts, Scheduled
from .convert import priority_of
from .deadletters import browse
from .leases import Held


def dead_by_priority(channel: amqp.Channel, queue: str) -> dict[str, dict[int, int]]:
    """Dead letters per Conveyor queue and priority, browsing ``queue`` (``P.dead``)."""
    out: dict[str, dict[int, int]] = {}
    for _, msg, dead in browse(channel, queue):
        counts = out.setdefault(dead.queue, {})
        priority = priority_of(msg)
        counts[priority] = counts.get(priority, 0) + 1
    return out


def split(
    queues: Sequence[str],
    delayed: Iterable[Scheduled],
    leased: Iterable[Held],
    dead: dict[str, dict[int, int]],
) -> dict[str, PriorityCounts]:
    """The counts of ``queues`` from the delayed markers, this client's leases and the dead
    letters' counts; ready ones are not split."""
    out = {queue: PriorityCounts(ready=None) for queue in queues}
    for item in delayed:
        if item.queue in out:
            out[item.queue].add("delayed", item.priority)
    for held in leased:
        if held.queue in out:
            out[held.queue].add("leased", priority_of(held.message))
    for queue, counts in out.items():
        for priority, count in dead.get(queue, {}).items():
            counts.add("dead", priority, count)
    return out
