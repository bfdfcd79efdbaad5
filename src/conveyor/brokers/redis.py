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
* A receipt is ``<uid>:<n>``, n counting the message's leases (never going down; a release
  is counted apart, so it charges no delivery): an ack, heartbeat or release with a receipt
  whose lease ran out and was handed to another worker changes nothing.
* Blocking: each queue has a wake-up list holding at most one token. Anything that makes
  work appear (publish, requeue, release, replay, a delayed message added) pushes it; an idle
  consumer BLPOPs the lists of its queues, with a timeout no later than the next delayed due
  time, and a consumer that leaves ready work behind pushes the token on to the next one.
  Redis checks blocking timeouts on its ``hz`` tick (100 ms by default), so a delayed message
  with an idle consumer becomes ready within about that much of its due time; a publish
  wakes a consumer at once.

The layout of keys is described in ``redis_scripts/common.lua``; besides those, revocations are
``<p>:revoked:<id>`` and ``kv`` keeps values under ``<p>:kv:`` and join sets under
``<p>:kv-join:`` (``conveyor.kv.redis``). Scripts build key names from the prefix, so the
broker needs a single Redis server (not Cluster), and like any broker kept in Redis it needs
``maxmemory-policy noeviction`` and AOF persistence to keep its promises.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from importlib.resources import files
from typing import TYPE_CHECKING, Any, cast

from .._redis import (
    Calls,
    Connections,
    ErrorMapper,
    Script,
    block_limit,
    connect,
)
from .._redis_urls import REDIS_SCHEMES
from ..exceptions import BrokerError, ConfigurationError
from ..kv.redis import RedisKeyValue
from ..limits.redis import RedisLimits
from ..streams.redis import RedisStreams
from .base import (
    PUBLISH_DEDUPE_WINDOW,
    Broker,
    BrokerOptions,
    DeadLetter,
    Delivery,
    Message,
    QueueStats,
    clamp_priority,
)

if TYPE_CHECKING:
    import redis


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
    "extend",
    "release",
    "dead_letter",
    "sweep",
    "dead_letters",
    "dead_move",
    "purge",
)


