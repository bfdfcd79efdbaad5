"""Messages RabbitMQ pushes to a blocking ``lease()``: one ``basic.consume`` per leased queue.

A lease that may wait (``wait > 0``, what a worker does) consumes each of its queues on the
session's work channel, so RabbitMQ pushes messages as they become ready and ``lease()`` takes
what has arrived (no round trip per message; a blocked lease wakes when a message arrives).
Each consumer has a per-consumer prefetch (``basic.qos`` with ``global=False``: RabbitMQ 4.x
has no global QoS on quorum queues) of the leases this client holds plus :data:`HEADROOM`
times what the lease asks for: the next batch is on its way while this one runs (one batch
per window would wait a quorum commit of its acks each time, see ``bench/amqp_ceiling.py``).
A lease that asks for one message (no prefetch) gets a window of exactly one more.
What is pushed but not leased is therefore at most what the next leases take, and a client
that stops leasing (every slot busy with a long task) gives it back after :data:`STALE`
seconds (:meth:`Pushed.stale`, checked by the broker's lease thread). A window too small for
what a lease asks grows by one more consumer of the queue with the difference as its prefetch
(the windows add up); it never shrinks while leases go on. Growing never cancels a consumer:
a quorum queue requeues a delivery that was on its way to a cancelled consumer, charging it a
delivery. All consumers of a queue share one buffer: one queue's deliveries reach the channel
in queue order.

Pushed messages that nobody leased are unacked deliveries of this client. They go back
*uncharged* (a copy with the delivery count so far, like ``release()``, then an ack of the
original: a requeue would count a delivery on a quorum queue) when consuming stops: on
``close()``, when a lease stops naming the queue, on ``release()``, when no lease took any for
:data:`STALE` seconds, and before a lease that does not wait (which uses ``basic.get``, see the
broker). If the connection dies RabbitMQ requeues them itself; a forked child forgets its
parent's consumers without touching them.

Everything here runs under the session lock (deliveries are dispatched by whichever thread
reads the connection, and every reader holds that lock).
"""

from __future__ import annotations

import itertools
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence

import amqp

#: A consumer's window is the leases held plus this many times what the lease asks for.
HEADROOM = 2
#: Pushed messages no lease asked for in this long go back (seconds).
STALE = 1.0


class Pushed:
    """The consumers of one connection and the messages they pushed that are not leased."""

    def __init__(self, tag: str = "conveyor") -> None:
        self.tag = tag  # consumer tags are "<tag>-<n>": unique per channel
        self.generation = -1
        self._tags: dict[str, list[str]] = {}  # Conveyor queue -> its consumers' tags
        self._windows: dict[str, int] = {}
        self._prefetch: dict[str, int] = {}  # consumer tag -> its prefetch
        self._buffers: dict[str, deque[amqp.Message]] = {}
        self._numbers = itertools.count(1)
        self._asked = time.monotonic()  # when a lease last looked at the buffers

    def reset(self, generation: int) -> None:
        """Forget everything (a new connection: RabbitMQ requeued what the old one held)."""
        self.generation = generation
        self._tags.clear()
        self._windows.clear()
        self._prefetch.clear()
        self._buffers.clear()

    def _callback(self, queue: str) -> Callable[[amqp.Message], None]:
        buffer = self._buffers.setdefault(queue, deque())
        return buffer.append

    def follow(
        self,
        channel: amqp.Channel,
        physical: Callable[[str], str],
        queues: Sequence[str],
        window: int,
    ) -> list[tuple[str, amqp.Message]]:
        """Consume ``queues`` with at least ``window`` prefetch each; stop consuming the
        others. Returns the unleased messages of the queues no longer consumed, as
        (queue, message): the caller gives them back."""
        self._asked = time.monotonic()
        back = self.stop(channel, [q for q in self._tags if q not in queues])
        for queue in queues:
            have = self._windows.get(queue, 0)
            if have >= window:
                continue
            prefetch = min(window - have, 65535)
            channel.basic_qos(0, prefetch, False)
            tag = f"{self.tag}-{next(self._numbers)}"
            self._prefetch[tag] = prefetch
            channel.basic_consume(
                physical(queue), consumer_tag=tag, no_ack=False, callback=self._callback(queue)
            )
            self._tags.setdefault(queue, []).append(tag)
            self._windows[queue] = window
        return back

    def _cancel(self, channel: amqp.Channel, queue: str) -> None:
        self._windows.pop(queue, None)
        for tag in self._tags.pop(queue):
            self._prefetch.pop(tag, None)
            callback = channel.callbacks.get(tag)
            channel.basic_cancel(tag)
            # A delivery sent before RabbitMQ saw the cancel is still ours (unacked on this
            # channel): py-amqp would requeue it (a charged delivery), so keep buffering.
            if callback is not None:
                channel.callbacks[tag] = callback

    def stop(
        self, channel: amqp.Channel, queues: Sequence[str] | None = None
    ) -> list[tuple[str, amqp.Message]]:
        """Cancel the consumers of ``queues`` (None: all) and hand over their buffered
        messages as (queue, message)."""
        names = list(self._tags if queues is None else queues)
        for queue in names:
            if queue in self._tags:
                self._cancel(channel, queue)
        if queues is None:
            names = list(self._buffers)
        out: list[tuple[str, amqp.Message]] = []
        for queue in names:
            buffer = self._buffers.get(queue)
            if buffer:
                out += ((queue, msg) for msg in buffer)
                buffer.clear()
        return out

    def consuming(self) -> bool:
        return bool(self._tags)

    def unfilled(self, held: Counter[str]) -> list[str]:
        """The queues with a consumer that holds fewer unsettled deliveries than its prefetch
        (``held``: the leases held per consumer tag; what waits buffered is counted here):
        RabbitMQ may still push to it. A full consumer gets nothing more."""
        have = Counter(held)
        for buffer in self._buffers.values():
            have.update(msg.delivery_info.get("consumer_tag", "") for msg in buffer)
        return [
            queue
            for queue, tags in self._tags.items()
            if any(have[tag] < self._prefetch.get(tag, 0) for tag in tags)
        ]

    def stale(self, after: float = STALE) -> bool:
        """Whether messages wait pushed while no lease looked for ``after`` seconds."""
        return time.monotonic() - self._asked >= after and any(self._buffers.values())

    def counts(self) -> dict[str, int]:
        """How many messages wait in each queue's buffer."""
        return {queue: len(buffer) for queue, buffer in self._buffers.items() if buffer}

    def buffered(self, queues: Sequence[str]) -> int:
        return sum(len(self._buffers.get(queue, ())) for queue in queues)

    def take(self, queues: Sequence[str], limit: int) -> list[tuple[str, amqp.Message]]:
        """Up to ``limit`` arrived messages, ``queues`` in the order given, FIFO in each."""
        out: list[tuple[str, amqp.Message]] = []
        for queue in queues:
            buffer = self._buffers.get(queue)
            while buffer and len(out) < limit:
                out.append((queue, buffer.popleft()))
        return out
