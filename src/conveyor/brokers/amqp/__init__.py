"""RabbitMQ broker: ``amqp://``, ``amqps://`` and ``pyamqp://`` URLs (needs the ``amqp`` extra).

Modules: :mod:`.connection` (URLs, connecting, errors), :mod:`.session` (the shared connection,
channels and publisher confirms), :mod:`.topology` (exchanges, queues, delay levels),
:mod:`.convert` (messages to AMQP and back), :mod:`.leases` (lease deadlines of held
messages), :mod:`.wake` (prompt wake-ups of a blocked lease), :mod:`.deadletters` (DLQ
browsing), :mod:`.broker` (the Broker).
"""

from .broker import AMQPBroker

__all__ = ["AMQPBroker"]
