"""What should happen to a message the next time it is leased, kept in the broker's ``kv``.

Two kinds, one key per message id (``fate:<id>``), read with the lease of the message while
any fate may be live (see *Announcements* below):

* **revoked** (``revoke(ids, ttl)``): the lease flags the delivery (``lease_checks_revoked``).
* **settled elsewhere**: a worker's supervisor settles the messages of a child it killed (hard
  time limit, terminate past its grace) or that died with messages it never started, with
  the child's receipts. On RabbitMQ a receipt only works on the connection that got the
  message, and that connection died with the child, so RabbitMQ has already put the message
  back (a quorum queue charged it a delivery). The supervisor's ``ack``/``dead_letter``/
  ``retry_later``/``release`` with such a *foreign* receipt therefore leaves a note with the
  delivery count it saw; the next lease of that message with the next delivery count applies
  it (drops it, dead-letters it with the supervisor's reason, or - a release - puts a copy
  back with the count it had, uncharged) instead of handing it out.
  Receipts of the client's own earlier leases stay plain no-ops, as the contract says.

**Announcements.** Most messages have no fate, and reading every leased message's key cost a
round trip per lease (a sixth of a worker child's CPU). So a writer, after writing a fate,
*announces* it: :data:`LIVE` is made to live at least as long as that fate (a compare-and-swap
loop, so concurrent writers never shorten it), and the writer then waits :data:`SETTLE`
before it returns. A lease (:class:`Watch`) reads the fates of what it took only while
:data:`LIVE` exists; a reading that found it absent is trusted for :data:`TRUST` seconds,
timed from *before* that reading was sent. A lease that starts after a writer returned
therefore either reads :data:`LIVE` afresh or trusts a reading sent at most :data:`TRUST`
earlier, which is after the announcement (``SETTLE > TRUST``): it reads the fate. A store
without compare-and-swap (:class:`~conveyor.kv.locks.Locks`) gets no announcements: leases
read every fate there. Fates written by a release before this one were not announced.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass

from ...kv import KeyValue
from ...kv.locks import Locks

PREFIX = "fate:"
REVOKED = b"revoked"
#: How long a note for a killed child's message waits for the message to come back (s).
NOTE_TTL = 3600.0
#: kv key (not under PREFIX) that exists while a fate may be live; its value is the
#: wall-clock time (a float's repr) the longest-lived announced fate expires.
LIVE = "fates-live"
#: How long a lease trusts a reading of LIVE that found it absent (s).
TRUST = 0.05
#: How long a writer waits after announcing (s): longer than TRUST (see the module doc).
SETTLE = TRUST + 0.02
#: LIVE outlives its fates by this much (s): writers' clocks may differ up to this.
CLOCK_MARGIN = 60.0
#: How long a lease trusts a reading that found LIVE present (s): it reads fates meanwhile,
#: so this only bounds how soon it notices that LIVE expired.
RECHECK_LIVE = 1.0


@dataclass(frozen=True, slots=True)
class Note:
    """A settlement made elsewhere: ``reason`` None means drop (it was acked), unless
    ``released``: given back uncharged."""

    delivery_count: int
    reason: str | None
    detail: str
    released: bool = False


def revoke(kv: KeyValue, task_ids: list[str], ttl: float) -> None:
    """Revoke ``task_ids`` for ``ttl`` seconds, announced: every lease that starts after
    this returned sees them."""
    for task_id in task_ids:
        kv.set_value(f"{PREFIX}{task_id}", REVOKED, ttl)
    if task_ids:
        announce(kv, ttl)


def announce(kv: KeyValue, ttl: float) -> None:
    """Make :data:`LIVE` exist for at least ``ttl`` more seconds (never less than it did),
    then wait :data:`SETTLE` (see the module doc). Call after writing the fate."""
    if not isinstance(kv, Locks):
        return  # leases read every fate on such a store
    until = time.time() + ttl + CLOCK_MARGIN
    value = repr(until).encode()
    keep = ttl + CLOCK_MARGIN
    while True:
        current = kv.put_new(LIVE, value, keep)
        if current is None:
            break
        try:
            theirs = float(current)
        except ValueError:
            theirs = 0.0  # not ours to read: replaced by a valid one
        if theirs >= until or kv.swap(LIVE, current, value, keep):
            break
    time.sleep(SETTLE)


class Watch:
    """Whether a lease must read the fates of the messages it took: while no fate is live,
    one read of :data:`LIVE` per :data:`TRUST` seconds instead of one per lease."""

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv
        self._always = not isinstance(kv, Locks)
        self._live = True
        self._until = 0.0  # time.monotonic() until which _live is trusted

    def needed(self) -> bool:
        if self._always:
            return True
        sent = time.monotonic()  # before the read: the reading is at least this recent
        if sent < self._until:
            return self._live
        live = self._kv.get_value(LIVE) is not None
        self._live, self._until = live, sent + (RECHECK_LIVE if live else TRUST)
        return live


def is_revoked(value: bytes | None) -> bool:
    return value == REVOKED


def leave_notes(kv: KeyValue, notes: Sequence[tuple[str, Note]]) -> None:
    """Record each (message id, note), except for revoked messages (that wins: the worker
    settles them); announced once for all."""
    left = False
    for message_id, note in notes:
        key = f"{PREFIX}{message_id}"
        if is_revoked(kv.get_value(key)):
            continue
        value: dict[str, object] = {
            "count": note.delivery_count,
            "reason": note.reason,
            "detail": note.detail,
        }
        if note.released:
            value["released"] = True
        kv.set_value(key, json.dumps(value).encode(), NOTE_TTL)
        left = True
    if left:
        announce(kv, NOTE_TTL)


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
    released = data.get("released") is True
    return Note(count, reason if isinstance(reason, str) else None, detail, released)


def applies(note: Note, delivery_count: int, *, kept: bool = False) -> bool:
    """A note is for the delivery right after the one it saw (a retry with the same id
    starts again at 1 and is not affected). With a count Conveyor kept (``kept``,
    :mod:`.attempts`), the one it saw may not have been charged: then its count again."""
    if kept:
        return note.delivery_count <= delivery_count <= note.delivery_count + 1
    return delivery_count == note.delivery_count + 1


def forget(kv: KeyValue, message_id: str) -> None:
    kv.delete_value(f"{PREFIX}{message_id}")
