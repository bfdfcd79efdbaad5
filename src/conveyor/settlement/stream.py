"""A bulk publish sent while it is being built (:class:`BulkStream`): the messages of a large
``send_many`` go to the broker chunk by chunk while the next chunk is encoded. On PostgreSQL
(:class:`PublishStream`) they go inside one transaction; Redis stages them
(``conveyor.brokers.redis.staging``).

On two cores the producer's encoding and the database's inserts then overlap instead of
taking turns. All-or-nothing holds: nothing is visible before the commit, which comes after
the last message was encoded; a bad argument anywhere rolls the transaction back. A sender
thread owns the transaction (psycopg releases the GIL while it waits for the server).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Protocol

from ..brokers.base import Message
from ..results.base import ResultRecord

if TYPE_CHECKING:
    from .._postgres import Conn

#: Messages per statement of a streamed publish.
CHUNK = 1000

type Chunk = tuple[Sequence[Message], Sequence[ResultRecord]]


class BulkStream(Protocol):
    """What ``send_many`` hands the chunks of a large batch to (``Settlement.open_stream``).
    All-or-nothing: none of it is visible before :meth:`finish`."""

    def add(self, messages: Sequence[Message], records: Sequence[ResultRecord]) -> None:
        """Send a chunk (and its QUEUED records, stored before any message is visible)."""

    def finish(self) -> BaseException | None:
        """Make it all visible; the error that stopped it (nothing, or everything, landed:
        a lost connection is retried by publishing it all again), or None."""

    def abort(self) -> None:
        """Drop everything sent (a later message could not be encoded)."""


class _Abort(Exception):
    """Raised in the sender to roll the transaction back."""


class PublishStream:
    """Publishes chunks on one connection in one transaction, in a thread of its own.

    ``send(conn, messages, records)`` writes one chunk on the transaction's connection;
    ``before_commit()`` runs last, before the commit (records kept elsewhere go there: they
    must be stored before any message is visible, and only if all of them will be).
    """

    def __init__(
        self,
        connection: Callable[[], AbstractContextManager[Conn]],
        send: Callable[[Conn, Sequence[Message], Sequence[ResultRecord]], None],
        before_commit: Callable[[], None],
        done: Callable[[], None],
    ) -> None:
        self._connection = connection
        self._send = send
        self._before_commit = before_commit
        self._done = done
        self._chunks: queue.SimpleQueue[Chunk | bool] = queue.SimpleQueue()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="conveyor-publish", daemon=True)
        self._thread.start()

    def add(self, messages: Sequence[Message], records: Sequence[ResultRecord]) -> None:
        """Queue a chunk (ignored once the stream failed: :meth:`finish` says so)."""
        if self.error is None:
            self._chunks.put((messages, records))

    def finish(self) -> BaseException | None:
        """Commit; returns the error that stopped the stream (nothing was committed), or
        None. A lost reply to the commit itself shows as an error too (it may have landed)."""
        self._chunks.put(True)
        self._thread.join()
        return self.error

    def abort(self) -> None:
        """Roll back everything sent."""
        self._chunks.put(False)
        self._thread.join()

    def _run(self) -> None:
        try:
            with self._connection() as conn, conn.transaction():
                while True:
                    item = self._chunks.get()
                    if item is False:
                        raise _Abort
                    if item is True:
                        self._before_commit()
                        break
                    messages, records = item
                    self._send(conn, messages, records)
            self._done()
        except _Abort:
            pass
        except BaseException as exc:  # reported to the producer by finish()
            self.error = exc
