"""Owned locks: a value that names its holder, taken, handed over and released atomically.

Unique tasks (``conveyor.unique``) keep one such value per unique key: the id of the task
that holds it. The plain :class:`~conveyor.kv.KeyValue` ``claim`` only says whether the
caller won; a producer that lost must learn *who* holds the key (its result is the
caller's), and a worker may release the key only if its own task still holds it.

Every key/value store of a broker implements these (memory, SQLite, Redis, PostgreSQL);
each operation is one atomic step on the server (a write transaction, one statement, or
one Lua script on one key), so it holds for any number of producer threads and processes
(``tests/conformance/test_kv_locks.py``).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class Locks(Protocol):
    """Owned values with an expiry; an expired value counts as absent."""

    def put_new(self, key: str, value: bytes, ttl: float | None = None) -> bytes | None:
        """Store ``value`` if ``key`` has no live value and return None; else return the
        live value and change nothing."""
        ...

    def swap(self, key: str, expected: bytes, value: bytes, ttl: float | None = None) -> bool:
        """Replace the live value ``expected`` of ``key`` by ``value`` (new expiry);
        False (nothing changed) if the live value is another or there is none."""
        ...

    def delete_if(self, key: str, expected: bytes) -> bool:
        """Delete ``key`` if its live value is ``expected``; True if deleted."""
        ...
