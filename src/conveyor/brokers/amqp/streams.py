"""Streams of the RabbitMQ broker (events, remote control), kept on its key/value server.

The RabbitMQ broker already needs a second server for key/value data (``kv_url``: the app's
result store, Redis, PostgreSQL or SQLite). Its streams live there too, as the streams of
that server's own broker (:mod:`conveyor.streams.redis`, ``.postgres`` or ``.sqlite``) under
the key prefix ``<key_prefix>.amqp``; ``broker_transport_options={'streams_url': ...}`` puts
them elsewhere. Why not RabbitMQ stream queues (``x-queue-type: stream``, 3.9+)?

* Their caps are ``x-max-length-bytes`` and ``x-max-age`` applied to whole segment files: no
  cap by entry count, and both caps are approximate by up to a segment.
* AMQP 0-9-1 has no end-of-stream signal: ``basic.get`` is refused on streams and a consumer
  cannot tell "no more entries" from "not delivered yet", so ``last()`` and a read that must
  return at once could only guess with a timeout.
* Remote control writes a reply stream per request; each stream queue is a replicated log
  with its own files on disk, too heavy to declare and delete per ``inspect`` call.

The price: events live on the key/value server rather than in RabbitMQ, and a key/value
server that keeps no streams (``django://``) needs ``streams_url``.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from ...exceptions import ConfigurationError
from ..base import Broker, BrokerOptions, redact_url

if TYPE_CHECKING:
    from ...results.base import ResultStore
    from ...streams import Streams

#: Transport option naming a Redis, PostgreSQL or SQLite URL to keep the streams on.
STREAMS_URL = "streams_url"


class KeptStreams:
    """Mixin of the RabbitMQ broker: ``streams`` of a broker on its key/value server, built
    on first use (a broker that nobody asks for events opens no connection for them)."""

    options: BrokerOptions
    _store: ResultStore
    _keeper: Broker | None = None
    _keeper_lock = threading.Lock()

    @property
    def streams(self) -> Streams:
        keeper = self._keeper
        if keeper is None:
            with self._keeper_lock:
                keeper = self._keeper
                if keeper is None:
                    keeper = self._keeper = self._make_keeper()
        return keeper.streams

    def _make_keeper(self) -> Broker:
        # Deferred: the brokers package imports the RabbitMQ broker, which imports this.
        from .. import _SCHEMES, AMQP_SCHEMES, create_broker, scheme_of

        url = self.options.transport_options.get(STREAMS_URL) or self._store.url
        if not isinstance(url, str) or scheme_of(url) in AMQP_SCHEMES:
            raise ConfigurationError(
                f"broker_transport_options {STREAMS_URL!r} must be a Redis, PostgreSQL or "
                f"SQLite URL, got {redact_url(str(url))!r}"
            )
        if scheme_of(url) not in _SCHEMES:
            raise NotImplementedError(
                "the RabbitMQ broker keeps its streams (events and remote control: conveyor "
                f"events / inspect / control) on its key/value server, and {redact_url(url)} "
                f"keeps none: set broker_transport_options={{{STREAMS_URL!r}: "
                "'redis://...'}} (or a PostgreSQL or SQLite URL)"
            )
        return create_broker(url, BrokerOptions(key_prefix=f"{self.options.key_prefix}.amqp"))

    def close_kv(self) -> None:
        """Close the connections to the key/value server: the store's and the streams'."""
        self._store.close()
        keeper, self._keeper = self._keeper, None
        if keeper is not None:
            keeper.close()
