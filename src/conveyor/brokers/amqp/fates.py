"""What should happen to a message the next time it is leased, kept in the broker's ``kv``.

Two kinds, one key per message id (``fate:<id>``), read once per leased message:

* **revoked** (``revoke(ids, ttl)``): the lease flags the delivery (``lease_checks_revoked``).
* **settled elsewhere**: a worker's supervisor settles the messages of a child it killed (hard
  time limit, terminate past its grace) with the child's receipts. On RabbitMQ a receipt only
  works on the connection that got the message, and that connection died with the child, so
  RabbitMQ has already put the message back. The supervisor's ``ack``/``dead_letter``/
  ``retry_later`` with such a *foreign* receipt therefore leaves a note with the delivery
  count it saw; the next lease of that message with the next delivery count applies it
  (drops it, or dead-letters it with the supervisor's reason) instead of handing it out.
  Receipts of the client's own earlier leases stay plain no-ops, as the contract says.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ...kv import KeyValue

PREFIX = "fate:"
REVOKED = b"revoked"
#: How long a note for a killed child's message waits for the message to come back (s).
NOTE_TTL = 3600.0


@dataclass(frozen=True, slots=True)
class Note:
    """A settlement made elsewhere: ``reason`` None means drop (it was acked)."""

    delivery_count: int
    reason: str | None
    detail: str


def revoke(kv: KeyValue, task_id: str, ttl: float) -> None:
    kv.set_value(f"{PREFIX}{task_id}", REVOKED, ttl)


def is_revoked(value: bytes | None) -> bool:
    return value == REVOKED


def leave_note(kv: KeyValue, message_id: str, note: Note) -> None:
    """Record ``note`` unless the message is revoked (that wins: the worker settles it)."""
    key = f"{PREFIX}{message_id}"
    if is_revoked(kv.get_value(key)):
        return
    value = {"count": note.delivery_count, "reason": note.reason, "detail": note.detail}
    kv.set_value(key, json.dumps(value).encode(), NOTE_TTL)


def note_of(value: bytes | None) -> Note | None:
    if value is None or is_revoked(value):
        return None
    try:
        data = json.loads(value)
        count, reason, detail = data["count"], data["reason"], data["detail"]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(count, int) or not isinstance(detail, str):
        return None
    return Note(count, reason if isinstance(reason, str) else None, detail)


def applies(note: Note, delivery_count: int) -> bool:
    """A note is for the delivery right after the one it saw (a retry with the same id
    starts again at 1 and is not affected)."""
    return delivery_count == note.delivery_count + 1


def forget(kv: KeyValue, message_id: str) -> None:
    kv.delete_value(f"{PREFIX}{message_id}")
