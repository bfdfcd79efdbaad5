"""RabbitMQ broker (``amqp://``, ``amqps://``, ``pyamqp://``) on py-amqp.

How each promise is kept (docs/rabbitmq.md has the long form):

* at-least-once: ``lease()`` takes messages RabbitMQ pushed to its consumers (:mod:`.pushed`;
  ``basic.get`` for a lease that does not wait) and acks them only in ``ack()``, after the
  task finished; a dead client's unacked messages go back to the queue when its connection
  closes, and an expired lease of a live one through :mod:`.leases`;
* every publish waits for publisher confirms (:mod:`.session`) and raises if one is missing;
* durable quorum queues with ``x-delivery-limit`` and a dead-letter exchange (:mod:`.topology`);
  the count of a delivery that may end its process is kept in ``kv`` (:mod:`.attempts`);
* delays live in RabbitMQ's TTL queues (:mod:`.topology`), never in a worker;
* RabbitMQ holds no key/value data: revocations, beat claims, the worker registry and publish
  dedupe across processes use ``kv``, built from ``kv_url`` (transport option or URL
  parameter; the app passes its result store's URL by default); streams too (:mod:`.streams`).

Modules of one concept each: :mod:`.core` (state, publishing), :mod:`.holding` (leases),
:mod:`.settling` (acks, put-backs, dead letters, revocations), :mod:`.admin` (stats, DLQ,
purge, departures).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Sequence

import amqp

from ...exceptions import BrokerError
from ..base import Delivery
from . import attempts
from .admin import Admin
from .core import QUEUE_KEY
from .settling import Settling

__all__ = ["QUEUE_KEY", "AMQPBroker"]

#: How long ``close()`` waits for a pass of the lease reaper under way (seconds).
REAPER_JOIN = 10.0


class AMQPBroker(Admin, Settling):
    schemes = ("amqp", "amqps", "pyamqp")
    lease_checks_revoked = True
    delays_by_local_clock = True  # _routes times delays by time.time()
    leases_end_with_connection = True

    def time(self) -> float:
        return time.time()

    def give_back_unleased(self) -> None:
        """Stop consuming and give back what was pushed and not leased (copies with the
        deliveries so far, see :mod:`.pushed`); the next lease consumes again. Then one round
        trip on the work channel: RabbitMQ handles a channel's frames in order, so once it
        answers, every ack sent before has been applied. Without it, acks written just
        before the process dies may be lost with the connection (a socket closed with unread
        data is reset, and the server may drop what it had not read yet): a message given
        back would then run twice, a finished task again."""
        with self._session.lock:
            if not self._session.connected:
                return
            self._stop_consuming("give back")
            self._session.run(self._round_trip, "give back")

    def record_attempts(self, deliveries: Sequence[Delivery]) -> None:
        """Keep the counts of ``deliveries`` (this client's leases) in the kv store before
        they run: RabbitMQ's own count may include returns that were no failed run
        (:mod:`.attempts`)."""
        held = self._leases.find(d.receipt for d in deliveries)
        attempts.record(self.kv, [(h.message_id, h) for h in held])

    @staticmethod
    def _round_trip(channel: amqp.Channel) -> None:
        # basic.qos is synchronous and harmless: every consumer is started after its own.
        channel.basic_qos(0, 1, False)

    def close(self) -> None:
        if self._reaper is not None:
            # Wait out a pass under way: it would open a new connection after the drop below,
            # left for the garbage collector (an unclosed socket).
            self._reaper.stop()
            if self._reaper is not threading.current_thread():
                self._reaper.join(REAPER_JOIN)
            self._reaper = None
        with contextlib.suppress(BrokerError), self._session.lock:
            self._stop_consuming("close")
        self._session.drop()
        self.close_kv()
