"""RabbitMQ broker (``amqp://``, ``amqps://``, ``pyamqp://``) on py-amqp.

How each promise is kept (docs/rabbitmq.md has the long form):

* at-least-once: ``lease()`` takes messages RabbitMQ pushed to its consumers (:mod:`.pushed`;
  ``basic.get`` for a lease that does not wait) and acks them only in ``ack()``, after the
  task finished; a dead client's unacked messages go back to the queue when its connection
  closes, and an expired lease of a live one through :mod:`.leases`;
* every publish waits for publisher confirms (:mod:`.session`) and raises if one is missing;
* durable quorum queues with ``x-delivery-limit`` and a dead-letter exchange (:mod:`.topology`);
* delays live in RabbitMQ's TTL queues (:mod:`.topology`), never in a worker;
* RabbitMQ holds no key/value data: revocations, beat claims, the worker registry and publish
  dedupe across processes use ``kv``, built from ``kv_url`` (transport option or URL
  parameter; the app passes its result store's URL by default); streams too (:mod:`.streams`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Sequence

import amqp

from ...exceptions import BrokerError, ConfigurationError
from ...kv import KeyValue
from ...limits.kvstores import limits_on
from ...results import create_result_store
from ...results.base import ResultStore
from ..base import (
    MAX_PRIORITY,
    PUBLISH_DEDUPE_WINDOW,
    PURGED,
    Broker,
    BrokerOptions,
    DeadLetter,
    DeadLetterReason,
    Delivery,
    Departure,
    Message,
    PriorityCounts,
    QueueStats,
    clamp_priority,
)
from . import counts, deadletters, fates, run_now
from .connection import CONNECTION_ERRORS, Connector
from .convert import (
    BEFORE,
    DEAD_AT,
    DELIVERIES,
    DETAIL,
    QUEUE,
    REASON,
    body_of,
    copy_of,
    delivery_count_of,
    message_id_of,
    priority_of,
    problem_of,
    to_amqp,
)
from .departures import SWEPT, Taken, departure_of, tags_of
from .leases import Held, Leases, Reaper
from .pushed import HEADROOM, Pushed
from .run_now import RunNow
from .scheduled import DELAYED_KEY, DelayedMarkers
from .scheduled import marker as delayed_marker
from .session import Session
from .streams import KeptStreams
from .topology import LEVELS, TICK, Names, Topology, delay_routing_key, ticks

#: Longest single wait of a blocked lease before it looks again (seconds): another thread
#: may have read its pushed messages off the connection meanwhile (publisher confirms).
POLL_SLICE = 0.1
#: Before cancelling consumers: how long no delivery must arrive (seconds).
QUIET = 0.03
#: kv key of a queue name this prefix has used (stats() of every queue).
QUEUE_KEY = "amqp-queue:"


def _after_fork(reference: weakref.ref[AMQPBroker]) -> None:
    broker = reference()
    if broker is not None:
        broker._after_fork()


class AMQPBroker(KeptStreams, RunNow, DelayedMarkers, Broker):
    schemes = ("amqp", "amqps", "pyamqp")
    lease_checks_revoked = True
    delays_by_local_clock = True  # _routes times delays by time.time()

    def __init__(self, url: str, options: BrokerOptions | None = None) -> None:
        super().__init__(url, options)
        opts = self.options
        self._connector = Connector(url)
        transport = opts.transport_options
        kv_url = self._connector.params.kv_url or transport.get("kv_url")
        if not isinstance(kv_url, str) or not kv_url:
            raise ConfigurationError(
                "the RabbitMQ broker needs a key/value store for revocations, beat claims "
                "and the worker registry: set result_backend (Redis, PostgreSQL, SQLite, "
                "Django) or broker_transport_options={'kv_url': ...}"
            )
        if kv_url.split("://", 1)[0].lower() in self.schemes:
            raise ConfigurationError(
                "RabbitMQ cannot store results or key/value data: set result_backend to "
                "Redis, PostgreSQL, SQLite or Django"
            )
        self._store: ResultStore = create_result_store(
            kv_url, expires=None, key_prefix=f"{opts.key_prefix}.amqp"
        )
        self.kv: KeyValue = self._store.kv
        self.limits = limits_on(self.kv)  # rate and concurrency limits beside the kv data
        queue_type = str(transport.get("queue_type", "quorum"))
        self.names = Names(opts.key_prefix)
        try:
            self._topology = Topology(
                self.names, queue_type=queue_type, max_deliveries=opts.max_deliveries
            )
        except ValueError as exc:
            raise ConfigurationError(f"broker_transport_options: {exc}") from None
        self._session = Session(self._connector, self._topology)
        self._pushed = Pushed()
        self._lanes = Pushed("conveyor-lane")  # the consumers of the queues' lanes
        self._uid = uuid.uuid4().hex[:10]
        self._leases = Leases()
        self._departures = Taken()
        self._reaper: Reaper | None = None
        self._reaper_lock = threading.Lock()
        self._published: dict[str, float] = {}
        self._published_lock = threading.Lock()
        self._known: set[str] = set()
        os.register_at_fork(after_in_child=functools.partial(_after_fork, weakref.ref(self)))

    def _after_fork(self) -> None:
        """A forked child (a worker's child process) gets its own connections and identity:
        py-amqp connections must not be shared between processes, and receipts of the
        parent's broker are foreign to the child's."""
        self._uid = uuid.uuid4().hex[:10]
        self._session.forget()
        self._pushed = Pushed()  # the parent's consumers and what they pushed stay its own
        self._lanes = Pushed("conveyor-lane")
        self._leases = Leases()
        self._reaper = None
        self._reaper_lock = threading.Lock()
        self._published_lock = threading.Lock()

    # -- publishing ----------------------------------------------------------------------
    def _fresh(self, messages: Sequence[Message]) -> list[Message]:
        """The messages whose id this client has not published (confirmed) in the dedupe
        window, each id once."""
        now = time.monotonic()
        out: dict[str, Message] = {}
        with self._published_lock:
            if len(self._published) > 10_000:
                self._published = {k: t for k, t in self._published.items() if t > now}
            for message in messages:
                if self._published.get(message.id, 0.0) <= now:
                    out.setdefault(message.id, message)
        return list(out.values())

    def _remember(self, messages: Sequence[Message]) -> None:
        """Only confirmed ids: a publish that failed is published again by a retry (it may
        have reached RabbitMQ before the connection broke: at least once)."""
        until = time.monotonic() + PUBLISH_DEDUPE_WINDOW
        with self._published_lock:
            for message in messages:
                self._published[message.id] = until

    def _routes(
        self, channel: amqp.Channel, messages: Sequence[Message]
    ) -> list[tuple[str, str, amqp.Message]]:
        for message in messages:
            self._declare(channel, message.queue)
        now = time.time()  # after declaring (slow the first time): delays start from here
        due = [max(now + m.countdown, m.eta or 0.0) for m in messages]
        # a delayed message of the top priority (a put-back holding a booked token) comes
        # due into its queue's lane, also when it is due already
        lane = [_first(m) for m in messages]
        if any(when > now for when in due) or any(lane):
            self._topology.delays(channel)
            now = time.time()
        batch = []
        classic = self._topology.queue_type == "classic"
        for message, when, first in zip(messages, due, lane, strict=True):
            n_ticks = ticks(when - now) if when > now else 0
            if n_ticks:
                # counted for stats(): a kv key per delayed message that expires when due
                marker = f"{DELAYED_KEY}{message.queue}:{message.id}"
                self.kv.set_value(marker, delayed_marker(message, when), n_ticks * TICK)
            if n_ticks or first:
                target = (self.names.lane if first else self.names.queue)(message.queue)
                key = delay_routing_key(n_ticks, target)
                delayed = to_amqp(message, amqp_priority=classic)
                if n_ticks:
                    run_now.keep(self.kv, message, delayed, n_ticks * TICK)
                batch.append((self.names.delay(LEVELS - 1), key, delayed))
            else:
                batch.append(
                    (self.names.exchange, message.queue, to_amqp(message, amqp_priority=classic))
                )
        return batch

    def _declare(self, channel: amqp.Channel, queue: str) -> str:
        physical = self._topology.queue(channel, queue)
        if queue not in self._known:
            self.kv.set_value(f"{QUEUE_KEY}{queue}", b"1")
            self._known.add(queue)
        return physical

    def _send(self, messages: Sequence[Message], what: str = "publish") -> None:
        if not messages:
            return
        try:
            batch = self._session.run(lambda ch: self._routes(ch, messages), what)
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from None
        self._session.publish(batch, what)

    def publish(self, messages: Sequence[Message]) -> None:
        fresh = self._fresh(messages)
        self._send(fresh)
        self._remember(fresh)

    # -- consuming -----------------------------------------------------------------------
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
        keys = [f"{fates.PREFIX}{i}" for i in ids]
        keys += [
            f"{run_now.SUPERSEDED}{i}"
            for (_, msg), i in zip(msgs, ids, strict=True)
            if run_now.token_of(msg)
        ]
        found = self.kv.get_values(keys)
        got: list[Delivery] = []
        for (queue, msg), message_id in zip(msgs, ids, strict=True):
            tag = msg.delivery_info["delivery_tag"]
            count = delivery_count_of(msg)
            held = Held(tag, generation, deadline, count, queue, msg)
            fate = found.get(f"{fates.PREFIX}{message_id}")
            if (problem := problem_of(msg)) is not None:
                self._bury(held, DeadLetterReason.MALFORMED, f"AMQP message: {problem}")
                continue
            if run_now.superseded(msg, found.get(f"{run_now.SUPERSEDED}{message_id}")):
                self._ack_held(channel, [held])  # its copy was run now (run_scheduled)
                self.kv.delete_value(f"{run_now.SUPERSEDED}{message_id}")
                continue
            note = fates.note_of(fate)
            if note is not None and fates.applies(note, count):
                self._apply(channel, held, note)
                fates.forget(self.kv, message_id)
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

    def _stop_pushed(self, channel: amqp.Channel, queues: Sequence[str] | None) -> None:
        """Stop consuming ``queues`` (None: all) and give back what they pushed. A delivery
        still on its way when RabbitMQ sees the cancel is requeued by it and charged a
        delivery: first take in what is in flight (a consumer whose window is full, or whose
        queue is empty, has nothing on the way)."""
        self._fresh_generation()
        if self._pushed.consuming() or self._lanes.consuming():
            self._session.quiet(QUIET, 10 * QUIET)
        self._give_back(self._lanes.stop(channel, queues), lane=True)
        self._give_back(self._pushed.stop(channel, queues))

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

    def _ack_tags(self, channel: amqp.Channel, tags: Sequence[int], generation: int) -> None:
        """Ack ``tags`` of the work channel of connection ``generation`` (a run of them in
        one frame, :mod:`.acks`); nothing if that connection is gone (RabbitMQ put them
        back)."""
        if generation == self._session.generation:
            self._session.settled.ack(channel, tags)

    def _ack_held(self, channel: amqp.Channel, held: Sequence[Held]) -> None:
        generation = self._session.generation
        self._session.settled.ack(channel, [h.tag for h in held if h.generation == generation])

    def _route_now(self, queue: str, lane: bool) -> tuple[str, str]:
        """(exchange, routing key) of a message ready now in ``queue`` or in its lane."""
        if not lane:
            return self.names.exchange, queue
        # zero ticks: every level's "0" binding passes it on to the lane's delayed binding
        return self.names.delay(LEVELS - 1), delay_routing_key(0, self.names.lane(queue))

    def _apply(self, channel: amqp.Channel, held: Held, note: fates.Note) -> None:
        """Settle a message as a supervisor did with its killed child's receipt."""
        if note.reason is None:
            self._ack_held(channel, [held])
        else:
            self._bury(held, note.reason, note.detail)

    def _foreign(self, delivery: Delivery) -> bool:
        """Whether ``delivery`` was leased by another client (a killed child's, settled by
        its supervisor) rather than being a stale receipt of this one."""
        return delivery.receipt.split(":", 1)[0] != self._uid

    def _note(self, delivery: Delivery, reason: str | None, detail: str = "") -> None:
        note = fates.Note(delivery.delivery_count, reason, detail)
        fates.leave_note(self.kv, delivery.id, note)

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

    def _receipt(self, held: Held) -> str:
        return f"{self._uid}:{held.generation}:{held.tag}"

    def _settle(self, deliveries: Sequence[Delivery], requeue: bool | None) -> list[Held]:
        """Ack (requeue None) or nack the held ones among ``deliveries``."""
        if not deliveries:
            return []

        def act(channel: amqp.Channel) -> list[Held]:
            held = self._leases.take((d.receipt for d in deliveries), self._session.generation)
            if requeue is None:
                self._ack_held(channel, held)
            else:
                self._session.settled.reject(channel, [h.tag for h in held], requeue)
            return held

        return self._session.run(act, "ack" if requeue is None else "release")

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        for delivery in deliveries:
            if self._foreign(delivery):
                self._note(delivery, None)
        self._settle(deliveries, None)

    def extend(self, deliveries: Sequence[Delivery]) -> None:
        self._leases.extend(
            (d.receipt for d in deliveries), time.time() + self.options.lease_timeout
        )

    def release(self, deliveries: Sequence[Delivery]) -> None:
        """Publish each held message again with its delivery count so far and ack the
        original: ``basic.reject`` with requeue would charge a delivery on a quorum queue
        (and count towards ``x-delivery-limit``). The copy joins the back of its queue."""
        if not deliveries:
            return
        with self._session.lock:
            # stop the consumers of these queues first (the next lease consumes them again)
            queues = sorted({d.queue for d in deliveries})
            self._session.run(lambda ch: self._stop_pushed(ch, queues), "release")
            held = self._leases.take((d.receipt for d in deliveries), self._session.generation)
            if not held:
                return
            copies = [
                (
                    self.names.exchange,
                    entry.queue,
                    copy_of(entry.message, {BEFORE: entry.delivery_count - 1}),
                )
                for entry in held
            ]
            try:
                self._session.publish(copies, "release")
            except BaseException:
                for entry in held:
                    self._leases.add(self._receipt(entry), entry)
                raise
            self._session.run(lambda ch: self._ack_held(ch, held), "release")

    def retry_later(self, delivery: Delivery, message: Message) -> None:
        if self._foreign(delivery):
            self._send([message], "retry_later")
            self._note(delivery, None)
            return
        with self._session.lock:
            held = self._leases.take([delivery.receipt], self._session.generation)
            if not held:
                return
            try:
                self._send([message], "retry_later")
            except BaseException:
                self._leases.add(delivery.receipt, held[0])
                raise
            self._session.run(lambda ch: self._ack_held(ch, held), "retry_later")

    def retry_later_many(self, retries: Sequence[tuple[Delivery, Message]]) -> None:
        """The held ones' messages in one confirmed publish (one wait for the confirms, not
        one each), then their acks; a killed child's (foreign) ones as :meth:`retry_later`."""
        own: dict[str, Message] = {}
        for delivery, message in retries:
            if self._foreign(delivery):
                self.retry_later(delivery, message)
            else:
                own.setdefault(delivery.receipt, message)  # a receipt is retried once
        if not own:
            return
        with self._session.lock:
            generation = self._session.generation
            taken = [(r, h) for r in own for h in self._leases.take([r], generation)]
            if not taken:
                return
            try:
                self._send([own[receipt] for receipt, _ in taken], "retry_later")
            except BaseException:
                for receipt, held in taken:
                    self._leases.add(receipt, held)
                raise
            acked = [held for _, held in taken]
            self._session.run(lambda ch: self._ack_held(ch, acked), "retry_later")

    def dead_letter(self, delivery: Delivery, reason: str, detail: str = "") -> None:
        if self._foreign(delivery):
            self._note(delivery, str(reason), detail)
            return
        with self._session.lock:
            held = self._leases.take([delivery.receipt], self._session.generation)
            if not held:
                return
            try:
                self._bury(held[0], reason, detail)
            except BaseException:
                self._leases.add(delivery.receipt, held[0])
                raise

    def _bury(self, held: Held, reason: str, detail: str, *, swept: bool = False) -> None:
        """Publish ``held``'s message to the DLQ (confirmed), then ack it (``swept``: an
        expired lease, recorded as a departure too)."""
        extra: dict[str, object] = {
            REASON: str(reason),
            DETAIL: detail,
            DEAD_AT: time.time(),
            DELIVERIES: held.delivery_count,
        }
        if swept:
            extra[SWEPT] = 1
        copy = copy_of(held.message, extra)
        self._session.publish([(self.names.dlx, "", copy)], "dead_letter")
        self._session.run(lambda ch: self._ack_held(ch, [held]), "dead_letter")

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
                self._session.run(lambda ch: self._stop_pushed(ch, None), "return pushed messages")

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

        def requeue(channel: amqp.Channel) -> None:
            if generation == self._session.generation:
                self._session.settled.reject(channel, [h.tag for h in back], True)

        self._session.run(requeue, "sweep")
        return len(expired)

    # -- revocation ----------------------------------------------------------------------
    def revoke(self, ids: Iterable[str], ttl: float) -> None:
        for task_id in ids:
            fates.revoke(self.kv, task_id, ttl)

    def revoked(self, ids: Iterable[str]) -> set[str]:
        keys = {f"{fates.PREFIX}{i}": i for i in ids}
        return {keys[k] for k, v in self.kv.get_values(list(keys)).items() if fates.is_revoked(v)}

    # -- inspection and maintenance ------------------------------------------------------
    def _with_channel[T](self, action: Callable[[amqp.Channel], T], what: str) -> T:
        """``action`` on a short-lived channel of its own (browsing, passive declares)."""

        def run(_: amqp.Channel) -> T:
            self._topology.base(_)
            channel = self._session.connection().channel()
            try:
                return action(channel)
            finally:
                with contextlib.suppress(*CONNECTION_ERRORS):
                    channel.close()

        return self._session.run(run, what)

    def _ready(self, channel: amqp.Channel, queue: str) -> int:
        """Ready messages of ``queue`` and its lane; -1 if the queue does not exist."""
        count = _count(channel, self.names.queue(queue))
        if count < 0:
            return -1
        return count + max(_count(channel, self.names.lane(queue)), 0)

    def stats(self, queues: Sequence[str] | None = None) -> dict[str, QueueStats]:
        if queues is None:
            keys = self.kv.values(QUEUE_KEY)
            names = sorted(k[len(QUEUE_KEY) :] for k in keys)
        else:
            names = list(queues)
        dead = self._with_channel(lambda ch: deadletters.counts(ch, self.names.dead), "stats")
        pushed = self._session.run(lambda _: self._unleased(), "stats")
        out: dict[str, QueueStats] = {}
        for queue in names:
            ready = self._with_channel(functools.partial(self._ready, queue=queue), "stats")
            out[queue] = QueueStats(
                ready=max(ready, 0) + pushed.get(queue, 0),
                delayed=len(self.kv.values(f"{DELAYED_KEY}{queue}:")),
                leased=self._leases.count(queue),
                dead=dead.get(queue, 0),
            )
        return out

    def _unleased(self) -> dict[str, int]:
        """Messages pushed to this client and not leased yet, per queue (lock held): RabbitMQ
        counts them out of its ready ones, yet they wait for a lease like those."""
        current = [
            p for p in (self._pushed, self._lanes) if p.generation == self._session.generation
        ]
        if current:
            self._session.pump()
        out: dict[str, int] = {}
        for pushed in current:
            for queue, count in pushed.counts().items():
                out[queue] = out.get(queue, 0) + count
        return out

    def priority_counts(self, queues: Sequence[str] | None = None) -> dict[str, PriorityCounts]:
        names = list(self.stats()) if queues is None else list(dict.fromkeys(queues))
        dead = self._with_channel(lambda ch: counts.dead_by_priority(ch, self.names.dead), "stats")
        delayed = [item for _, item in self._markers(None)]
        return counts.split(names, delayed, self._leases.held(), dead)

    def dead_letters(self, limit: int = 100, queue: str | None = None) -> list[DeadLetter]:
        found = self._with_channel(
            lambda ch: deadletters.listing(ch, self.names.dead, limit, queue), "dead_letters"
        )
        # RabbitMQ's own dead-lettering (delivery limit) drops x-delivery-count
        most = self.options.max_deliveries
        return [
            dataclasses.replace(d, delivery_count=most)
            if d.reason == DeadLetterReason.WORKER_LOST and not d.delivery_count
            else d
            for d in found
        ]

    def replay_dead(self, ids: Sequence[str] | None = None) -> int:
        return self._with_channel(
            lambda ch: deadletters.settle(ch, self.names.dead, ids, self._send), "replay_dead"
        )

    def purge_dead(self, ids: Sequence[str] | None = None) -> int:
        return self._with_channel(
            lambda ch: deadletters.settle(ch, self.names.dead, ids, None), "purge_dead"
        )

    def purge(self, queues: Sequence[str]) -> int:
        """Move the ready messages of ``queues`` and their lanes into ``P.departures``
        (reason ``purged``): taken and republished in transactions of up to 500, each
        atomic."""

        def run(channel: amqp.Channel, queue: str, physical: str) -> int:
            count, moved = _count(channel, physical), 0
            if count <= 0:
                return 0
            channel.tx_select()
            while moved < count:
                msg = channel.basic_get(physical, no_ack=False)
                if msg is None:
                    break
                extra = {REASON: PURGED, QUEUE: queue}
                channel.basic_publish(copy_of(msg, extra), "", self.names.departures)
                channel.basic_ack(msg.delivery_info["delivery_tag"])
                moved += 1
                if moved % 500 == 0:
                    channel.tx_commit()
            channel.tx_commit()
            return moved

        return sum(
            self._with_channel(functools.partial(run, queue=q, physical=physical), "purge")
            for q in queues
            for physical in (self.names.queue(q), self.names.lane(q))
        )

    # -- departures ------------------------------------------------------------------------
    def take_departures(self, limit: int = 100) -> list[Departure]:
        def run(channel: amqp.Channel) -> list[Departure]:
            generation = self._session.generation
            stale = tags_of(self._departures.stale(), generation)
            # their bookkeeping failed: to be taken again
            self._session.settled.reject(channel, stale, True)
            out: list[Departure] = []
            while len(out) < limit:
                msg = channel.basic_get(self.names.departures, no_ack=False)
                if msg is None:
                    break
                tag = msg.delivery_info["delivery_tag"]
                departure = departure_of(msg, f"{generation}:{tag}")
                if departure is None:
                    self._session.settled.ack(channel, [tag])
                    continue
                self._departures.add(departure.receipt)
                out.append(departure)
            return out

        return self._session.run(run, "take_departures")

    def forget_departures(self, departures: Sequence[Departure]) -> None:
        held = self._departures.pop([d.receipt for d in departures])
        if not held:
            return

        def run(channel: amqp.Channel) -> None:
            self._session.settled.ack(channel, tags_of(held, self._session.generation))

        self._session.run(run, "forget_departures")

    def time(self) -> float:
        return time.time()

    def close(self) -> None:
        if self._reaper is not None:
            self._reaper.stop()
            self._reaper = None
        with contextlib.suppress(BrokerError), self._session.lock:
            if self._session.connected and self._pushed.generation == self._session.generation:
                self._session.run(lambda ch: self._stop_pushed(ch, None), "close")
        self._session.drop()
        self.close_kv()


def _first(message: Message) -> bool:
    """Whether ``message`` goes to its queue's first-served lane: delayed (a countdown or an
    eta, even one that passed) at the top priority."""
    delayed = message.countdown > 0 or message.eta is not None
    return delayed and clamp_priority(message.priority) == MAX_PRIORITY


def _count(channel: amqp.Channel, physical: str) -> int:
    """Ready messages of AMQP queue ``physical``; -1 if it does not exist (which closes
    ``channel``: nothing may use it after that)."""
    try:
        _, count, _ = channel.queue_declare(physical, passive=True)
    except amqp.exceptions.NotFound:
        return -1
    return int(count)
