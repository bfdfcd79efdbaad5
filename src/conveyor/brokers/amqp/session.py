"""One AMQP connection with its two channels, shared by a broker's threads under one lock.

py-amqp connections (like pika's) are not thread-safe, so every use holds :attr:`Session.lock`;
nothing blocks while holding it except a bounded wait for publisher confirms: a lease waiting
for pushed messages waits for the socket to become readable *without* the lock (:meth:`wait`),
then reads what arrived under it (:meth:`pump`). The *work* channel leases (``basic.consume``,
``basic.get``) and settles (``basic.ack``/``nack``) — acks must go on the channel that received
the message; they go through :attr:`Session.settled` (a run of them in one frame). The
*publish* channel is in confirm mode: :meth:`publish` sends a batch and waits until RabbitMQ
confirmed every message (persisted, or replicated by the quorum); a nack, a return
(unroutable) or a timeout raises ``BrokerError``.

A connection error raises one ``BrokerError`` and drops the connection; the next call opens a
new one and bumps :attr:`generation`, so receipts of the old connection (whose unacked messages
RabbitMQ has already put back) are recognised as stale.
"""

from __future__ import annotations

import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import amqp

from ...exceptions import BrokerError
from .acks import Settled
from .connection import CONNECTION_ERRORS, Connector, close_quietly
from .frames import frame_buffered, read_ahead
from .topology import Topology

T = TypeVar("T")
#: How long publish() waits for RabbitMQ's confirms (seconds).
CONFIRM_TIMEOUT = 30.0
#: Longest wait for the rest of a frame whose start has arrived (seconds).
FRAME_WAIT = 0.05


def _readable(sock: socket.socket, timeout: float) -> bool:
    """Whether ``sock`` has data (decrypted TLS data pending counts), waiting up to
    ``timeout`` seconds."""
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return True
    return bool(select.select([sock], [], [], timeout)[0])


