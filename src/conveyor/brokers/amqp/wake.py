"""Prompt wake-ups for a blocked ``lease()`` without holding messages in worker memory.

Leasing uses ``basic.get`` (the message stays in RabbitMQ until it is leased, and a lease takes
exactly what it asked for). To wait without polling hard, each client has its own exclusive,
auto-delete queue ``P.wake.<uuid>`` (``x-max-length: 1``, so at most one notice waits), bound to
every queue it leases from: on ``P`` (ready publishes), ``P.delayed`` (delayed messages that
became due) and ``P.wake`` (releases). A waiting lease consumes from it on a connection of its
own; any notice means "poll again". Notices may be stale (another client took the message):
the poll then finds nothing and waits again. Exclusive queues are what RabbitMQ 4.x allows for
transient queues.
"""

from __future__ import annotations

import threading
import uuid

import amqp

from .connection import CONNECTION_ERRORS, Connector, close_quietly
from .topology import Names, target_pattern


class Wake:
    def __init__(self, connector: Connector, names: Names) -> None:
        self._connector = connector
        self._names = names
        self._lock = threading.Lock()
        self._connection: amqp.Connection | None = None
        self._channel: amqp.Channel | None = None
        self._queue = f"{names.prefix}.wake.{uuid.uuid4().hex}"
        self._bound: set[str] = set()
        self._noticed = False

    def _on_notice(self, message: amqp.Message) -> None:
        self._noticed = True

    def _open(self) -> amqp.Channel:
        if self._channel is not None:
            return self._channel
        connection = self._connector.open()
        try:
            channel = connection.channel()
            for exchange, kind in (
                (self._names.exchange, "direct"),
                (self._names.delayed, "topic"),
                (self._names.wake, "direct"),
            ):
                channel.exchange_declare(exchange, kind, durable=True, auto_delete=False)
            channel.queue_declare(
                self._queue,
                exclusive=True,
                auto_delete=True,
                arguments={"x-max-length": 1},
            )
            channel.basic_consume(self._queue, no_ack=True, callback=self._on_notice)
        except CONNECTION_ERRORS:
            close_quietly(connection)
            raise
        self._connection, self._channel = connection, channel
        self._bound.clear()
        return channel

    def forget(self) -> None:
        """In a forked child: a queue of its own, the parent's socket left alone."""
        self._lock = threading.Lock()
        self._connection = self._channel = None
        self._queue = f"{self._names.prefix}.wake.{uuid.uuid4().hex}"
        self._bound = set()

    def drop(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        close_quietly(connection)

    def wait(self, queues: list[str], timeout: float) -> None:
        """Return after a notice for one of ``queues`` or ``timeout`` seconds; errors and
        another thread already waiting only shorten the wait (the caller polls again)."""
        if not self._lock.acquire(timeout=timeout):
            return
        try:
            channel = self._open()
            n = self._names
            for queue in queues:
                if queue not in self._bound:
                    channel.queue_bind(self._queue, n.exchange, queue)
                    channel.queue_bind(self._queue, n.delayed, target_pattern(n.queue(queue)))
                    channel.queue_bind(self._queue, n.wake, queue)
                    self._bound.add(queue)
            self._noticed = False
            assert self._connection is not None
            self._connection.heartbeat_tick()
            self._connection.drain_events(timeout=timeout)
        except TimeoutError:
            return
        except CONNECTION_ERRORS:
            self.drop()
        finally:
            self._lock.release()

    def heartbeat(self) -> None:
        """Keep the idle wake-up connection alive (skipped while a lease waits on it)."""
        if not self._lock.acquire(blocking=False):
            return
        try:
            if self._connection is not None:
                self._connection.heartbeat_tick()
        except CONNECTION_ERRORS:
            self.drop()
        finally:
            self._lock.release()

    def bind_now(self, queues: list[str]) -> None:
        """Bind before the first poll, so a publish between poll and wait is noticed."""
        if all(q in self._bound for q in queues):
            return
        self.wait(queues, 0.0001)

    def close(self) -> None:
        with self._lock:
            self.drop()
