"""Embedded broker (``sqlite:///path.db``): zero setup, several processes on one host.

All messages live in one table. ``state`` says where a message is: ready (0), leased (1) or
delayed (2); ``due`` is the lease deadline of a leased message and the due time of a delayed
one. A partial index over ready rows in (queue, priority, seq) order makes a lease one short
index walk; two more partial indexes over ``due`` find expired leases and due delayed
messages. A due message is re-inserted at the end of its queue (FIFO by the time it became
ready). Every row carries the broker's ``key_prefix`` (``ns``), so apps can share a file.

Writes are short ``BEGIN IMMEDIATE`` transactions. A receipt is ``"seq:token"`` with a random
token per lease: a receipt whose lease was released or reclaimed matches no row, so a late
worker's ack, extend, release, retry or dead-letter does nothing.

Waiting consumers poll with a backoff (1 ms doubling up to ``poll_interval``), look with a
read-only query before taking the write lock, and are woken at once by publishes made through
the same broker object.

Transport options: ``busy_timeout`` (s, default 5), ``lock_timeout`` (s a write may wait for
the file lock in total, default 60), ``poll_interval`` (s, longest pause between polls while
waiting for work, default 0.025).

Modules: ``schema`` (tables and the statements of the hot path), ``rows`` (rows to objects,
receipts), ``broker`` (:class:`SQLiteBroker`: publish, lease and wait, ack, extend, release,
retry, dead-letter, revoke) and ``maintenance`` (sweep, stats, dead-letter queue, purge).
"""

from .broker import SQLiteBroker

__all__ = ["SQLiteBroker"]
