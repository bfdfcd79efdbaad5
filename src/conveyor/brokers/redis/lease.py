"""Leasing on Redis (``lease.lua``): one script call leases from all of a consumer's queues,
acks riding along; an idle consumer blocks on its queues' wake-up lists with its next lease
call queued behind the BLPOP. Heartbeats (``extend``) and ``release`` are here too."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

from msgspec.structs import replace

from ..._redis_calls import Calls
from ..base import (
    Delivery,
)
from .core import CHUNK
from .publish import Publishing
from .replies import _by_queue, _deliveries
from .shares import lease_shares


class Leasing(Publishing):
    # -- consuming -----------------------------------------------------------------------
    def _lease_call(
        self, batch: Calls, names: Sequence[str], limit: int, acks: Sequence[Delivery] = ()
    ) -> None:
        """Add one lease script call over ``names`` (one queue on Cluster) that first acks
        ``acks`` (all of them of those queues)."""
        parts = self._lease_parts.get(tuple(names))
        if parts is None:
            if len(self._lease_parts) >= 64:
                self._lease_parts.clear()
            keys = self.keys
            # In bytes: redis-py's encoder passes them as they are (a lease over 50 queues
            # carries 100 of these).
            queue_args = [arg.encode() for q in names for arg in (q, self._wake_arg(q))]
            position = {queue: k for k, queue in enumerate(names, 1)}
            script_keys = [keys.seq(names[0]), *(keys.queue(q) for q in names)]
            parts = self._lease_parts[tuple(names)] = (script_keys, queue_args, position)
        script_keys, queue_args, position = parts
        revoked = "" if self._cluster else self.keys.revoked()
        args: list[Any] = [limit, self._lease_ms, max(limit, CHUNK), revoked, *queue_args]
        for delivery in acks:
            args += (position[delivery.queue], delivery.receipt)
        batch.script(self._scripts["lease"], script_keys, args)

    def lease(self, queues: Sequence[str], limit: int, wait: float) -> list[Delivery]:
        if limit <= 0 or not queues:
            return []
        return self._lease(list(dict.fromkeys(queues)), limit, wait)

    def _lease(
        self,
        names: list[str],
        limit: int,
        wait: float,
        first: Calls | None = None,
        acks: Sequence[Delivery] = (),
    ) -> list[Delivery]:
        wake_keys = [self.keys.wake(q) for q in names]
        deadline = time.monotonic() + wait
        with self._errors:
            while True:
                found, next_due = self._lease_once(names, limit, first, acks)
                first, acks = None, ()
                if found:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                block = min(remaining, self._block)
                if next_due >= 0:  # milliseconds until the next delayed message is due
                    block = min(block, next_due / 1000.0)
                # Redis counts whole milliseconds, and 0 would mean "forever".
                seconds = max(1, math.ceil(block * 1000)) / 1000
                if self._cluster:  # the wake-up lists live in another slot than the queues
                    self._client.blpop(wake_keys, seconds)
                else:
                    # The next lease rides behind the BLPOP: Redis runs it as soon as the pop
                    # returns (woken or timed out), so a wake-up costs no second round trip.
                    first = Calls()
                    first.add([("BLPOP", *wake_keys, seconds)])

    def _lease_once(
        self, names: list[str], limit: int, first: Calls | None, acks: Sequence[Delivery]
    ) -> tuple[list[Delivery], float]:
        """Lease once (after sending ``first`` and acking ``acks``): the deliveries, or none
        and the milliseconds until the next delayed message is due (-1: none)."""
        batch = first if first is not None else Calls()
        single = not self._cluster or len(names) == 1
        riding = [d for d in acks if d.queue in names] if single else []
        if len(riding) < len(acks):  # acks of other queues: calls of their own, first
            self._queue_publish(batch, (), [d for d in acks if not single or d.queue not in names])
        if single:
            self._lease_call(batch, names, limit, riding)
            reply = self._connections.execute(batch)[-1]
            if len(reply) == 1:
                return [], float(reply[0])
            leased = {names[0]: reply} if self._cluster else {}
            return self._leased(leased, [] if self._cluster else [reply]), -1
        # Cluster, several queues: each queue's share of the limit from a peek at their heads.
        start = len(batch)
        for queue in names:
            self._script(batch, "peek", queue, (limit, max(limit, CHUNK)))
        peeks = self._connections.execute(batch)[start:]
        shares, next_due = lease_shares(names, peeks, limit)
        if not shares:
            return [], next_due
        calls = Calls()
        for queue, share in shares.items():
            self._lease_call(calls, [queue], share)
        replies = self._connections.execute(calls)
        found = self._leased(dict(zip(shares, replies, strict=True)), [])
        return sorted(found, key=lambda d: -d.priority), -1

    def _leased(self, by_queue: dict[str, list[Any]], plain: list[list[Any]]) -> list[Delivery]:
        """Deliveries of lease replies; on Cluster (``by_queue``) their revoked flags are read
        and the consumers of queues with work left are woken, in one more round trip."""
        found = [d for reply in plain for d in _deliveries(reply)]
        if not by_queue:
            return found
        for reply in by_queue.values():
            found += _deliveries(reply)
        batch = Calls()
        self._wake(batch, [q for q, reply in by_queue.items() if len(reply) > 1 and reply[0]])
        if found:
            batch.add((("MGET", *(self.keys.revoked(d.id) for d in found)),))
        replies = self._connections.execute(batch)
        if found:
            flags = replies[-1]
            found = [
                replace(delivery, revoked=flag is not None)
                for delivery, flag in zip(found, flags, strict=True)
            ]
        return found

    def extend(self, deliveries: Sequence[Delivery]) -> None:
        if deliveries:
            self._per_queue("extend", deliveries, self._lease_ms)

    def release(self, deliveries: Sequence[Delivery]) -> None:
        if not deliveries:
            return
        batch = Calls()
        for queue, receipts in _by_queue(deliveries).items():
            self._script(batch, "release", queue, (self._wake_arg(queue), *receipts))
        self._wake(batch, _by_queue(deliveries))
        with self._errors:
            self._connections.execute(batch)

    def lease_with(
        self,
        first: Calls,
        acks: Sequence[Delivery],
        queues: Sequence[str],
        limit: int,
        wait: float,
    ) -> list[Delivery]:
        """Send ``first``, then one lease script call that acks ``acks`` before it leases, in
        one round trip (on Cluster a lease from several queues takes two, and acks go in calls
        of their own); then wait for messages as :meth:`lease` does. Everything but the wait
        is done before the call blocks. With ``limit <= 0`` or no queues it only acks."""
        if limit <= 0 or not queues:
            self.ack_with(first, acks)
            return []
        return self._lease(list(dict.fromkeys(queues)), limit, wait, first, acks)
