"""Settling held messages on RabbitMQ (a mixin of :class:`~.broker.AMQPBroker`): acks in runs
(:mod:`.acks`), put-backs and retries as confirmed copies before the ack of the original
(a ``basic.reject`` would charge a delivery on a quorum queue), dead letters, a killed
child's receipts as notes (:mod:`.fates`), and revocations."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import replace

import amqp

from ..base import Delivery, Message
from . import fates
from .convert import BEFORE, copy_of
from .holding import Holding
from .leases import Held


class Settling(Holding):
    """``ack``, ``release``, ``retry_later``, ``dead_letter``, ``extend`` and revocations."""

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
        foreign = [d for d in deliveries if self._foreign(d)]
        if foreign:  # a dead child's, given back by its supervisor
            released = fates.Note(0, None, "", released=True)
            notes = [(d.id, replace(released, delivery_count=d.delivery_count)) for d in foreign]
            fates.leave_notes(self.kv, notes)
            deliveries = [d for d in deliveries if not self._foreign(d)]
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

    def revoke(self, ids: Iterable[str], ttl: float) -> None:
        fates.revoke(self.kv, list(ids), ttl)

    def revoked(self, ids: Iterable[str]) -> set[str]:
        keys = {f"{fates.PREFIX}{i}": i for i in ids}
        return {keys[k] for k, v in self.kv.get_values(list(keys)).items() if fates.is_revoked(v)}
