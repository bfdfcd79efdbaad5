"""Publishing on PostgreSQL: one statement per batch (binary arrays), also inside a caller's
transaction (``publish_on``: transactional enqueue)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..base import PUBLISH_DEDUPE_WINDOW, Message, clamp_priority
from . import statements as sql
from .arrays import bytea_array, float8_array, int2_array, sends_binary, text_array, use_arrays
from .core import Params, PostgresCore

if TYPE_CHECKING:
    from ..._postgres import AsyncConn, Conn


class Publishing(PostgresCore):
    """Publish, in a statement of its own or in the caller's transaction."""

    def publish(self, messages: Sequence[Message]) -> None:
        if not messages:
            return
        with self.db.connection() as conn:
            conn.execute(self.q(sql.PUBLISH), self.publish_params(messages, conn))
        self._wake()

    def publish_params(self, messages: Sequence[Message], conn: Conn | AsyncConn) -> Params:
        """The parameters of the publish statement on ``conn`` (the first message of an id
        wins), as binary arrays built in one pass each (see :mod:`.arrays`), or as lists on
        a connection that binds parameters on the client (a caller's, e.g. Django's)."""
        ids = [m.id for m in messages]
        if len(set(ids)) < len(ids):
            first: dict[str, Message] = {}
            for message in messages:
                first.setdefault(message.id, message)
            messages = list(first.values())
            ids = list(first)
        if not sends_binary(conn):
            return {
                "ns": self.ns,
                "window": PUBLISH_DEDUPE_WINDOW,
                "ids": ids,
                "queues": [m.queue for m in messages],
                "priorities": [clamp_priority(m.priority) for m in messages],
                "bodies": [m.body for m in messages],
                "countdowns": [float(m.countdown) for m in messages],
                "etas": [None if m.eta is None else float(m.eta) for m in messages],
            }
        use_arrays(conn)
        encoding = conn.info.encoding
        return {
            "ns": self.ns,
            "window": PUBLISH_DEDUPE_WINDOW,
            "ids": text_array(ids, encoding),
            "queues": text_array([m.queue for m in messages], encoding),
            "priorities": int2_array([clamp_priority(m.priority) for m in messages]),
            "bodies": bytea_array([m.body for m in messages]),
            "countdowns": float8_array([float(m.countdown) for m in messages]),
            "etas": float8_array([None if m.eta is None else float(m.eta) for m in messages]),
        }

    def publish_on(self, conn: Conn, messages: Sequence[Message]) -> None:
        """Insert ``messages`` with the caller's connection, inside whatever transaction it
        has open (transactional enqueue): they become visible, and wake consumers, when
        that transaction commits, and vanish if it rolls back. The tables must exist."""
        if messages:
            conn.execute(self.q(sql.PUBLISH), self.publish_params(messages, conn))

    async def apublish_on(self, conn: AsyncConn, messages: Sequence[Message]) -> None:
        """:meth:`publish_on` on an async connection (awaited on it, not in a thread)."""
        if messages:
            await conn.execute(self.q(sql.PUBLISH), self.publish_params(messages, conn))
