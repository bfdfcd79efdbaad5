"""What every part of the Redis broker shares: the client and its connections, the key names,
the loaded scripts, and the helpers that add script calls to a batch."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from importlib.resources import files
from typing import Any, cast

from ..._redis import Client, ErrorMapper, block_limit, connect, is_cluster
from ..._redis_calls import Calls, Script
from ..._redis_cluster import connections
from ..._redis_keys import RedisKeys
from ...exceptions import BrokerError, ConfigurationError
from ...kv.redis import RedisKeyValue
from ...limits.redis import RedisLimits
from ...streams.redis import RedisStreams
from ..base import (
    Broker,
    BrokerOptions,
    Delivery,
)
from .replies import _by_queue


def lua_source(*names: str) -> str:
    """Concatenated Lua files from ``conveyor/brokers/redis/lua``."""
    folder = files("conveyor.brokers.redis").joinpath("lua")
    return "\n".join(folder.joinpath(f"{name}.lua").read_text("utf-8") for name in names)


#: What every broker script starts with: the helpers, then the dedupe and the ingress list.
PRELUDE = ("common", "ingress")


#: Scripts that also need the helpers of a staged bulk publish (``lua/staging.lua``).
STAGING = frozenset({"stage", "commit_stage", "abort_stage", "sweep"})


def script_source(name: str) -> str:
    """The source of broker script ``name``: the prelude (and ``lua/staging.lua`` for those
    in :data:`STAGING`), then ``lua/<name>.lua``."""
    if name in STAGING:
        return lua_source(*PRELUDE, "staging", name)
    return lua_source(*PRELUDE, name)


#: Messages per script call when publishing, sweeping or purging big batches.
CHUNK = 1000
#: Width of one priority's band of ready scores (``BAND`` in the scripts).
BAND = 10**14
SCRIPTS = (
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
    "absorb",
    "stage",
    "commit_stage",
    "abort_stage",
)
logger = logging.getLogger(__name__)


class RedisCore(Broker):
    """The state of a :class:`~conveyor.brokers.redis.RedisBroker` and its script helpers."""

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
        #: Each queue's ingress entry head and wake-up list (``Publishing._ingress_part``).
        self._ingress_parts: dict[str, tuple[bytes, str]] = {}
        self._block = block_limit(self._client)
        self._scripts = {name: Script(self._client, script_source(name)) for name in SCRIPTS}
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
        #: When this process last added each queue it published to to ``keys.queues``
        #: (time.monotonic()): see ``Publishing._register``.
        self._registered: dict[str, float] = {}

    @property
    def streams(self) -> RedisStreams:
        return self._streams

    # -- script calls ----------------------------------------------------------------------
    def _script(self, batch: Calls, name: str, queue: str, args: Sequence[Any]) -> None:
        """Add a call of script ``name`` about one queue (KEYS: its counter and base)."""
        keys = self.keys
        batch.script(self._scripts[name], (keys.seq(queue), keys.queue(queue)), args)

    def _absorb_first(self, batch: Calls) -> int:
        """Add a call queueing the ingress list (``lua/ingress.lua``) before reads of queue
        keys outside a script; how many replies it adds to the front of ``batch``'s."""
        if self._cluster:
            return 0
        batch.script(self._scripts["absorb"], (self.keys.shared("seq"),), ())
        batch.reads = True
        return 1

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

    def _known_queues(self) -> list[str]:
        known = cast(set[bytes], self._client.smembers(self.keys.queues))
        return sorted(q.decode() for q in known)

    def time(self) -> float:
        with self._errors:
            seconds, micros = self._client.time()
        return seconds + micros / 1_000_000

    # -- building blocks of RedisSettlement (conveyor.settlement.redis) -------------------
    @property
    def client(self) -> Client:
        """The redis-py client (its pool's settings say which server and user)."""
        return self._client

    def close(self) -> None:
        self._connections.close()
        self._client.close()
