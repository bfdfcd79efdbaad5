"""Redis broker (``redis://``, ``rediss://``, ``unix://``): sorted sets moved by Lua scripts.

Why not streams (the design's first suggestion)? Streams give delivery counts and server-side
blocking reads, but not the rest of the contract: XREADGROUP over one stream per priority band
returns entries from every stream at once, so "9 first, FIFO within a priority, across several
queues" needs a client-side merge with no way to hand back what was read too early; XCLAIM
always counts a delivery, so ``release()`` cannot return a message uncharged; lease deadlines
are idle times, so every heartbeat is one XCLAIM per message; delayed messages and dead
letters need sorted sets anyway. Here each operation is one script call for a whole batch:

* ``ready:<q>`` is a sorted set scored ``(9 - priority) * 1e14 + sequence`` with one global
  sequence, so the lowest score is the next message: exact priority and FIFO, merged across
  queues inside the script. ``delayed:<q>`` is scored by due time, ``leased:<q>`` by lease
  deadline (sweeping is a range query), ``dead:<q>`` by burial order; message fields (body,
  delivery count, ...) live in one hash per message. All times come from Redis ``TIME``.
* A receipt is ``<uid>:<n>:<priority>``, n counting the message's leases (never going down;
  a release is counted apart, so it charges no delivery): an ack, heartbeat or release with a
  receipt whose lease ran out and was handed to another worker changes nothing. The priority
  lets an ack uncount the lease in ``tally:<q>`` (per-priority counts of delayed, leased and
  dead messages, kept by the scripts: ``redis_counts``) without reading the message.
* Blocking: each queue has a wake-up list holding at most one token. Anything that makes
  work appear (publish, requeue, release, replay, a delayed message added) pushes it; an idle
  consumer BLPOPs the lists of its queues, with a timeout no later than the next delayed due
  time, and its next lease call queued behind the BLPOP (one round trip per wake-up), and a
  consumer that leaves ready work behind pushes the token on to the next one.
  Redis checks blocking timeouts on its ``hz`` tick (100 ms by default), so a delayed message
  with an idle consumer becomes ready within about that much of its due time; a publish
  wakes a consumer at once.

The layout of keys is described in ``redis_scripts/common.lua`` and their names are made in
``conveyor._redis_keys``: every key of a queue carries the queue's hash tag, so each script
call touches one queue and so one slot of a Redis Cluster (``redis+cluster://``), and queues
spread over its shards. Revocations are ``{<p>}:revoked:<id>``; ``kv`` keeps values under
``<p>:kv:`` and join sets under ``<p>:kv-join:`` (``conveyor.kv.redis``). Like any broker kept
in Redis it needs ``maxmemory-policy noeviction`` and AOF persistence to keep its promises.

What changes on Cluster (docs/scaling.md): a lease from several queues is one script call
per queue (each queue's share is chosen from a peek at their heads, so 9 first holds across
queues as of the peek, and exactly within a queue; FIFO within a priority holds within a
queue only); scripts cannot push the wake-up lists (one slot for the prefix, so a consumer
blocks on all its queues with one BLPOP), the client does after the call; the revoked flags
of leased ids are read in a second call.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import replace
from importlib.resources import files
from typing import Any, cast

from .._redis import (
    Calls,
    Client,
    ErrorMapper,
    Script,
    block_limit,
    connect,
    is_cluster,
    mget,
)
from .._redis_cluster import connections
from .._redis_keys import RedisKeys
from .._redis_urls import REDIS_SCHEMES
from ..exceptions import BrokerError, ConfigurationError
from ..kv.redis import RedisKeyValue
from ..limits.redis import RedisLimits
from ..streams.redis import RedisStreams
from . import redis_counts
from .base import (
    DEPARTURE_CLAIM,
    PUBLISH_DEDUPE_WINDOW,
    Broker,
    BrokerOptions,
    DeadLetter,
    Delivery,
    Departure,
    Message,
    PriorityCounts,
    QueueStats,
    Scheduled,
    clamp_priority,
)
from .redis_migrate import migrate_old_keys
from .redis_replies import _blob, _by_queue, _deliveries, _departures, _number, _text
from .redis_shares import lease_shares


def lua_source(*names: str) -> str:
    """Concatenated Lua files from ``conveyor/brokers/redis_scripts``."""
    folder = files("conveyor.brokers").joinpath("redis_scripts")
    return "\n".join(folder.joinpath(f"{name}.lua").read_text("utf-8") for name in names)


#: Messages per script call when publishing, sweeping or purging big batches.
CHUNK = 1000
#: Width of one priority's band of ready scores (``BAND`` in the scripts).
_BAND = 10**14
_SCRIPTS = (
    "ack_publish",
    "lease",
    "peek",
    "extend",
    "release",
    "dead_letter",
    "sweep",
    "dead_letters",
    "dead_move",
    "purge",
    "wake",
    "migrate",
    "scheduled",
    "scheduled_move",
    "departures",
    "priority_counts",
)
logger = logging.getLogger(__name__)


class RedisBroker(Broker):
    schemes = REDIS_SCHEMES
    lease_checks_revoked = True

    def __init__(self, url: str, options: BrokerOptions | None = None) -> None:
        super().__init__(url, options)
        self._client = connect(url, self.options.transport_options, BrokerError)
        self._errors = ErrorMapper(BrokerError, url, "Redis broker")
        self._cluster = is_cluster(self._client)
        #: The names of every key (:mod:`conveyor._redis_keys`).
        self.keys = RedisKeys(self.options.key_prefix, cluster=self._cluster)
        self._lease_ms = self.options.lease_timeout * 1000.0
        #: The parts of a lease call that depend only on its queues, by queue names (a
        #: worker asks for the same few): keys, the (queue, wake-up list) arguments, and each
        #: queue's position among them.
        self._lease_parts: dict[tuple[str, ...], tuple[list[str], list[bytes], dict[str, int]]] = {}
        self._block = block_limit(self._client)
        self._scripts = {
            name: Script(self._client, lua_source("common", name)) for name in _SCRIPTS
        }
        replicas = self.options.transport_options.get("wait_for_replicas") or 0
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
            raise ConfigurationError(
                "broker_transport_options['wait_for_replicas'] must be an int >= 0, "
                f"got {replicas!r}"
            )
        #: Replicas that must hold a publish before it returns (Redis WAIT), and for how long.
        self._wait_replicas = replicas
        self._wait_ms = int(1000 * float(self.options.transport_options.get("wait_timeout", 1.0)))
        self._connections = connections(self._client)
        #: Whether keys left by Conveyor before hash tags were looked for (first sweep).
        self._migrated = self._cluster
        keys = self.keys
        self.kv: RedisKeyValue = RedisKeyValue(
            self._client,
            self._errors,
            values=keys.spread("kv"),
            sets=keys.spread("kv-join"),
            index=keys.spread("kv-index"),
        )
        self._streams = RedisStreams(self._client, self._errors, prefix=keys.spread("stream"))
        self.limits: RedisLimits = RedisLimits(self._client, self._errors, keys.spread)

    @property
    def streams(self) -> RedisStreams:
        return self._streams

    # -- script calls ----------------------------------------------------------------------
    def _script(self, batch: Calls, name: str, queue: str, args: Sequence[Any]) -> None:
        """Add a call of script ``name`` about one queue (KEYS: its counter and base)."""
        keys = self.keys
        batch.script(self._scripts[name], (keys.seq(queue), keys.queue(queue)), args)

    def _wake_arg(self, queue: str) -> str:
        """The wake-up list a script pushes itself; '' on Cluster (another slot)."""
        return "" if self._cluster else self.keys.wake(queue)

    def _wake(self, batch: Calls, queues: Iterable[str]) -> None:
        """On Cluster, add calls waking the consumers of ``queues`` (scripts did elsewhere)."""
        if self._cluster:
            for queue in dict.fromkeys(queues):
                batch.script_later(self._scripts["wake"], (self.keys.wake(queue),), ())

    def _per_queue(self, name: str, deliveries: Sequence[Delivery], *args: Any) -> list[Any]:
        """One call of ``name`` per queue of ``deliveries`` (ARGV: ``args``, then receipts),
        in one round trip; the replies by queue order."""
        batch = Calls()
        queues = _by_queue(deliveries)
        for queue, receipts in queues.items():
            self._script(batch, name, queue, (*args, *receipts))
        with self._errors:
            return self._connections.execute(batch)

    # -- producing -----------------------------------------------------------------------
    def _queue_publish(
        self,
        batch: Calls,
        messages: Sequence[Message],
        acks: Sequence[Delivery] = (),
        *,
        dedupe: bool = True,
    ) -> list[str]:
        """Add script calls that ack ``acks`` and add ``messages`` (one call per queue and
        chunk); returns the queues published to. A plain publish (no acks, ``dedupe``) skips
        ids published to the same queue in the last ``PUBLISH_DEDUPE_WINDOW``."""
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
                (queue, "", len(receipts), "0", 0, *receipts),
            )
        for queue, queued in by_queue.items():
            batch.add((("SADD", keys.queues, queue),))
            for start in range(0, len(queued), CHUNK):
                receipts = ack_queues.get(queue, []) if start == 0 else []
                args: list[Any] = [
                    queue,
                    self._wake_arg(queue),
                    len(receipts),
                    "0",
                    dedupe_ms,
                    *receipts,
                ]
                # In bytes, as redis-py would encode them (it passes bytes on as they are).
                for m in queued[start : start + CHUNK]:
                    eta = b"-1.0" if m.eta is None else repr(m.eta * 1000.0).encode()
                    args += (
                        m.id.encode(),
                        b"%d" % clamp_priority(m.priority),
                        repr(m.countdown * 1000.0).encode(),
                        eta,
                        m.body,
                    )
                batch.script(
                    self._scripts["ack_publish"],
                    (keys.seq(queue), keys.queue(queue), keys.queue(queue)),
                    args,
                )
        self._wake(batch, by_queue)
        return list(by_queue)

    def publish(self, messages: Sequence[Message]) -> None:
        self.publish_with(Calls(), messages)

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

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        self.ack_with(Calls(), deliveries)

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
        args: list[Any] = [queue, self._wake_arg(queue), 1, "1", 0, *receipts]
        eta = -1.0 if message.eta is None else message.eta * 1000.0
        priority = clamp_priority(message.priority)
        args += (message.id, priority, message.countdown * 1000.0, eta, message.body)
        batch.add((("SADD", keys.queues, queue),))
        batch.script(
            self._scripts["ack_publish"],
            (keys.seq(queue), keys.queue(delivery.queue), keys.queue(queue)),
            args,
        )
        self._wake(batch, (queue,))
        with self._errors:
            self._connections.execute(batch)

    def dead_letter(self, delivery: Delivery, reason: str, detail: str = "") -> None:
        self.dead_letter_many([(delivery, reason, detail)])

    def dead_letter_many(self, letters: Sequence[tuple[Delivery, str, str]]) -> None:
        if not letters:
            return
        with self._errors:
            batch = Calls()
            for delivery, reason, detail in letters:
                args = (delivery.receipt, reason, detail)
                self._script(batch, "dead_letter", delivery.queue, args)
            self._connections.execute(batch)

    def _known_queues(self) -> list[str]:
        known = cast(set[bytes], self._client.smembers(self.keys.queues))
        return sorted(q.decode() for q in known)

    def _migrate_old_keys(self) -> None:
        """Move keys of a Conveyor before hash tags to today's names, once (first sweep)."""
        self._migrated = True
        migrate_old_keys(
            self._client, self._connections, self._scripts["migrate"], self.keys, logger
        )

    def sweep(self) -> int:
        moved = 0
        with self._errors:
            if not self._migrated:
                self._migrate_old_keys()
            queues = self._known_queues()
            while queues:
                batch = Calls()
                for queue in queues:
                    args = (self._wake_arg(queue), self.options.max_deliveries, CHUNK)
                    self._script(batch, "sweep", queue, args)
                replies = self._connections.execute(batch)
                woken = Calls()
                self._wake(woken, [q for q, r in zip(queues, replies, strict=True) if r[2]])
                self._connections.execute(woken)
                moved += sum(int(r[0]) for r in replies)
                queues = [q for q, r in zip(queues, replies, strict=True) if r[1]]
        return moved

    # -- revocation ----------------------------------------------------------------------
    def revoke(self, ids: Iterable[str], ttl: float) -> None:
        px = max(1, int(ttl * 1000))
        batch = Calls()
        batch.add(("SET", self.keys.revoked(task_id), b"1", "PX", px) for task_id in ids)
        with self._errors:
            self._connections.execute(batch)

    def revoked(self, ids: Iterable[str]) -> set[str]:
        wanted = list(ids)
        if not wanted:
            return set()
        keys = [self.keys.revoked(i) for i in wanted]
        with self._errors:
            if self._cluster:
                found = mget(self._client, keys)
            else:  # the worker's re-check before a start: its connections' fast path
                batch = Calls()
                batch.add([("MGET", *keys)])
                [found] = self._connections.execute(batch)
        return {i for i, v in zip(wanted, found, strict=True) if v is not None}

    # -- inspection and maintenance ------------------------------------------------------
    def stats(self, queues: Sequence[str] | None = None) -> dict[str, QueueStats]:
        with self._errors:
            if queues is None:
                queues = self._known_queues()
            batch = Calls()
            for queue in queues:
                kinds = ("ready", "delayed", "leased", "dead")
                batch.add(("ZCARD", self.keys.queue_key(queue, kind)) for kind in kinds)
            counts = self._connections.execute(batch)
        return {q: QueueStats(*counts[i * 4 : i * 4 + 4]) for i, q in enumerate(queues)}

    def oldest_ready(self, queues: Sequence[str]) -> dict[str, list[bytes]]:
        names = list(dict.fromkeys(queues))
        keys = self.keys
        with self._errors:
            now_ms = self.time() * 1000
            batch = Calls()
            for queue in names:
                ready = keys.queue_key(queue, "ready")
                for band in range(10):  # the lowest sequence of each priority's band
                    low, high = band * _BAND, (band + 1) * _BAND
                    batch.add((("ZRANGE", ready, low, f"({high}", "BYSCORE", "LIMIT", 0, 1),))
                delayed = keys.queue_key(queue, "delayed")
                batch.add((("ZRANGE", delayed, "-inf", now_ms, "BYSCORE", "LIMIT", 0, 1),))
            found = self._connections.execute(batch)
            uids = [
                (queue, _text(uid))
                for i, queue in enumerate(names)
                for hit in found[i * 11 : i * 11 + 11]
                for uid in hit
            ]
            reads = Calls()
            reads.add(("HGET", keys.queue_key(q, f"msg:{uid}"), "b") for q, uid in uids)
            bodies = self._connections.execute(reads)
        out: dict[str, list[bytes]] = {}
        for (queue, _), body in zip(uids, bodies, strict=True):
            if body is not None:
                out.setdefault(queue, []).append(_blob(body))
        return out

    def dead_letters(self, limit: int = 100, queue: str | None = None) -> list[DeadLetter]:
        if limit <= 0:
            return []
        with self._errors:
            queues = [queue] if queue else self._known_queues()
            batch = Calls()
            for name in queues:
                self._script(batch, "dead_letters", name, (limit,))
            replies = self._connections.execute(batch)
        found = [
            (
                DeadLetter(
                    id=_text(flat[i]),
                    queue=_text(flat[i + 1]),
                    body=_blob(flat[i + 2]),
                    reason=_text(flat[i + 3]),
                    detail=_text(flat[i + 4]),
                    dead_at=_number(flat[i + 5]),
                    delivery_count=int(_number(flat[i + 6])),
                ),
                _number(flat[i + 7]),
            )
            for flat in replies
            for i in range(0, len(flat) - 7, 8)
        ]
        # Oldest first: by burial time, then burial order (one sequence on a single server).
        found.sort(key=lambda pair: (pair[0].dead_at, pair[1]))
        return [letter for letter, _ in found[:limit]]

    def replay_dead(self, ids: Sequence[str] | None = None) -> int:
        return self._move_dead("replay", ids)

    def purge_dead(self, ids: Sequence[str] | None = None) -> int:
        return self._move_dead("purge", ids)

    def _move_dead(self, mode: str, ids: Sequence[str] | None) -> int:
        if ids is not None and not ids:
            return 0
        with self._errors:
            queues = self._known_queues()
            batch = Calls()
            for queue in queues:
                args = (self._wake_arg(queue), mode, "1" if ids is None else "0", *(ids or ()))
                self._script(batch, "dead_move", queue, args)
            replies = self._connections.execute(batch)
            woken = Calls()
            self._wake(woken, [q for q, r in zip(queues, replies, strict=True) if r[1]])
            self._connections.execute(woken)
        return sum(int(r[0]) for r in replies)

    def purge(self, queues: Sequence[str]) -> int:
        deleted = 0
        names = list(dict.fromkeys(queues))
        with self._errors:
            while names:
                batch = Calls()
                for queue in names:
                    self._script(batch, "purge", queue, (CHUNK,))
                replies = self._connections.execute(batch)
                deleted += sum(int(r[0]) for r in replies)
                names = [q for q, r in zip(names, replies, strict=True) if r[1]]
        return deleted

    # -- departures ------------------------------------------------------------------------
    def take_departures(self, limit: int = 100) -> list[Departure]:
        """Up to ``limit`` of each known queue's departures (one script call per queue)."""
        with self._errors:
            queues = self._known_queues()
            if not queues:
                return []
            batch = Calls()
            for queue in queues:
                args = ("take", max(limit, 1), int(DEPARTURE_CLAIM * 1000))
                self._script(batch, "departures", queue, args)
            replies = self._connections.execute(batch)
        return [d for q, r in zip(queues, replies, strict=True) for d in _departures(q, r)]

    def forget_departures(self, departures: Sequence[Departure]) -> None:
        uids: dict[str, list[str]] = {}
        for departure in departures:
            uid, _, queue = departure.receipt.partition(":")
            uids.setdefault(queue, []).append(uid)
        if not uids:
            return
        batch = Calls()
        for queue, some in uids.items():
            self._script(batch, "departures", queue, ("forget", *some))
        with self._errors:
            self._connections.execute(batch)

    # -- delayed messages (the dashboard) ---------------------------------------------------
    def scheduled(self, limit: int = 100, queue: str | None = None) -> list[Scheduled]:
        if limit <= 0:
            return []
        with self._errors:
            queues = [queue] if queue else self._known_queues()
            batch = Calls()
            for name in queues:
                self._script(batch, "scheduled", name, (limit,))
            replies = self._connections.execute(batch)
        found = [
            Scheduled(
                _text(flat[i]),
                _text(flat[i + 1]),
                _blob(flat[i + 2]),
                int(_number(flat[i + 3])),
                _number(flat[i + 4]) / 1000,
            )
            for flat in replies
            for i in range(0, len(flat) - 4, 5)
        ]
        found.sort(key=lambda message: message.due)
        return found[:limit]

    def run_scheduled(self, ids: Sequence[str]) -> int:
        return self._move_scheduled("run", ids)

    def cancel_scheduled(self, ids: Sequence[str]) -> int:
        return self._move_scheduled("cancel", ids)

    def _move_scheduled(self, mode: str, ids: Sequence[str]) -> int:
        """Make delayed messages ready now or delete them: one script call per queue (ids
        are not indexed by queue), in one round trip."""
        if not ids:
            return 0
        with self._errors:
            queues = self._known_queues()
            batch = Calls()
            for queue in queues:
                self._script(batch, "scheduled_move", queue, (self._wake_arg(queue), mode, *ids))
            replies = self._connections.execute(batch)
            woken = Calls()
            self._wake(woken, [q for q, r in zip(queues, replies, strict=True) if r[1]])
            self._connections.execute(woken)
        return sum(int(r[0]) for r in replies)

    def priority_counts(self, queues: Sequence[str] | None = None) -> dict[str, PriorityCounts]:
        def call(names: Sequence[str]) -> list[Any]:
            batch = Calls()
            for queue in names:
                self._script(batch, "priority_counts", queue, (redis_counts.RECOUNT_STEP,))
            return list(self._connections.execute(batch))

        with self._errors:
            names = list(dict.fromkeys(self._known_queues() if queues is None else queues))
            return redis_counts.priority_counts(names, call)

    def time(self) -> float:
        with self._errors:
            seconds, micros = self._client.time()
        return seconds + micros / 1_000_000

    # -- building blocks of RedisSettlement (conveyor.settlement.redis) -------------------
    @property
    def client(self) -> Client:
        """The redis-py client (its pool's settings say which server and user)."""
        return self._client

    def publish_with(
        self, first: Calls, messages: Sequence[Message], *, dedupe: bool = True
    ) -> None:
        """Send ``first`` (commands for this server, e.g. result records) and publish
        ``messages`` after them, in one round trip."""
        waits: list[int] = []
        if messages:
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
        reached = [int(replies[i]) for i in waits]
        if reached and min(reached) < self._wait_replicas:
            # On the primary, not yet on enough replicas: a failover now could lose it. The
            # producer's publish retry sends it again; the id dedupe keeps it single.
            shortfall = f"publish reached {min(reached)} of {self._wait_replicas} replicas"
            # A timeout (an OSError): publish retries treat it as passing, like a lost connection.
            raise BrokerError(f"{shortfall} within {self._wait_ms} ms (wait_for_replicas)") from (
                TimeoutError(shortfall)
            )

    def ack_with(self, first: Calls, deliveries: Sequence[Delivery]) -> None:
        """Send ``first`` and ack ``deliveries`` after them, in one round trip."""
        if deliveries:
            self._queue_publish(first, (), deliveries)
        with self._errors:
            self._connections.execute(first)

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

    def close(self) -> None:
        self._connections.close()
        self._client.close()