class RedisBroker(Broker):
    schemes = REDIS_SCHEMES
    lease_checks_revoked = True

    def __init__(self, url: str, options: BrokerOptions | None = None) -> None:
        super().__init__(url, options)
        self._client = connect(url, self.options.transport_options)
        self._errors = ErrorMapper(BrokerError, url, "Redis broker")
        self._prefix = self.options.key_prefix
        self._lease_ms = self.options.lease_timeout * 1000.0
        self._block = block_limit(self._client)
        self._scripts = {
            name: Script(self._client, lua_source("common", name)) for name in _SCRIPTS
        }
        self._shared: tuple[object, bool] = (None, False)
        replicas = self.options.transport_options.get("wait_for_replicas") or 0
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
            raise ConfigurationError(
                "broker_transport_options['wait_for_replicas'] must be an int >= 0, "
                f"got {replicas!r}"
            )
        #: Replicas that must hold a publish before it returns (Redis WAIT), and for how long.
        self._wait_replicas = replicas
        self._wait_ms = int(1000 * float(self.options.transport_options.get("wait_timeout", 1.0)))
        self._connections = Connections(self._client)
        prefix = self._prefix
        self.kv: RedisKeyValue = RedisKeyValue(
            self._client, self._errors, values=f"{prefix}:kv:", sets=f"{prefix}:kv-join:"
        )
        self._streams = RedisStreams(self._client, self._errors, prefix=f"{prefix}:stream:")
        self.limits: RedisLimits = RedisLimits(self._client, self._errors, self._key)

    @property
    def streams(self) -> RedisStreams:
        return self._streams

    def _key(self, kind: str, name: str) -> str:
        return f"{self._prefix}:{kind}:{name}"

    def _run(self, name: str, *args: Any) -> Any:
        return self._connections.call(self._scripts[name], (self._prefix, *args))

    # -- producing -----------------------------------------------------------------------
    def _queue_publish(
        self,
        batch: Calls,
        messages: Sequence[Message],
        acks: Sequence[Delivery] = (),
        *,
        if_held: bool = False,
    ) -> None:
        """Add script calls that ack ``acks`` (in the first call) and add ``messages``. A
        plain publish (no acks) skips ids published in the last ``PUBLISH_DEDUPE_WINDOW``."""
        dedupe = 0 if acks or if_held else int(PUBLISH_DEDUPE_WINDOW * 1000)
        for start in range(0, max(len(messages), 1), CHUNK):
            first = start == 0
            args: list[Any] = [
                self._prefix,
                len(acks) if first else 0,
                "1" if if_held else "0",
                dedupe,
            ]
            if first:
                args += _receipts(acks)
            for m in messages[start : start + CHUNK]:
                eta = -1.0 if m.eta is None else m.eta * 1000.0
                args += (m.id, m.queue, clamp_priority(m.priority), m.countdown * 1000.0, eta)
                args.append(m.body)
            batch.script(self._scripts["ack_publish"], args)

    def publish(self, messages: Sequence[Message]) -> None:
        self.publish_with(Calls(), messages)

    # -- consuming -----------------------------------------------------------------------
    def _lease_args(self, names: list[str], limit: int, acks: Sequence[Delivery]) -> list[Any]:
        return [
            self._prefix,
            limit,
            self._lease_ms,
            max(limit, CHUNK),
            len(acks),
            *_receipts(acks),
            *names,
        ]

    def lease(self, queues: Sequence[str], limit: int, wait: float) -> list[Delivery]:
        if limit <= 0 or not queues:
            return []
        return self._lease(list(dict.fromkeys(queues)), limit, wait)

    def _lease(
        self,
        names: list[str],
        limit: int,
        wait: float,
        acks: Sequence[Delivery] = (),
        first: Calls | None = None,
    ) -> list[Delivery]:
        script, connections = self._scripts["lease"], self._connections
        args = self._lease_args(names, limit, ())
        wake_keys = [self._key("wake", q) for q in names]
        deadline = time.monotonic() + wait
        if first is None:
            first = Calls()
        first.script(script, self._lease_args(names, limit, acks) if acks else args)
        with self._errors:
            reply = connections.execute(first)[-1]
            while True:
                if len(reply) > 1:
                    return _deliveries(reply)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return []
                block = min(remaining, self._block)
                if reply[0] >= 0:  # milliseconds until the next delayed message is due
                    block = min(block, reply[0] / 1000.0)
                # Redis counts whole milliseconds, and 0 would mean "forever".
                self._client.blpop(wake_keys, max(1, math.ceil(block * 1000)) / 1000)
                reply = connections.call(script, args)

    def ack(self, deliveries: Sequence[Delivery]) -> None:
        self.ack_with(Calls(), deliveries)

    def extend(self, deliveries: Sequence[Delivery]) -> None:
        if deliveries:
            with self._errors:
                self._run("extend", self._lease_ms, *_receipts(deliveries))

    def release(self, deliveries: Sequence[Delivery]) -> None:
        if deliveries:
            with self._errors:
                self._run("release", *_receipts(deliveries))

    def retry_later(self, delivery: Delivery, message: Message) -> None:
        batch = Calls()
        self._queue_publish(batch, (message,), (delivery,), if_held=True)
        with self._errors:
            self._connections.execute(batch)

    def dead_letter(self, delivery: Delivery, reason: str, detail: str = "") -> None:
        with self._errors:
            self._run("dead_letter", delivery.queue, delivery.receipt, str(reason), detail)

    def sweep(self) -> int:
        moved = 0
        with self._errors:
            while True:
                count, more = self._run("sweep", self.options.max_deliveries, CHUNK)
                moved += int(count)
                if not more:
                    return moved

    # -- revocation ----------------------------------------------------------------------
    def revoke(self, ids: Iterable[str], ttl: float) -> None:
        px = max(1, int(ttl * 1000))
        with self._errors:
            pipe = self._client.pipeline(transaction=False)
            for task_id in ids:
                pipe.set(self._key("revoked", task_id), b"1", px=px)
            pipe.execute()

    def revoked(self, ids: Iterable[str]) -> set[str]:
        wanted = list(ids)
        if not wanted:
            return set()
        with self._errors:
            found = self._client.mget([self._key("revoked", i) for i in wanted])
        return {i for i, v in zip(wanted, found, strict=True) if v is not None}

    # -- inspection and maintenance ------------------------------------------------------
    def stats(self, queues: Sequence[str] | None = None) -> dict[str, QueueStats]:
        with self._errors:
            if queues is None:
                known = cast(set[bytes], self._client.smembers(f"{self._prefix}:queues"))
                queues = sorted(q.decode() for q in known)
            pipe = self._client.pipeline(transaction=False)
            for queue in queues:
                for kind in ("ready", "delayed", "leased", "dead"):
                    pipe.zcard(self._key(kind, queue))
            counts = pipe.execute()
        return {q: QueueStats(*counts[i * 4 : i * 4 + 4]) for i, q in enumerate(queues)}

    def oldest_ready(self, queues: Sequence[str]) -> dict[str, list[bytes]]:
        names = list(dict.fromkeys(queues))
        with self._errors:
            now_ms = self.time() * 1000
            pipe = self._client.pipeline(transaction=False)
            for queue in names:
                ready = self._key("ready", queue)
                for band in range(10):  # the lowest sequence of each priority's band
                    low, high = band * _BAND, (band + 1) * _BAND
                    pipe.zrangebyscore(ready, low, f"({high}", start=0, num=1)
                pipe.zrangebyscore(self._key("delayed", queue), "-inf", now_ms, start=0, num=1)
            found = pipe.execute()
            uids = [
                (queue, _text(uid))
                for i, queue in enumerate(names)
                for hit in found[i * 11 : i * 11 + 11]
                for uid in hit
            ]
            for _, uid in uids:
                pipe.hget(f"{self._prefix}:msg:{uid}", "b")
            bodies = pipe.execute() if uids else []
        out: dict[str, list[bytes]] = {}
        for (queue, _), body in zip(uids, bodies, strict=True):
            if body is not None:
                out.setdefault(queue, []).append(_blob(body))
        return out

    def dead_letters(self, limit: int = 100, queue: str | None = None) -> list[DeadLetter]:
        if limit <= 0:
            return []
        with self._errors:
            flat = self._run("dead_letters", limit, queue or "")
        return [
            DeadLetter(
                id=_text(flat[i]),
                queue=_text(flat[i + 1]),
                body=_blob(flat[i + 2]),
                reason=_text(flat[i + 3]),
                detail=_text(flat[i + 4]),
                dead_at=_number(flat[i + 5]),
                delivery_count=int(_number(flat[i + 6])),
            )
            for i in range(0, len(flat) - 6, 7)
        ]

    def replay_dead(self, ids: Sequence[str] | None = None) -> int:
        return self._move_dead("replay", ids)

    def purge_dead(self, ids: Sequence[str] | None = None) -> int:
        return self._move_dead("purge", ids)

    def _move_dead(self, mode: str, ids: Sequence[str] | None) -> int:
        if ids is not None and not ids:
            return 0
        with self._errors:
            return int(self._run("dead_move", mode, "1" if ids is None else "0", *(ids or ())))

    def purge(self, queues: Sequence[str]) -> int:
        if not queues:
            return 0
        deleted = 0
        with self._errors:
            while True:
                count, more = self._run("purge", CHUNK, *dict.fromkeys(queues))
                deleted += int(count)
                if not more:
                    return deleted

    def time(self) -> float:
        with self._errors:
            seconds, micros = self._client.time()
        return seconds + micros / 1_000_000

    # -- building blocks of RedisSettlement (conveyor.settlement.redis) -------------------
    @property
    def client(self) -> redis.Redis:
        """The redis-py client (its pool's settings say which server and user)."""
        return self._client

    def publish_with(self, first: Calls, messages: Sequence[Message]) -> None:
        """Send ``first`` (commands for this server, e.g. result records) and publish
        ``messages`` after them, in one round trip."""
        if messages:
            self._queue_publish(first, messages)
            if self._wait_replicas:
                first.add((("WAIT", self._wait_replicas, self._wait_ms),))
        with self._errors:
            replies = self._connections.execute(first)
        if messages and self._wait_replicas and int(replies[-1]) < self._wait_replicas:
            # On the primary, not yet on enough replicas: a failover now could lose it. The
            # producer's publish retry sends it again; the id dedupe keeps it single.
            shortfall = f"publish reached {int(replies[-1])} of {self._wait_replicas} replicas"
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
        """Send ``first``, then one lease script call that acks ``acks`` before it leases,
        in one round trip; then wait for messages as :meth:`lease` does. Everything but the
        wait is done before the call blocks. With ``limit <= 0`` or no queues it only acks."""
        if limit <= 0 or not queues:
            self.ack_with(first, acks)
            return []
        return self._lease(list(dict.fromkeys(queues)), limit, wait, acks, first)

    def close(self) -> None:
        self._connections.close()
        self._client.close()


def _deliveries(reply: list[Any]) -> list[Delivery]:
    # The lease script checked every field it returns (see message_problem in common.lua);
    # the parsing is total all the same.
    return [
        Delivery(
            id=_text(reply[i + 1]),
            queue=_text(reply[i + 2]),
            body=_blob(reply[i + 4]),
            priority=int(_number(reply[i + 3])),
            receipt=_text(reply[i]),
            delivery_count=int(_number(reply[i + 5])),
            revoked=reply[i + 6] == 1,
        )
        for i in range(1, len(reply) - 6, 7)
    ]


def _text(value: object) -> str:
    """A reply field as text (never raising: bytes that are not UTF-8 are replaced)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


def _blob(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    return b"" if value is None else str(value).encode()


def _number(value: object) -> float:
    """A reply field as a finite number, 0 when it is not one."""
    if isinstance(value, int):
        return value
    try:
        number = float(_text(value))
    except ValueError:
        return 0.0
    return number if math.isfinite(number) else 0.0


def _receipts(deliveries: Sequence[Delivery]) -> list[str]:
    args: list[str] = []
    for delivery in deliveries:
        args += (delivery.queue, delivery.receipt)
    return args
