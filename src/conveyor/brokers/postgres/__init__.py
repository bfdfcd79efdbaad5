"""PostgreSQL broker (``postgresql://user:pw@host/db?schema=conveyor``): one database to run
and back up, and tasks enqueued inside the application's own transaction.

All messages live in one table in the schema (``conveyor`` unless ``?schema=`` or the
``schema`` transport option says otherwise). ``state`` says where a message is: ready (0),
leased (1) or delayed (2); ``due`` is the lease deadline of a leased message and the due time
of a delayed one, both on the database clock (``now()``). Partial indexes over ready rows in
(queue, priority, seq) order, over leases and over delayed rows keep each operation a short
index walk. A lease is one ``UPDATE ... FROM (SELECT ... FOR UPDATE SKIP LOCKED LIMIT n)``:
concurrent consumers skip each other's rows instead of waiting. A receipt is ``"seq:token"``
with a random token per lease, so a late worker's ack, extend, release, retry or dead-letter
matches no row and does nothing. Acked messages are deleted (no finished rows pile up).

An insert trigger sends ``NOTIFY <schema>_messages`` with the queue name; idle consumers
LISTEN on one connection per process and look again at least every ``poll_interval``
(default 1 s) and at the next due time. A NOTIFY is delivered at commit, so a message enqueued
inside an application's transaction wakes workers exactly when it becomes visible.

Transport options (or URL query parameters): ``schema``, ``poll_interval`` (s), ``listen``
(false behind a transaction-mode pooler that cannot hold LISTEN: consumers then poll),
``migrate`` (false: never create or upgrade tables, ``conveyor migrate`` does it),
``pool_size`` (connections per process, default 4).

Modules: ``schema`` (tables by version), ``statements`` (the SQL), ``rows`` (rows to objects,
receipts), ``arrays`` (binary publish arrays), and :class:`PostgresBroker` (``broker``) put
together from ``core`` (state, shared helpers), ``publish``, ``lease``, ``maintenance`` and
``inspection``.
"""

from .broker import PostgresBroker

__all__ = ["PostgresBroker"]
