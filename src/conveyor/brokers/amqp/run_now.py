"""Run a delayed message now on RabbitMQ (``Broker.run_scheduled``).

A delayed message waits in the shared TTL queues (:mod:`.topology`), which cannot be searched
or edited, so it is not moved: it is **superseded**.

* Publishing a delayed message also writes its body to the ``kv`` beside its marker
  (:mod:`.scheduled`), expiring when due, and gives the AMQP message a header
  :data:`TOKEN` with a random token kept with that body.
* ``run_scheduled`` publishes a copy (same id, body and priority, no token) to the queue at
  once, and records ``<SUPERSEDED><id>`` = that token; the marker and body go.
* When the TTL copy reaches its queue and is leased, the lease reads that key with the
  message's fate (the same round trip, only for messages with a token); if it names the
  message's token, the TTL copy is acked unseen and the key deleted. A later message with the
  same id (a retry) has another token and runs.

So the message runs once. Races: the TTL copy is never early and the marker expires when it
is due, so a message due in less than :data:`MARGIN` seconds is left to run on time (run
now counts it as not moved); two clients running the same message claim it first
(``kv.claim``: one wins) with a claim that expires before the message is due, so a client that
dies between claiming and publishing leaves the message to run on time. If the client fails
after publishing the copy but before recording the token, the message runs twice (at least
once, as everywhere). A record whose TTL copy never comes (its queue was deleted) expires
:data:`~.scheduled.REVOKED_AFTER_DUE` after the due time; nothing else is left behind.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import amqp

from ..base import Message, Scheduled
from .convert import header_view, headers_of
from .scheduled import REVOKED_AFTER_DUE

if TYPE_CHECKING:
    from ...kv import KeyValue

#: Header of a delayed message's token (not ``x-``: copies keep it, see ``copy_of``).
TOKEN = "conveyor-delay-token"
#: kv keys ``<this><queue>:<id>``: a delayed message's token and body, expiring when due.
BODY_KEY = "amqp-delayed-body:"
#: kv keys ``<this><id>``: the token of a TTL copy superseded by run now.
SUPERSEDED = "amqp-superseded:"
#: kv claims ``<this><id>``: a client is running the delayed message now.
CLAIM = "amqp-run-now:"
#: Seconds before its due time after which a delayed message is left to run on time.
MARGIN = 5.0
_TOKEN_LENGTH = 32


def body_key(queue: str, message_id: str) -> str:
    return f"{BODY_KEY}{queue}:{message_id}"


def keep(kv: KeyValue, message: Message, msg: amqp.Message, ttl: float) -> None:
    """Give the delayed ``msg`` a token and keep its body with it for ``ttl`` seconds."""
    token = uuid.uuid4().hex
    headers = headers_of(msg)
    headers[TOKEN] = token
    msg.properties["application_headers"] = headers
    kv.set_value(body_key(message.queue, message.id), token.encode() + message.body, ttl)


def token_of(msg: amqp.Message) -> str | None:
    """The token of a delayed message that came through the TTL queues, or None."""
    token = header_view(msg).get(TOKEN)
    return token if isinstance(token, str) and len(token) == _TOKEN_LENGTH else None


def superseded(msg: amqp.Message, record: bytes | None) -> bool:
    """Whether ``msg`` is a TTL copy that run now replaced (``record``: its SUPERSEDED key)."""
    token = token_of(msg)
    return token is not None and record == token.encode()


class RunNow:
    """``run_scheduled`` of :class:`~.broker.AMQPBroker` (a mixin)."""

    kv: KeyValue

    if TYPE_CHECKING:
        _markers: Callable[[str | None], list[tuple[str, Scheduled]]]

        def _send(self, messages: Sequence[Message], what: str = "publish") -> None: ...

    def run_scheduled(self, ids: Sequence[str]) -> int:
        """Publish the delayed messages ``ids`` now, each once; their copies in the TTL
        queues are dropped when they arrive. Returns how many were made ready."""
        wanted = set(ids)
        moved = 0
        for key, item in self._markers(None):
            if item.id not in wanted:
                continue
            left = item.due - time.time()
            record = self.kv.get_value(body_key(item.queue, item.id))
            if left < MARGIN or record is None or len(record) < _TOKEN_LENGTH:
                continue  # due about now, or delayed by a version that kept no body
            token, body = record[:_TOKEN_LENGTH], record[_TOKEN_LENGTH:]
            claim = f"{CLAIM}{item.id}"
            if not self.kv.claim(claim, left - MARGIN / 2):
                continue  # another client runs it
            try:
                self._send([Message(item.id, item.queue, body, item.priority)], "run now")
            except BaseException:
                self.kv.delete_value(claim)
                raise
            self.kv.set_value(f"{SUPERSEDED}{item.id}", token, left + REVOKED_AFTER_DUE)
            self.kv.delete_value(key)
            self.kv.delete_value(body_key(item.queue, item.id))
            moved += 1
        return moved
