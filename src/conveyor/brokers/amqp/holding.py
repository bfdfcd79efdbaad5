"""Leasing on RabbitMQ (a mixin of :class:`~.broker.AMQPBroker`): taking what the consumers
of :mod:`.pushed` were pushed (``basic.get`` for a lease that does not wait), holding it as a
lease (:mod:`.leases`) after reading its fate (:mod:`.fates`), giving back what no lease
took, and the reaper's pass over expired leases."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence

import amqp

from ...exceptions import ConveyorError
from ..base import DeadLetterReason, Delivery
from . import attempts, fates, run_now
from .convert import (
    BEFORE,
    body_of,
    copy_of,
    counts_returns,
    delivery_count_of,
    message_id_of,
    priority_of,
    problem_of,
)
from .core import AMQPCore
from .leases import Held, Reaper, logger
from .pushed import HEADROOM
from .topology import LEVELS, delay_routing_key

#: Longest single wait of a blocked lease before it looks again (seconds): another thread
#: may have read its pushed messages off the connection meanwhile (publisher confirms).
POLL_SLICE = 0.1
#: Before cancelling consumers whose windows are not full: how long no delivery must arrive
#: (seconds), and how long to wait at most for what is on its way.
QUIET = 0.03
PUSHES_MOST = 1.0


class Holding(AMQPCore):
    """``lease`` and ``sweep``: messages held by this client until settled or expired."""

    def _ensure_reaper(self) -> None:
        if self._reaper is None:
            with self._reaper_lock:
                if self._reaper is None:
                    interval = min(0.25, self.options.lease_timeout / 4)
                    self._reaper = Reaper(self._reap, interval)
                    self._reaper.start()

    def _fresh_generation(self) -> int:
        generation = self._session.generation
        self._leases.forget_before(generation)
        if self._pushed.generation != generation:
            self._pushed.reset(generation)
            self._lanes.reset(generation)
        return generation

    def lease(self, queues: Sequence[str], limit: int, wait: float) -> list[Delivery]:
        if limit <= 0 or not queues:
            return []
        self._ensure_reaper()
        if wait <= 0:
            return self._session.run(lambda ch: self._poll(ch, queues, limit), "lease")
        deadline = time.monotonic() + wait
        while True:
            got = self._session.run(lambda ch: self._take(ch, queues, limit), "lease")
            remaining = deadline - time.monotonic()
            if got or remaining <= 0:
                return got
            self._session.wait(min(remaining, POLL_SLICE))

    def _poll(self, channel: amqp.Channel, queues: Sequence[str], limit: int) -> list[Delivery]:
        """``basic.get`` up to ``limit`` messages, the lanes of ``queues`` then ``queues``,
        in the order given: an exact answer to "what is ready now" (a consumer's pushes may
        still be on the way)."""
        generation = self._fresh_generation()
        self._stop_pushed(channel, None)
        for queue in queues:
            self._declare(channel, queue)
        sources = [(q, self.names.lane(q)) for q in queues]
        sources += [(q, self.names.queue(q)) for q in queues]
        got: list[Delivery] = []
        for queue, physical in sources:
            empty = False
            while len(got) < limit and not empty:
                msgs: list[tuple[str, amqp.Message]] = []
                while len(got) + len(msgs) < limit:
                    msg = channel.basic_get(physical, no_ack=False)
                    if msg is None:
                        empty = True
                        break
                    msgs.append((queue, msg))
                got += self._deliveries(channel, msgs, generation)
        return got

    def _take(self, channel: amqp.Channel, queues: Sequence[str], limit: int) -> list[Delivery]:
        """What RabbitMQ pushed to this client's consumers of ``queues`` (up to ``limit``)."""
        generation = self._fresh_generation()
        for queue in queues:
            self._declare(channel, queue)
        # Headroom only for a lease that prefetches: one asking for a single message (a slot
        # of a worker running long tasks, or with --prefetch 1) gets no neighbour pushed,
        # which a task that kills its process would get charged a delivery.
        window = len(self._leases) + (HEADROOM * limit if limit > 1 else limit)
        self._give_back(self._lanes.follow(channel, self.names.lane, queues, window), lane=True)
        self._give_back(self._pushed.follow(channel, self.names.queue, queues, window))
        got: list[Delivery] = []
        while len(got) < limit:
            if self._pushed.buffered(queues) + self._lanes.buffered(queues) < limit - len(got):
                self._session.pump()
            msgs = self._lanes.take(queues, limit - len(got))  # the lanes first
            msgs += self._pushed.take(queues, limit - len(got) - len(msgs))
            if not msgs:
                break
            got += self._deliveries(channel, msgs, generation)
        return got

    def _deliveries(
        self, channel: amqp.Channel, msgs: Sequence[tuple[str, amqp.Message]], generation: int
    ) -> list[Delivery]:
        """Hold ``msgs`` (of ``queue``) as leases, reading their fates in one round trip;
        malformed ones and those a supervisor settled are handled here, not handed out."""
        if not msgs:
            return []
        deadline = time.time() + self.options.lease_timeout
        ids = [
            message_id_of(msg, f"amqp-{self._uid}-{generation}-{msg.delivery_info['delivery_tag']}")
            for _, msg in msgs
        ]
        counted = [delivery_count_of(msg) for _, msg in msgs]
        # their fates only while some fate may be live (fates.Watch): mostly none is
        keys = [f"{fates.PREFIX}{i}" for i in ids] if self._watch.needed() else []
        # the kept counts of those RabbitMQ says came back (attempts)
        keys += [attempts.key(i) for i, n in zip(ids, counted, strict=True) if n > 1]
        keys += [
            f"{run_now.SUPERSEDED}{i}"
            for (_, msg), i in zip(msgs, ids, strict=True)
            if run_now.token_of(msg)
        ]
        found = self.kv.get_values(keys) if keys else {}
        got: list[Delivery] = []
        for (queue, msg), message_id, rabbit_count in zip(msgs, ids, counted, strict=True):
            tag = msg.delivery_info["delivery_tag"]
            record = found.get(attempts.key(message_id)) if found else None
            kept = (
                None
                if record is None
                else attempts.kept_count(record, rabbit_count, exact=counts_returns(msg))
            )
            count = rabbit_count if kept is None else kept
            held = Held(tag, generation, deadline, count, queue, msg, message_id, kept is not None)
            fate = found.get(f"{fates.PREFIX}{message_id}")
            if (problem := problem_of(msg)) is not None:
                self._bury(held, DeadLetterReason.MALFORMED, f"AMQP message: {problem}")
                continue
            if run_now.superseded(msg, found.get(f"{run_now.SUPERSEDED}{message_id}")):
                self._ack_held(channel, [held])  # its copy was run now (run_scheduled)
                self.kv.delete_value(f"{run_now.SUPERSEDED}{message_id}")
                continue
            note = fates.note_of(fate)
            if note is not None and fates.applies(note, count, kept=held.recorded):
                self._apply(channel, held, note)
                fates.forget(self.kv, message_id)
                continue
            if count > self.options.max_deliveries:  # where the queue's own limit did not
                detail = f"delivered {count} times (at most {self.options.max_deliveries})"
                self._bury(held, DeadLetterReason.WORKER_LOST, detail, swept=True)
                continue
            receipt = f"{self._uid}:{generation}:{tag}"
            self._leases.add(receipt, held)
            got.append(
                Delivery(
                    id=message_id,
                    queue=queue,
                    body=body_of(msg),
                    priority=priority_of(msg),
                    receipt=receipt,
                    delivery_count=count,
                    revoked=fates.is_revoked(fate),
                )
            )
        return got

    def _apply(self, channel: amqp.Channel, held: Held, note: fates.Note) -> None:
        """Settle a message as a supervisor did with its dead child's receipt."""
        if note.released:  # back with the count it had when the child died: uncharged
            copy = copy_of(held.message, {BEFORE: note.delivery_count - 1})
            self._session.publish([(self.names.exchange, held.queue, copy)], "release")
            self._ack_held(channel, [held])
        elif note.reason is None:
            self._ack_held(channel, [held])
        else:
            self._bury(held, note.reason, note.detail)

    def _stop_pushed(self, channel: amqp.Channel, queues: Sequence[str] | None) -> None:
        """Stop consuming ``queues`` (None: all) and give back what they pushed. A delivery
        still on its way when RabbitMQ sees the cancel is requeued by it and charged a
        delivery: first take in what is on its way (:meth:`_await_pushes`)."""
        self._fresh_generation()
        if self._pushed.consuming() or self._lanes.consuming():
            self._await_pushes(channel)
        self._give_back(self._lanes.stop(channel, queues), lane=True)
        self._give_back(self._pushed.stop(channel, queues))

    def _stop_consuming(self, what: str) -> None:
        """(Session lock held.) :meth:`_stop_pushed` for every queue, if this connection
        consumes (a new one has no consumers; a forked child's are its parent's)."""
        if self._session.connected and self._pushed.generation == self._session.generation:
            self._session.run(lambda ch: self._stop_pushed(ch, None), what)

    def _await_pushes(self, channel: amqp.Channel) -> None:
        """Read deliveries until none can be on their way: to a consumer whose window is
        full RabbitMQ sends nothing (exact); to the others, once nothing arrived for
        :data:`QUIET` seconds and their queues hold no ready message (what arrives then is a
        new publish). At most :data:`PUSHES_MOST` seconds."""
        deadline = time.monotonic() + PUSHES_MOST
        while (remaining := deadline - time.monotonic()) > 0:
            self._session.quiet(QUIET, remaining, done=lambda: not self._unfilled())
            unfilled = self._unfilled()
            if not unfilled or not self._ready_in(channel, unfilled):
                return

    def _unfilled(self) -> list[str]:
        """The RabbitMQ queues with a consumer that RabbitMQ may still push to."""
        held = Counter(h.message.delivery_info.get("consumer_tag", "") for h in self._leases.held())
        unfilled = [self.names.queue(queue) for queue in self._pushed.unfilled(held)]
        return unfilled + [self.names.lane(queue) for queue in self._lanes.unfilled(held)]

    @staticmethod
    def _ready_in(channel: amqp.Channel, physical: Sequence[str]) -> bool:
        """Whether one of the RabbitMQ queues ``physical`` holds a ready message."""
        return any(channel.queue_declare(name, passive=True).message_count for name in physical)

    def _give_back(self, msgs: Sequence[tuple[str, amqp.Message]], *, lane: bool = False) -> None:
        """Return pushed messages nobody leased, uncharged (see :mod:`.pushed`): a copy to
        the back of the queue (``lane``: of its lane, through the delays' exchanges with no
        delay) with the deliveries so far, then an ack of the original."""
        if not msgs:
            return
        copies = [
            (
                *self._route_now(queue, lane),
                copy_of(msg, {BEFORE: delivery_count_of(msg) - 1}),
            )
            for queue, msg in msgs
        ]
        generation = self._session.generation
        self._session.publish(copies, "return pushed messages")
        tags = [msg.delivery_info["delivery_tag"] for _, msg in msgs]
        self._session.run(lambda ch: self._ack_tags(ch, tags, generation), "return pushed messages")

    def _route_now(self, queue: str, lane: bool) -> tuple[str, str]:
        """(exchange, routing key) of a message ready now in ``queue`` or in its lane."""
        if not lane:
            return self.names.exchange, queue
        # zero ticks: every level's "0" binding passes it on to the lane's delayed binding
        return self.names.delay(LEVELS - 1), delay_routing_key(0, self.names.lane(queue))

    def sweep(self) -> int:
        """Return this client's expired leases (RabbitMQ moves due delayed messages and
        returns a dead client's messages itself); dead-letter those delivered
        ``max_deliveries`` times. Returns how many moved."""
        return self._return_expired(0.0)

    def _reap(self) -> int:
        """The background pass: AMQP heartbeats, pushed messages no lease took, then expired
        leases, a little past expiry (like the other brokers' sweep interval: a late ack just
        after expiry counts)."""
        self._session.heartbeat()
        self._return_stale()
        return self._return_expired(self.options.lease_timeout / 4)

    def _return_stale(self) -> None:
        """Give back what was pushed while no lease asked (every slot of the worker busy):
        it waits for no one here, and another client can run it."""
        with self._session.lock:
            if self._pushed.generation != self._session.generation:
                return
            self._session.run(lambda _: self._session.pump(), "return pushed messages")
            if self._pushed.stale():  # what arrived since the last lease is read now
                self._stop_consuming("return pushed messages")

    def _return_expired(self, grace: float) -> int:
        expired = self._leases.expired(time.time() - grace)
        generation = self._session.generation
        expired = [held for held in expired if held.generation == generation]
        if not expired:
            return 0
        lost = [h for h in expired if h.delivery_count >= self.options.max_deliveries]
        back = [h for h in expired if h.delivery_count < self.options.max_deliveries]
        for held in lost:
            self._bury(held, DeadLetterReason.WORKER_LOST, "lease expired", swept=True)
        try:  # a counted run: the next delivery is the next one on any queue type
            attempts.record(self.kv, [(held.message_id, held) for held in back])
        except ConveyorError as exc:  # RabbitMQ's own count applies
            logger.warning("could not record the counts of expired leases: %s", exc)

        def requeue(channel: amqp.Channel) -> None:
            if generation == self._session.generation:
                self._session.settled.reject(channel, [h.tag for h in back], True)

        self._session.run(requeue, "sweep")
        return len(expired)
