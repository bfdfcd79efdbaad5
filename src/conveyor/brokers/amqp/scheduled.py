"""What RabbitMQ can do with its delayed messages, for the dashboard.

A delayed message travels through shared TTL queues (:mod:`.topology`), which can only be read
from their head: a message in them cannot be found, moved or deleted without taking every
message before it. So:

* **list**: yes, from the marker the broker keeps per delayed message in its ``kv`` (for
  ``stats()``), which also records the id, queue, priority and due time - not the body, which
  only RabbitMQ holds;
* **cancel**: yes, by revoking the id until it falls due: the worker that leases it then drops
  it (REVOKED), as ``lease_checks_revoked`` promises; the marker goes at once;
* **run now**: yes, by publishing a copy at once and dropping the TTL copy when it arrives
  (:mod:`.run_now`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from ..base import Message, Scheduled

if TYPE_CHECKING:
    from ...kv import KeyValue

#: kv keys ``<this><queue>:<id>`` of delayed messages, expiring when due.
DELAYED_KEY = "amqp-delayed:"
#: A cancelled message stays revoked this long after it falls due (it may be leased late).
REVOKED_AFTER_DUE = 86400.0


def marker(message: Message, due: float) -> bytes:
    """The value of a delayed message's marker."""
    return json.dumps(
        {"id": message.id, "q": message.queue, "p": message.priority, "due": due}
    ).encode()


class DelayedMarkers:
    """The delayed-message methods of :class:`~.broker.AMQPBroker` (a mixin)."""

    kv: KeyValue

    if TYPE_CHECKING:

        def revoke(self, ids: Iterable[str], ttl: float) -> None: ...

    def _markers(self, queue: str | None) -> list[tuple[str, Scheduled]]:
        prefix = DELAYED_KEY + (f"{queue}:" if queue is not None else "")
        found = []
        for key, raw in self.kv.values(prefix).items():
            try:
                data = json.loads(raw)
                item = Scheduled(
                    str(data["id"]), str(data["q"]), b"", int(data["p"]), float(data["due"])
                )
            except (ValueError, KeyError, TypeError):
                continue  # written by an older version (no details), or damaged
            if queue is None or item.queue == queue:
                found.append((key, item))
        found.sort(key=lambda pair: (pair[1].due, pair[1].id))
        return found

    def scheduled(self, limit: int = 100, queue: str | None = None) -> list[Scheduled]:
        """Delayed messages from their markers, soonest first (bodies stay in RabbitMQ)."""
        return [item for _, item in self._markers(queue)[: max(limit, 0)]]

    def cancel_scheduled(self, ids: Sequence[str]) -> int:
        """Revoke the delayed messages ``ids`` until after they fall due (a worker drops
        them then) and forget their markers; return how many were delayed."""
        wanted = set(ids)
        now = time.time()
        found = [(key, item) for key, item in self._markers(None) if item.id in wanted]
        for key, item in found:
            self.revoke([item.id], max(item.due - now, 0.0) + REVOKED_AFTER_DUE)
            self.kv.delete_value(key)
        return len(found)
