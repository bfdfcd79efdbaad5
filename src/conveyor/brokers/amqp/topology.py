"""The exchanges and queues Conveyor declares on RabbitMQ, and how delayed messages move.

Names start with the key prefix ``P`` (``conveyor`` by default):

* ``P`` (direct exchange): ready messages, routing key = the Conveyor queue name; bound to
  ``P.q.<name>`` (the queue itself).
* ``P.q.<name>``: durable **quorum** queue (default) with ``x-delivery-limit`` =
  ``max_deliveries - 1 + SPURIOUS_MARGIN`` (a backstop: the lease dead-letters a message
  delivered more than ``max_deliveries`` times, :mod:`.attempts`) and dead-lettering to
  ``P.dlx``; or, with
  ``broker_transport_options={"queue_type": "classic"}``, a durable classic queue with
  ``x-max-priority: 9``.
* ``P.b.<name>``: the queue's **first-served lane**, of the same type and arguments, bound only
  to ``P``'s delayed exchange: delayed messages of the top priority (9) come due into it,
  and a lease takes the lanes of its queues before the queues. A quorum queue is FIFO (no
  priorities on RabbitMQ 3.10), so this is how a worker's put-back holding a booked token
  (``conveyor.limits.gate``) is served when due, not behind the queue's backlog.
* ``P.dlx`` (fanout) -> ``P.dead`` (durable classic): every dead letter of the prefix; and
  -> ``P.departures`` (durable classic): a copy of each, for the bookkeeping of those no
  worker settled (:mod:`conveyor.brokers.amqp.departures`).
* Delays, shared by every prefix of the vhost: ``LEVELS`` topic exchanges
  ``conveyor.delay.<k>`` and durable classic queues of the same name whose ``x-message-ttl`` is
  ``2**k`` ticks (:data:`TICK` s). A delayed message is published to
  ``conveyor.delay.<LEVELS-1>`` with routing key ``"<bit LEVELS-1>. ... .<bit 0>.<hex AMQP
  queue name>"``, its delay in ticks written in binary. At level ``k`` a ``1`` bit routes it
  into the level's queue, where it waits ``2**k`` ticks and is dead-lettered into level
  ``k-1``; a ``0`` bit passes it straight on (exchange-to-exchange binding). After level 0 it
  reaches ``conveyor.delayed`` (topic), where each queue is bound by its hex name. The waiting
  is done by RabbitMQ: a delayed message is never held by a worker, survives restarts (durable
  queues, persistent messages) and is never early: it spends exactly its ticks in TTL queues,
  each of which has one TTL, so expiry order is arrival order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import amqp

from .attempts import SPURIOUS_MARGIN

#: Resolution of delays (seconds); delays are rounded up to a whole number of ticks.
TICK = 0.01
#: Levels of delay queues: the longest delay is ``(2**LEVELS - 1) * TICK`` (about 497 days).
LEVELS = 32
MAX_DELAY = (2**LEVELS - 1) * TICK
#: Longest AMQP queue name (``P.q.<name>``; its hex form must fit in a 255-byte routing key).
MAX_QUEUE_NAME = (255 - 2 * LEVELS) // 2
#: The delay levels are shared by every key prefix of a vhost (declared once per server).
DELAY_PREFIX = "conveyor.delay"


@dataclass(frozen=True, slots=True)
class Names:
    """Exchange and queue names under one key prefix."""

    prefix: str

    @property
    def exchange(self) -> str:
        return self.prefix

    def queue(self, name: str) -> str:
        return f"{self.prefix}.q.{name}"

    def lane(self, name: str) -> str:
        """The first-served lane of Conveyor queue ``name`` (same length as its queue)."""
        return f"{self.prefix}.b.{name}"

    @property
    def dlx(self) -> str:
        return f"{self.prefix}.dlx"

    @property
    def dead(self) -> str:
        return f"{self.prefix}.dead"

    @property
    def departures(self) -> str:
        return f"{self.prefix}.departures"

    def delay(self, level: int) -> str:
        return f"{DELAY_PREFIX}.{level}"

    @property
    def delayed(self) -> str:
        return f"{DELAY_PREFIX}ed"


def check_queue_name(name: str, physical: str) -> None:
    if not name or len(physical.encode()) > MAX_QUEUE_NAME:
        raise ValueError(
            f"queue name {name!r} too long for RabbitMQ: '<key prefix>.q.<name>' must be "
            f"at most {MAX_QUEUE_NAME} bytes"
        )


def ticks(delay: float) -> int:
    """A delay in whole ticks, rounded up (never early)."""
    if delay > MAX_DELAY:
        raise ValueError(f"delays over {MAX_DELAY:.0f} s are not supported on RabbitMQ")
    return max(0, math.ceil(delay / TICK - 1e-9))


def delay_routing_key(n_ticks: int, physical: str) -> str:
    bits = ".".join("1" if n_ticks >> level & 1 else "0" for level in reversed(range(LEVELS)))
    return f"{bits}.{physical.encode().hex()}"


def _pattern(level: int, bit: str) -> str:
    return "*." * (LEVELS - 1 - level) + bit + ".#"


def target_pattern(physical: str) -> str:
    """Binding key of AMQP queue ``physical`` on the delayed exchange: exactly LEVELS bit
    words, then its name in hex (one word: no dots or wildcards)."""
    return "*." * LEVELS + physical.encode().hex()


class Topology:
    """Declares what one client uses, once per connection (``reset()`` after reconnecting)."""

    def __init__(self, names: Names, *, queue_type: str, max_deliveries: int) -> None:
        if queue_type not in ("quorum", "classic"):
            raise ValueError(f"queue_type must be 'quorum' or 'classic', not {queue_type!r}")
        self.names = names
        self.queue_type = queue_type
        self.max_deliveries = max_deliveries
        self._queues: set[str] = set()
        self._base = False
        self._delays = False

    def reset(self) -> None:
        self._queues.clear()
        self._base = self._delays = False

    def queue_arguments(self) -> dict[str, object]:
        args: dict[str, object] = {"x-dead-letter-exchange": self.names.dlx}
        if self.queue_type == "quorum":
            args["x-queue-type"] = "quorum"
            # a backstop: the lease dead-letters at max_deliveries (attempts.SPURIOUS_MARGIN)
            args["x-delivery-limit"] = max(0, self.max_deliveries - 1) + SPURIOUS_MARGIN
        else:
            args["x-max-priority"] = 9
        return args

    def base(self, channel: amqp.Channel) -> None:
        if self._base:
            return
        n = self.names
        channel.exchange_declare(n.exchange, "direct", durable=True, auto_delete=False)
        channel.exchange_declare(n.dlx, "fanout", durable=True, auto_delete=False)
        channel.exchange_declare(n.delayed, "topic", durable=True, auto_delete=False)
        channel.queue_declare(n.dead, durable=True, auto_delete=False)
        channel.queue_bind(n.dead, n.dlx, "")
        channel.queue_declare(n.departures, durable=True, auto_delete=False)
        channel.queue_bind(n.departures, n.dlx, "")
        self._base = True

    def queue(self, channel: amqp.Channel, name: str) -> str:
        """Declare Conveyor queue ``name`` and its lane (and the base topology); return the
        queue's AMQP name."""
        physical = self.names.queue(name)
        if name in self._queues:
            return physical
        check_queue_name(name, physical)
        self.base(channel)
        lane = self.names.lane(name)
        for declared in (physical, lane):
            channel.queue_declare(
                declared, durable=True, auto_delete=False, arguments=self.queue_arguments()
            )
            channel.queue_bind(declared, self.names.delayed, target_pattern(declared))
        channel.queue_bind(physical, self.names.exchange, name)
        self._queues.add(name)
        return physical

    def delays(self, channel: amqp.Channel) -> None:
        """Declare the delay levels (all of them: a message passes through every level)."""
        if self._delays:
            return
        self.base(channel)
        n = self.names
        probe = channel.connection.channel()
        try:
            probe.queue_declare(n.delay(LEVELS - 1), passive=True)
            probe.close()
            self._delays = True  # declared before (by any prefix on this vhost)
            return
        except amqp.exceptions.NotFound:
            pass  # the server closed the probe channel
        # nowait: ~130 declarations without waiting for each reply; the synchronous
        # declaration at the end returns after all of them (a channel works in order)
        for level in range(LEVELS):
            channel.exchange_declare(
                n.delay(level), "topic", durable=True, auto_delete=False, nowait=True
            )
        for level in range(LEVELS):
            after = n.delay(level - 1) if level else n.delayed
            channel.queue_declare(
                n.delay(level),
                durable=True,
                auto_delete=False,
                nowait=True,
                arguments={
                    "x-message-ttl": 2**level * round(TICK * 1000),
                    "x-dead-letter-exchange": after,
                },
            )
            channel.queue_bind(n.delay(level), n.delay(level), _pattern(level, "1"), nowait=True)
            channel.exchange_bind(after, n.delay(level), _pattern(level, "0"), nowait=True)
        channel.exchange_declare(n.delayed, "topic", durable=True, auto_delete=False)
        self._delays = True
