"""A bulk publish staged while it is encoded (``lua/staging.lua``), on one Redis server.

``send_many`` of more than a chunk hands each chunk of 1,000 messages to
:class:`StagedPublish` as soon as it is encoded. Its stage call (``lua/stage.lua``) is
written at once: redis-server numbers the messages and stores their values while the
producer encodes the next chunk, so the two overlap on two cores. Nothing is visible yet: the
messages wait on a stage list, outside every queue's zsets. Once all are encoded, one commit
call per chunk (``lua/commit_stage.lua``) applies the dedupe and queues them, in order. So a
bad argument anywhere still publishes nothing (:meth:`StagedPublish.abort` drops the stage),
as when every message was encoded before the first write.

A stage that went wrong (a lost connection, a server that lost the scripts or dropped the
stage) is published again the ordinary way, whole: the publish dedupe adds what a commit
already added once. A stage its producer never committed (it died) is dropped by the sweep
after ``STAGE_TTL`` (5 minutes) without a new chunk.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import redis

from ..._redis_calls import Calls, Connections
from ..base import Message

if TYPE_CHECKING:
    from .publish import Publishing

#: ``commit_stage.lua``'s reply when the stage is gone uncommitted (the sweep dropped it).
GONE = -1


class StagedPublish:
    """One bulk publish, staged chunk by chunk (:meth:`add`), then committed or aborted."""

    def __init__(self, broker: Publishing, connections: Connections) -> None:
        self._broker = broker
        self._connections = connections
        self._key = broker.keys.stage(uuid.uuid4().hex)
        self._calls = Calls()
        self._conn: Any = None  # owing the replies of the first _sent commands
        self._sent = 0
        self._chunks = 0
        self._broken = False  # the connection was lost: publish it all the ordinary way
        self._messages: list[Message] = []
        scripts = broker._scripts
        for name in ("stage", "abort_stage"):
            if not scripts[name].loaded:  # else every stage call would meet NOSCRIPT
                self._calls.add((scripts[name].load_command(),))

    def add(self, messages: Sequence[Message]) -> None:
        """Stage ``messages`` (written now, their replies read by :meth:`commit`)."""
        self._messages.extend(messages)
        if not self._broken:
            self._broker._queue_publish(
                self._calls, messages, stage=self._key, each_chunk=self._chunk_built
            )

    def _chunk_built(self) -> None:
        self._chunks += 1
        commands = self._calls.commands
        if self._broken or self._sent == len(commands):
            return
        try:
            self._conn = self._connections.send(commands[self._sent :], self._conn)
        except redis.RedisError:  # send() dropped the connection (lost, timed out)
            self._conn, self._broken = None, True
            return
        except BaseException:
            self._conn = None  # dropped by send() too
            raise
        self._sent = len(commands)

    def commit(self, first: Calls) -> None:
        """Send ``first`` (the QUEUED records), then queue every staged message; raises
        :class:`~conveyor.exceptions.BrokerError` as a publish does."""
        broker = self._broker
        if not self._staged():
            broker.publish_with(first, self._messages)
            return
        script = broker._scripts["commit_stage"]
        seq = broker.keys.shared("seq")
        calls = first
        replies_from = len(calls)
        for _ in range(self._chunks):
            calls.script(script, (seq, self._key), ())
        with broker._errors:
            replies = self._connections.execute(calls)
        if GONE in replies[replies_from:]:
            # Dropped before its commit (its producer stalled for minutes): all again, the
            # dedupe skipping what an earlier commit of it added.
            broker.publish_with(Calls(), self._messages)
            return
        for name in ("stage", "abort_stage"):
            broker._scripts[name].loaded = True
        broker._registered_now(message.queue for message in self._messages)

    def _staged(self) -> bool:
        """Whether every stage call ran (else the stage is dropped)."""
        if self._broken or self._conn is None:
            return False
        conn, self._conn = self._conn, None
        try:
            replies = self._connections.receive(conn, self._sent)
        except redis.RedisError:  # dropped by receive(): the sweep drops the stage
            return False
        if any(isinstance(reply, Exception) for reply in replies):
            self._drop()
            return False
        return True

    def abort(self) -> None:
        """Drop the stage (the producer failed before the commit): on the same connection,
        after the stage calls, or by the sweep if it is lost."""
        if self._conn is None:
            return
        conn, self._conn = self._conn, None
        with contextlib.suppress(redis.RedisError):  # dropped: the sweep drops the stage
            self._connections.send(self._abort_call().commands, conn)
            self._connections.receive(conn, self._sent + 1)

    def _drop(self) -> None:
        with contextlib.suppress(redis.RedisError):  # the sweep drops it
            self._connections.execute(self._abort_call())

    def _abort_call(self) -> Calls:
        abort = Calls()
        seq = self._broker.keys.shared("seq")
        abort.script(self._broker._scripts["abort_stage"], (seq, self._key), ())
        return abort
