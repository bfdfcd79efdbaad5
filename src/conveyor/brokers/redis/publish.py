"""Publishing and acking on Redis: ``ack_publish.lua`` acks and adds messages in one call
per queue (a retry is an ack and a publish in one call), optionally after the caller's own
commands (``publish_with``/``ack_with``, the building blocks of ``conveyor.settlement.redis``)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ..._redis_calls import Calls, Connections
from ...exceptions import BrokerError
from ..base import (
    PUBLISH_DEDUPE_WINDOW,
    Delivery,
    Message,
    clamp_priority,
)
from .core import CHUNK, RedisCore
from .replies import _by_queue
from .staging import StagedPublish

logger = logging.getLogger(__name__)

#: The id is looked for in this many bytes at the start of a body (a bounded search).
ID_SEARCH = 1024

#: A publish of at most this many messages, all ready now, pushes them on the ingress list
#: (``lua/ingress.lua``) on a single server: an RPUSH costs redis-server ~15 us less than a
#: script call. Larger ones go through ``ack_publish.lua``, which costs less per message.
INGRESS_MAX = 16
#: A publish that finds more entries than this on the ingress list queues them itself (one
#: script call), so the next script of a queue never has more than a few ms of work there.
INGRESS_LIMIT = 1000

#: How long a process trusts that a queue it published to is in the set of known queues
#: (seconds). Conveyor never removes one from the set, but a server that lost its data has
#: forgotten it: the next publish after this adds it again.
REGISTER_AGAIN = 60.0


class Publishing(RedisCore):
    # -- producing -----------------------------------------------------------------------
    def _queue_publish(
        self,
        batch: Calls,
        messages: Sequence[Message],
        acks: Sequence[Delivery] = (),
        *,
        dedupe: bool = True,
        each_chunk: Callable[[], None] | None = None,
        stage: str | None = None,
    ) -> list[str]:
        """Add script calls that ack ``acks`` and add ``messages`` (one call per queue and
        chunk; ``each_chunk`` is called after each); returns the queues published to. A plain
        publish (no acks, ``dedupe``) skips ids published to the same queue in the last
        ``PUBLISH_DEDUPE_WINDOW``. With ``stage`` (a stage list: ``staging.py``) the calls
        stage the messages instead, for a commit to add."""
        dedupe_ms = int(PUBLISH_DEDUPE_WINDOW * 1000) if dedupe and not acks else 0
        keys = self.keys
        ack_queues = _by_queue(acks)
        by_queue: dict[str, list[Message]] = {}
        for m in messages:
            by_queue.setdefault(m.queue, []).append(m)
        for queue, receipts in ack_queues.items():
            if queue in by_queue:
                continue  # acked with the first publish call to the same queue
            batch.script(
                self._scripts["ack_publish"],
                (keys.seq(queue), keys.queue(queue), keys.queue(queue)),
                (queue, "", len(receipts), "0", 0, 2, *receipts),
            )
        for queue, queued in by_queue.items():
            self._register(batch, queue)
            for start in range(0, len(queued), CHUNK):
                receipts = ack_queues.get(queue, []) if start == 0 else []
                chunk = queued[start : start + CHUNK]
                # Messages ready now go as (id, value) pairs, the value starting with the
                # priority; any countdown or eta in the chunk: all go as five arguments.
                plain = all(not m.countdown and m.eta is None for m in chunk)
                args: list[Any] = [
                    queue,
                    self._wake_arg(queue),
                    len(receipts),
                    "0",
                    dedupe_ms,
                    2 if plain else 5,
                    *receipts,
                ]
                # In bytes, as redis-py would encode them (it passes bytes on as they are).
                for m in chunk:
                    message_id = m.id.encode()
                    priority = clamp_priority(m.priority)
                    value = packed_value(priority, message_id, m.body)
                    if plain:
                        args += (message_id, value)
                    else:
                        eta = b"-1.0" if m.eta is None else repr(m.eta * 1000.0).encode()
                        countdown = repr(m.countdown * 1000.0).encode()
                        args += (message_id, b"%d" % priority, countdown, eta, value)
                if stage is None:
                    batch.script(
                        self._scripts["ack_publish"],
                        (keys.seq(queue), keys.queue(queue), keys.queue(queue)),
                        args,
                    )
                else:
                    batch.script(
                        self._scripts["stage"], (keys.seq(queue), keys.queue(queue), stage), args
                    )
                if each_chunk is not None:
                    each_chunk()
        self._wake(batch, by_queue)
        return list(by_queue)

    def _via_ingress(self, messages: Sequence[Message], dedupe: bool) -> bool:
        """Whether a plain publish of ``messages`` goes on the ingress list: a few, all
        ready now, on a single server."""
        return (
            dedupe
            and not self._cluster
            and len(messages) <= INGRESS_MAX
            and all(not m.countdown and m.eta is None for m in messages)
        )

    def _queue_ingress(self, batch: Calls, messages: Sequence[Message]) -> tuple[int, list[str]]:
        """Add the RPUSH of ``messages`` on the ingress list (one entry each, see
        ``lua/ingress.lua``), then the wake-ups of their queues; returns the RPUSH's index
        in ``batch`` and the queues."""
        entries = []
        queues: dict[str, str] = {}  # queue -> its wake-up list
        for m in messages:
            parts = self._ingress_parts.get(m.queue) or self._ingress_part(m.queue)
            value = packed_value(clamp_priority(m.priority), m.id.encode(), m.body)
            entries.append(parts[0] + value)
            queues[m.queue] = parts[1]
        for queue in queues:
            self._register(batch, queue)
        pushed = len(batch)
        batch.add((("RPUSH", self.keys.ingress, *entries),))
        for wake in queues.values():  # one token a publish: the queueing keeps one
            batch.add((("LPUSH", wake, 1),))
        return pushed, list(queues)

    def _ingress_part(self, queue: str) -> tuple[bytes, str]:
        """An ingress entry's head for ``queue`` (``<dedupe_ms> <length of wake> <wake>``,
        its wake-up list naming the queue) and that list, kept (a producer sends to the same
        few)."""
        wake = self.keys.wake(queue)
        head = b"%d %d %s" % (int(PUBLISH_DEDUPE_WINDOW * 1000), len(wake), wake.encode())
        parts = self._ingress_parts[queue] = (head, wake)
        return parts

    def absorb_ingress(self) -> None:
        """Queue what small publishes left on the ingress list. Every broker script does
        it first; this is for readers of the raw keys (tests, debugging)."""
        batch = Calls()
        self._absorb_first(batch)
        with self._errors:
            self._connections.execute(batch)

    def _register(self, batch: Calls, queue: str) -> None:
        """Add ``queue`` to the set of known queues (``stats()`` of every queue, the
        dashboard), unless this process did within ``REGISTER_AGAIN`` seconds: a command
        and a reply less per publish."""
        if time.monotonic() >= self._registered.get(queue, 0.0):
            batch.add((("SADD", self.keys.queues, queue),))

    def _registered_now(self, queues: Iterable[str]) -> None:
        """The batch with the ``_register`` calls of ``queues`` ran (not before: a publish
        that failed adds them again)."""
        until = time.monotonic() + REGISTER_AGAIN
        for queue in queues:
            self._registered[queue] = until

    def publish(self, messages: Sequence[Message]) -> None:
        self.publish_with(Calls(), messages)

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        self.ack_with(Calls(), deliveries)

    def retry_later(self, delivery: Delivery, message: Message) -> None:
        if self._cluster and delivery.queue != message.queue:
            # Two slots: publish the retry, then ack (a crash between them runs it twice,
            # never loses it). The receipt is not checked first: see docs/scaling.md.
            self.publish_with(Calls(), [message], dedupe=False)
            self.ack((delivery,))
            return
        batch = Calls()
        keys = self.keys
        receipts = _by_queue((delivery,))[delivery.queue]
        queue = message.queue
        args: list[Any] = [queue, self._wake_arg(queue), 1, "1", 0, 5, *receipts]
        eta = -1.0 if message.eta is None else message.eta * 1000.0
        priority = clamp_priority(message.priority)
        message_id = message.id.encode()
        value = packed_value(priority, message_id, message.body)
        args += (message_id, priority, message.countdown * 1000.0, eta, value)
        self._register(batch, queue)
        batch.script(
            self._scripts["ack_publish"],
            (keys.seq(queue), keys.queue(delivery.queue), keys.queue(queue)),
            args,
        )
        self._wake(batch, (queue,))
        with self._errors:
            self._connections.execute(batch)
        self._registered_now((queue,))

    def publish_with(
        self, first: Calls, messages: Sequence[Message], *, dedupe: bool = True
    ) -> None:
        """Send ``first`` (commands for this server, e.g. result records) and publish
        ``messages`` after them, in one round trip."""
        if len(messages) > CHUNK and not self._cluster and not self._wait_replicas:
            self._publish_streamed(first, messages, dedupe)
            return
        waits: list[int] = []
        pushed = -1  # the index of the ingress RPUSH's reply, if any
        if messages:
            if self._via_ingress(messages, dedupe):
                pushed, published = self._queue_ingress(first, messages)
            else:
                published = self._queue_publish(first, messages, dedupe=dedupe)
            if self._wait_replicas:
                for queue in published:
                    # On Cluster the WAIT goes to the node of the queue, on the connection
                    # that carried its publish (the same one on a single server).
                    waits.append(len(first))
                    first.add((("WAIT", self._wait_replicas, self._wait_ms),))
                    first.targets[waits[-1]] = self.keys.queue(queue)
        with self._errors:
            replies = self._connections.execute(first)
        if messages:
            self._registered_now(published)
        if pushed >= 0 and int(replies[pushed]) > INGRESS_LIMIT:
            try:
                self.absorb_ingress()
            except BrokerError as exc:  # published all the same: the next script queues them
                logger.warning("could not queue the ingress list: %s", exc)
        reached = [int(replies[i]) for i in waits]
        if reached and min(reached) < self._wait_replicas:
            # On the primary, not yet on enough replicas: a failover now could lose it. The
            # producer's publish retry sends it again; the id dedupe keeps it single.
            shortfall = f"publish reached {min(reached)} of {self._wait_replicas} replicas"
            # A timeout (an OSError): publish retries treat it as passing, like a lost connection.
            raise BrokerError(f"{shortfall} within {self._wait_ms} ms (wait_for_replicas)") from (
                TimeoutError(shortfall)
            )

    def _publish_streamed(self, first: Calls, messages: Sequence[Message], dedupe: bool) -> None:
        """``publish_with`` of more than a chunk on one server: each chunk's call is written
        as soon as it is built, so redis-server runs one while the next is packed."""
        connections = self._connections
        assert isinstance(connections, Connections)  # one server: not a cluster's
        script = self._scripts["ack_publish"]
        if not script.loaded:  # else, on a server that lacks it, every chunk would run twice
            first.add((script.load_command(),))
        stream = connections.stream(first)
        with self._errors:
            try:
                published = self._queue_publish(
                    first, messages, dedupe=dedupe, each_chunk=stream.send
                )
            except BaseException:
                stream.abort()
                raise
            stream.finish()
        script.loaded = True
        self._registered_now(published)

    def staged(self) -> StagedPublish | None:
        """A :class:`StagedPublish` for a bulk publish sent while it is encoded, or None
        (Cluster, ``wait_for_replicas``): then publish it once built."""
        if self._cluster or self._wait_replicas:
            return None
        connections = self._connections
        assert isinstance(connections, Connections)  # one server: not a cluster's
        return StagedPublish(self, connections)

    def ack_with(self, first: Calls, deliveries: Sequence[Delivery]) -> None:
        """Send ``first`` and ack ``deliveries`` after them, in one round trip."""
        if deliveries:
            self._queue_publish(first, (), deliveries)
        with self._errors:
            self._connections.execute(first)


def packed_value(priority: int, message_id: bytes, body: bytes) -> bytes:
    """The ``Q:m`` value of a message (lua/common.lua): ``<priority> <length of id>:<its
    position in the body, from 1> <body>`` when the body's first KiB holds the id (an
    envelope's does, near its start: a 36-byte uuid less takes a no-op's value a jemalloc size
    class lower), else ``<priority> <length of id> <id><body>``. Packed here rather than in
    the publish script, where the copy and search of each body cost more than the rest of a
    bulk publish's per-message work."""
    at = body.find(message_id, 0, ID_SEARCH) if message_id else -1
    if at >= 0:
        return b"%d %d:%d %s" % (priority, len(message_id), at + 1, body)
    return b"%d %d %s%s" % (priority, len(message_id), message_id, body)
