"""RabbitMQ broker: ``amqp://``, ``amqps://`` and ``pyamqp://`` URLs (needs the ``amqp`` extra).

Modules: :mod:`.connection` (URLs, connecting, errors), :mod:`.session` (the shared connection,
channels and publisher confirms), :mod:`.frames` (reading frames in chunks), :mod:`.topology`
(exchanges, queues, delay levels), :mod:`.convert` (messages to AMQP and back),
:mod:`.pushed` (consumers of a blocking lease and what they pushed), :mod:`.leases` (lease
deadlines of held messages), :mod:`.fates` (revocations and supervisors' notes),
:mod:`.deadletters` (DLQ browsing); the Broker in :mod:`.broker`, composed of :mod:`.core`
(state, publishing), :mod:`.holding` (leasing), :mod:`.settling` (acks, put-backs, dead
letters, revocations) and :mod:`.admin` (stats, DLQ, purge, departures).
"""

from .broker import AMQPBroker

__all__ = ["AMQPBroker"]