class Session:
    def __init__(self, connector: Connector, topology: Topology) -> None:
        self.connector = connector
        self.topology = topology
        self.lock = threading.RLock()
        self.generation = 0
        self._connection: amqp.Connection | None = None
        self._work: amqp.Channel | None = None
        self._publish: amqp.Channel | None = None
        self._next_tag = 1
        self._confirmed = 0  # every tag <= this one was acked
        self._acked: set[int] = set()
        self._failed: list[str] = []
        #: The work channel's settled delivery tags (acks in runs: :mod:`.acks`).
        self.settled = Settled()

    # -- connection ----------------------------------------------------------------------
    def _open(self) -> tuple[amqp.Channel, amqp.Channel]:
        if self._work is not None and self._publish is not None:
            return self._work, self._publish
        connection = self.connector.open()
        read_ahead(connection)
        try:
            work = connection.channel()
            publish = connection.channel()
            publish.confirm_select()
        except CONNECTION_ERRORS:
            close_quietly(connection)
            raise
        publish.events["basic_ack"].add(self._on_ack)
        publish.events["basic_nack"].add(self._on_nack)
        publish.events["basic_return"].add(self._on_return)
        self._connection, self._work, self._publish = connection, work, publish
        self._next_tag, self._confirmed = 1, 0
        self._acked.clear()
        self._failed.clear()
        self.settled = Settled()
        self.generation += 1
        self.topology.reset()
        # the shared delay levels, before the first publish needs them (0.3-0.5 s once
        # per vhost; a passive check afterwards) so a first countdown is not eaten by it
        self.topology.delays(work)
        return work, publish

    def forget(self) -> None:
        """In a forked child: drop the parent's connection without touching its socket."""
        self.lock = threading.RLock()
        self._connection = self._work = self._publish = None

    def drop(self) -> None:
        """Forget the connection (after an error or on close)."""
        with self.lock:
            connection, self._connection = self._connection, None
            self._work = self._publish = None
            close_quietly(connection)

    def run(self, action: Callable[[amqp.Channel], T], what: str) -> T:
        """``action(work_channel)`` under the lock; a connection error drops the connection
        and raises BrokerError."""
        with self.lock:
            try:
                work, _ = self._open()
                return action(work)
            except BrokerError:
                self.drop()
                raise
            except CONNECTION_ERRORS as exc:
                self.drop()
                raise self.connector.error(f"{what} failed ({type(exc).__name__}: {exc})") from None

    def heartbeat(self) -> None:
        """Send or check AMQP heartbeats (py-amqp does not on its own); called often."""
        with self.lock:
            if self._connection is None:
                return
            try:
                self._connection.heartbeat_tick()
            except CONNECTION_ERRORS as exc:
                self.drop()
                raise self.connector.error(f"heartbeat failed ({exc})") from None

    @property
    def connected(self) -> bool:
        return self._connection is not None

    def pump(self) -> None:
        """Dispatch the frames already received, without waiting for more (lock held by the
        caller; connection errors are the caller's, as in :meth:`run`). One frame at a time,
        only while the socket has data: a frame cut short by a stalled server times out after
        :data:`FRAME_WAIT` (py-amqp would spin on a non-blocking socket)."""
        connection = self._connection
        if connection is None:
            return
        sock = connection.sock
        while sock is not None:
            if frame_buffered(connection):
                connection.blocking_read(None)  # served from the buffer (see .frames)
                continue
            if not _readable(sock, 0):
                return
            try:
                connection.blocking_read(FRAME_WAIT)
            except TimeoutError:  # the rest of a frame is late: kept for the next read
                return

    def quiet(self, interval: float, most: float, done: Callable[[], bool] | None = None) -> None:
        """Read what arrives until nothing did for ``interval`` seconds, or ``done()`` (at
        most ``most``; lock held by the caller)."""
        connection = self._connection
        sock = connection.sock if connection is not None else None
        deadline = time.monotonic() + most
        while sock is not None and (remaining := deadline - time.monotonic()) > 0:
            if done is not None and done():
                return
            if not frame_buffered(connection) and not _readable(sock, min(interval, remaining)):
                return
            self.pump()

    def wait(self, timeout: float) -> None:
        """Return when the connection has data to read, or after ``timeout`` seconds; the
        lock is not held meanwhile (another thread may read it first: callers re-check)."""
        with self.lock:
            connection = self._connection
            sock = connection.sock if connection is not None else None
            if sock is None or frame_buffered(connection):
                return
        try:
            _readable(sock, timeout)
        except (OSError, ValueError):  # closed meanwhile: the next call reconnects
            return

    def connection(self) -> amqp.Connection:
        """The open connection (lock held by the caller)."""
        self._open()
        assert self._connection is not None
        return self._connection

    # -- publishing with confirms --------------------------------------------------------
    def _on_ack(self, delivery_tag: int, multiple: bool) -> None:
        if multiple:
            self._confirmed = max(self._confirmed, delivery_tag)
        else:
            self._acked.add(delivery_tag)
        while self._confirmed + 1 in self._acked:
            self._confirmed += 1
            self._acked.discard(self._confirmed)

    def _on_nack(self, delivery_tag: int, multiple: bool) -> None:
        self._failed.append(f"RabbitMQ refused message {delivery_tag} (nack)")
        self._on_ack(delivery_tag, multiple)

    def _on_return(
        self, exc: Exception, exchange: str, routing_key: str, message: amqp.Message
    ) -> None:
        self._failed.append(f"unroutable: {exchange!r} / {routing_key!r} ({exc})")

    def publish(self, batch: Sequence[tuple[str, str, amqp.Message]], what: str) -> None:
        """Publish ``(exchange, routing_key, message)`` items and wait for every confirm."""
        if not batch:
            return
        with self.lock:
            try:
                _, channel = self._open()
                self._failed.clear()
                for exchange, routing_key, message in batch:
                    channel.basic_publish(message, exchange, routing_key, mandatory=True)
                    self._next_tag += 1
                self._wait_confirms(self._next_tag - 1, what)
            except BrokerError:
                self.drop()
                raise
            except CONNECTION_ERRORS as exc:
                self.drop()
                raise self.connector.error(
                    f"{what}: not confirmed ({type(exc).__name__}: {exc})"
                ) from None
            if self._failed:
                failed = "; ".join(self._failed)
                self._failed.clear()
                raise self.connector.error(f"{what}: {failed}")

    def _wait_confirms(self, last: int, what: str) -> None:
        deadline = time.monotonic() + CONFIRM_TIMEOUT
        connection = self.connection()
        while self._confirmed < last:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self.connector.error(f"{what}: no publisher confirm in time")
            try:
                connection.drain_events(timeout=min(remaining, 1.0))
            except TimeoutError:  # one slice of the wait passed
                continue
