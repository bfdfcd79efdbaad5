"""The KeyValue protocol: small shared values, claims and join sets in a backend's storage.

Beat keeps its claims and progress, workers their registry entries (``app.kv``, on the broker's
server or file), and the canvas its group records, chord joins and run-once guards
(``app.results.kv``, beside the results). Every backend implements it once (``memory``,
``sqlite``, ``redis`` here; the Django ORM in ``conveyor.contrib.django.results``), and each
broker and result store hands out one instance over its own connections as ``kv``.

Promises every implementation keeps (tests/conformance/test_kv.py):

* ``claim`` is atomic across processes: of any number of concurrent claims of one key, exactly
  one returns True; the key can be claimed again once its ``ttl`` ran out.
* A value written without ``ttl`` never expires, even if an earlier write of it had one.
  Expired values are invisible to every read.
* ``join`` is an idempotent set-add: adding a member twice counts it once, and each call
  returns the set's size after its own add, so of N distinct joiners exactly one sees N.
  A join with a ``ttl`` renews the set's expiry; a set whose time ran out starts again empty.
* ``delete_value(key)`` deletes the value, claim and join set of ``key``.
* Keys are plain strings: ``values(prefix)`` matches the prefix literally (no globs).
* Two instances with different key prefixes never see each other's keys.

``values(prefix)`` is cheap for the prefixes in :data:`LISTED_PREFIXES`, the ones Conveyor
lists; for any other prefix it may have to look at every key of the storage (on Redis: a
``SCAN`` of the whole keyspace, where the queued messages are too).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

#: The key prefixes whose values Conveyor lists with ``values()``: the worker registry
#: (``conveyor.registry``), paused queues (``conveyor.control``), beat's switches and progress
#: (``conveyor.beat``) and the RabbitMQ broker's records of queues and delayed messages. A
#: backend that cannot find keys by prefix cheaply keeps an index of the keys under each (the
#: Redis one does; SQL backends use their primary key's index). None is a prefix of another.
LISTED_PREFIXES: tuple[str, ...] = (
    "worker:",
    "queue-paused:",
    "beat:enabled:",
    "beat:last:",
    "amqp-queue:",
    "amqp-delayed:",
)


class KeyValue(Protocol):
    """Small values (bytes), claims and join sets, safe to use from several threads."""

    def claim(self, key: str, ttl: float | None = None) -> bool:
        """Atomically create ``key`` if absent (expiring after ``ttl`` s); True if created."""
        ...

    def get_value(self, key: str) -> bytes | None:
        """The value of ``key`` (None if missing or expired)."""
        ...

    def get_values(self, keys: Sequence[str]) -> dict[str, bytes]:
        """The live values of ``keys`` in one round trip (missing or expired keys absent)."""
        ...

    def set_value(self, key: str, value: bytes, ttl: float | None = None) -> None:
        """Write ``value``, expiring after ``ttl`` s (None: never)."""
        ...

    def delete_value(self, key: str) -> None:
        """Delete ``key``'s value and join set (no error if missing)."""
        ...

    def join(self, key: str, member: str, ttl: float | None = None) -> int:
        """Add ``member`` to the set ``key`` (idempotently) and return the set's size."""
        ...

    def values(self, prefix: str) -> dict[str, bytes]:
        """Every live value whose key starts with ``prefix``."""
        ...
