"""The delivery count Conveyor keeps itself on RabbitMQ, for the runs it cannot see end.

RabbitMQ counts every return of a message (``x-delivery-count``), and a return is not always
a failed run: a delivery on its way to a consumer that is being cancelled is put back and
charged too (a quorum queue commits the cancel through Raft meanwhile). Such a spurious
charge made a task that kills its process reach ``task_max_deliveries`` one run early.

So before a task that may end its process starts (one that never ran to its end in that
process, ``Broker.record_attempts``), the worker records the count of its delivery under
``tries:<message id>``; the lease reaper does the same for a lease that expired. A lease of
a message that RabbitMQ says came back (its count is above 1) reads that record with the
fates, in the same round trip, and counts from it: the delivery after a recorded one is the
next, whatever RabbitMQ charged meanwhile. A message that has no record (nothing risky ran
it, or the record expired) keeps RabbitMQ's count. On a classic queue, which only flags a
redelivery (counted as 2), the record is the only count past 2 of a task that kills its
process. Any settlement of a lease that read or wrote a record deletes it (an ack, a retry - which
starts again at 1 -, a dead letter, a copy put back with its count in its headers).

Runs RabbitMQ saw end and no record explains (a task that had run to its end in that
process before, then killed the whole worker) are left to a quorum queue's own
``x-delivery-limit``, set :data:`SPURIOUS_MARGIN` above the worker's limit so that a
spurious charge or two never dead-letters a message early there (a classic queue has none).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ...kv import KeyValue
from .leases import Held

PREFIX = "tries:"
#: How long a record waits for its message to come back (s): a queue's backlog may be long.
TTL = 7 * 86400.0
#: Returns RabbitMQ may charge without a failed run before its own limit applies.
SPURIOUS_MARGIN = 2


def key(message_id: str) -> str:
    return f"{PREFIX}{message_id}"


def record(kv: KeyValue, attempts: Sequence[tuple[str, Held]]) -> None:
    """Record each (message id, held lease) about to run, and mark the lease as recorded."""
    for message_id, held in attempts:
        kv.set_value(key(message_id), str(held.delivery_count).encode(), TTL)
        held.recorded = True


def kept_count(value: bytes | None, counted: int, *, exact: bool) -> int | None:
    """The count of a delivery whose message has the record ``value`` and which RabbitMQ
    counts ``counted``: one more than the recorded delivery - never more than RabbitMQ's
    count where it counted every return (``exact``: a record that says more is not about
    this message's history; a classic queue's count says only "delivered before"). None
    without a valid record."""
    if value is None:
        return None
    try:
        recorded = int(value)
    except ValueError:
        return None
    if recorded < 1:
        return None
    return min(recorded + 1, counted) if exact else recorded + 1


def forget(kv: KeyValue, message_ids: Iterable[str]) -> None:
    for message_id in message_ids:
        kv.delete_value(key(message_id))
