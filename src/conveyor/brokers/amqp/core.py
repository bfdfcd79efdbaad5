"""The state of :class:`~.broker.AMQPBroker` and its publishing path, with the settling
primitives the lease (:mod:`.holding`), settle (:mod:`.settling`) and admin (:mod:`.admin`)
halves share."""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Sequence

import amqp

from ...exceptions import ConfigurationError, ConveyorError
from ...kv import KeyValue
from ...limits.kvstores import limits_on
from ...results import create_result_store
from ...results.base import ResultStore
from ..base import (
    MAX_PRIORITY,
    PUBLISH_DEDUPE_WINDOW,
    Broker,
    BrokerOptions,
    Delivery,
    Message,
    clamp_priority,
)
from . import attempts, fates, run_now
from .connection import CONNECTION_ERRORS, Connector
from .convert import DEAD_AT, DELIVERIES, DETAIL, REASON, copy_of, to_amqp
from .departures import SWEPT, Taken
from .leases import Held, Leases, Reaper, logger
from .pushed import Pushed
from .run_now import RunNow
from .scheduled import DELAYED_KEY, DelayedMarkers
from .scheduled import marker as delayed_marker
from .session import Session
from .streams import KeptStreams
from .topology import LEVELS, TICK, Names, Topology, delay_routing_key, ticks

#: kv key of a queue name this prefix has used (stats() of every queue).
QUEUE_KEY = "amqp-queue:"


def _after_fork(reference: weakref.ref[AMQPCore]) -> None:
    broker = reference()
    if broker is not None:
        broker._after_fork()


class AMQPCore(KeptStreams, RunNow, DelayedMarkers, Broker):
    """Connections, kv, topology and publishing (the base of :class:`~.broker.AMQPBroker`)."""

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
        self._watch = fates.Watch(self.kv)
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
        self._watch = fates.Watch(self.kv)
        self._reaper = None
        self._reaper_lock = threading.Lock()
        self._published_lock = threading.Lock()

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

    def _ack_tags(self, channel: amqp.Channel, tags: Sequence[int], generation: int) -> None:
        """Ack ``tags`` of the work channel of connection ``generation`` (a run of them in
        one frame, :mod:`.acks`); nothing if that connection is gone (RabbitMQ put them
        back)."""
        if generation == self._session.generation:
            self._session.settled.ack(channel, tags)

    def _ack_held(self, channel: amqp.Channel, held: Sequence[Held]) -> None:
        generation = self._session.generation
        self._session.settled.ack(channel, [h.tag for h in held if h.generation == generation])
        if recorded := [h.message_id for h in held if h.recorded]:
            try:
                attempts.forget(self.kv, recorded)  # settled: its kept count is done
            except ConveyorError as exc:  # the record expires; the message is settled
                logger.warning("could not delete kept delivery counts: %s", exc)

    def _receipt(self, held: Held) -> str:
        return f"{self._uid}:{held.generation}:{held.tag}"

    def _foreign(self, delivery: Delivery) -> bool:
        """Whether ``delivery`` was leased by another client (a killed child's, settled by
        its supervisor) rather than being a stale receipt of this one."""
        return delivery.receipt.split(":", 1)[0] != self._uid

    def _note(self, delivery: Delivery, reason: str | None, detail: str = "") -> None:
        note = fates.Note(delivery.delivery_count, reason, detail)
        fates.leave_notes(self.kv, [(delivery.id, note)])

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


def _first(message: Message) -> bool:
    """Whether ``message`` goes to its queue's first-served lane: delayed (a countdown or an
    eta, even one that passed) at the top priority."""
    delayed = message.countdown > 0 or message.eta is not None
    return delayed and clamp_priority(message.priority) == MAX_PRIORITY
