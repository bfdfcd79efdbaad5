"""RabbitMQ broker (``amqp://``, ``amqps://``, ``pyamqp://``) on py-amqp.

How each promise is kept (docs/rabbitmq.md has the long form):

* at-least-once: ``lease()`` takes messages RabbitMQ pushed to its consumers (:mod:`.pushed`;
  ``basic.get`` for a lease that does not wait) and acks them only in ``ack()``, after the
  task finished; a dead client's unacked messages go back to the queue when its connection
  closes, and an expired lease of a live one through :mod:`.leases`;
* every publish waits for publisher confirms (:mod:`.session`) and raises if one is missing;
* durable quorum queues with ``x-delivery-limit`` and a dead-letter exchange (:mod:`.topology`);
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
import time

from ...exceptions import BrokerError
from .admin import Admin
from .core import QUEUE_KEY
from .settling import Settling

__all__ = ["QUEUE_KEY", "AMQPBroker"]


class AMQPBroker(Admin, Settling):
    schemes = ("amqp", "amqps", "pyamqp")
    lease_checks_revoked = True
    delays_by_local_clock = True  # _routes times delays by time.time()

    def time(self) -> float:
        return time.time()

    def give_back_unleased(self) -> None:
        """Stop consuming and give back what was pushed and not leased (copies with the
        deliveries so far, see :mod:`.pushed`); the next lease consumes again."""
        with self._session.lock:
            if self._session.connected and self._pushed.generation == self._session.generation:
                self._session.run(lambda ch: self._stop_pushed(ch, None), "give back")

    def close(self) -> None:
        if self._reaper is not None:
            self._reaper.stop()
            self._reaper = None
        with contextlib.suppress(BrokerError), self._session.lock:
            if self._session.connected and self._pushed.generation == self._session.generation:
                self._session.run(lambda ch: self._stop_pushed(ch, None), "close")
        self._session.drop()
        self.close_kv()
