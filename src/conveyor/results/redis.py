"""Redis result store (``redis://``, ``rediss://``, ``unix://``, Sentinel and Cluster URLs).

Keys, under the prefix: ``result:<id>`` (the JSON record, expiring after ``expires``),
``result-wake:<id>`` (a short-lived list that gets a token when a ready record is stored),
``join:<key>`` and ``value:<key>`` (join sets, small values and claims of ``kv``).

``wait()`` reads the record and, if it is not ready, blocks on the wake list with BLMOVE from
the list to itself, with a GET of the record queued behind it (one round trip per wake-up): the
token stays in place, so every waiter wakes, and a waiter that arrives later finds the ready
record on its first read. No polling; TTLs are Redis' own.

Every key belongs to one task id or kv key and carries no hash tag: on Redis Cluster they
spread over the shards by their whole name, and reads of many (``get_many``) are split per slot.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

from .. import states
from .._redis import Client, ErrorMapper, block_limit, connect, is_cluster, mget
from .._redis_calls import Calls, Command
from .._redis_cluster import connections
from .._redis_keys import RedisKeys
from .._redis_urls import REDIS_SCHEMES
from ..exceptions import ResultStoreError
from ..kv.redis import RedisKeyValue
from .base import ResultRecord, ResultStore, decode_record, encode_record

#: How long a wake token outlives the store of a ready record. Waiters read the record before
#: blocking, so it only has to bridge that gap (and a waiter re-reads every second anyway);
#: short, because every ready task leaves one behind.
WAKE_TTL_MS = 10_000
#: How many ids of QUEUED records written by this store :meth:`RedisResultStore.wait` knows
#: (forgotten all at once beyond that: their waits then read first, as for any other id).
QUEUED_MEMORY = 1024


class RedisResultStore(ResultStore):
    schemes = REDIS_SCHEMES

    def __init__(
        self,
        url: str,
        *,
        expires: float | None = 86400.0,
        key_prefix: str = "conveyor",
        transport_options: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(url, expires=expires, key_prefix=key_prefix)
        self.client: Client = connect(url, transport_options, ResultStoreError)
        self._connections = connections(self.client)
        self._keys = RedisKeys(key_prefix)
        self._errors = ErrorMapper(ResultStoreError, url, "Redis result store")
        self._px = None if expires is None else _ms(expires)
        self._wake_px = WAKE_TTL_MS if self._px is None else min(WAKE_TTL_MS, self._px)
        self._block = block_limit(self.client)
        self._cluster = is_cluster(self.client)
        #: When this store wrote the QUEUED record of a task (monotonic seconds), by id.
        self._queued: dict[str, float] = {}
        self.kv: RedisKeyValue = RedisKeyValue(
            self.client,
            self._errors,
            values=self._keys.spread("value"),
            sets=self._keys.spread("join"),
            index=self._keys.spread("index"),
        )

    def _key(self, kind: str, name: str) -> str:
        return self._keys.spread(kind, name)

    def store_commands(self, records: Sequence[ResultRecord]) -> list[Command]:
        """The commands of :meth:`store` (RedisSettlement sends them with the broker's)."""
        commands: list[Command] = []
        expiry = () if self._px is None else ("PX", self._px)
        queued = self._queued
        if len(queued) >= QUEUED_MEMORY:
            queued.clear()
        now = time.monotonic()
        for record in records:
            if record.state == states.QUEUED:
                queued[record.id] = now
            commands.append(("SET", self._key("result", record.id), encode_record(record), *expiry))
            if record.ready:
                wake = self._key("result-wake", record.id)
                commands.append(("RPUSH", wake, b"1"))
                commands.append(("PEXPIRE", wake, self._wake_px))
        return commands

    def store(self, records: Sequence[ResultRecord]) -> None:
        if not records:
            return
        calls = Calls()
        calls.add(self.store_commands(records))
        with self._errors:
            self._connections.execute(calls)

    def get(self, task_id: str) -> ResultRecord | None:
        with self._errors:
            data = self.client.get(self._key("result", task_id))
        return None if data is None else decode_record(data)

    def get_many(self, task_ids: Sequence[str]) -> list[ResultRecord | None]:
        if not task_ids:
            return []
        with self._errors:
            found = mget(self.client, [self._key("result", i) for i in task_ids])
        return [None if data is None else decode_record(data) for data in found]

    def wait(self, task_id: str, timeout: float | None) -> ResultRecord | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        woken = False
        record, read = None, False
        if not self._just_queued(task_id) or (timeout is not None and timeout <= 0):
            record, read = self.get(task_id), True
        while True:
            if record is not None and record.ready:
                return record
            remaining = self._block if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                return record if read else self.get(task_id)
            block = math.ceil(min(remaining, self._block) * 1000) / 1000
            woken, record = self._block_and_read(task_id, block, woken)
            read = True

    def _just_queued(self, task_id: str) -> bool:
        """Whether this store wrote the task's QUEUED record moments ago: then the task is
        most likely still running, and if it finished since, the wake token of its ready
        record (pushed after the QUEUED write, kept ``WAKE_TTL_MS``) is still there - so
        :meth:`wait` blocks at once, without reading the record first."""
        queued_at = self._queued.get(task_id)
        return queued_at is not None and time.monotonic() - queued_at < self._wake_px / 2000

    def _block_and_read(
        self, task_id: str, block: float, woken: bool
    ) -> tuple[bool, ResultRecord | None]:
        """Block on the wake list (after taking a token an earlier ready state left, so as
        not to spin on it), then read the record: whether a token came, and the record."""
        wake = self._key("result-wake", task_id)
        if self._cluster:  # the record and its wake list live in different slots
            with self._errors:
                if woken:
                    self.client.lpop(wake)
                moved = self.client.blmove(wake, wake, block, "RIGHT", "LEFT")  # type: ignore[arg-type]  # redis-py types the timeout as int; Redis takes fractional seconds
            return moved is not None, self.get(task_id)
        # One round trip: the GET is queued behind the BLMOVE, so Redis reads the record as
        # soon as the token arrives (or the block times out).
        calls = Calls()
        if woken:
            calls.add([("LPOP", wake)])
        calls.add([("BLMOVE", wake, wake, "RIGHT", "LEFT", block)])
        calls.add([("GET", self._key("result", task_id))])
        with self._errors:
            *_, moved, data = self._connections.execute(calls)
        return moved is not None, None if data is None else decode_record(data)

    def forget(self, task_ids: Sequence[str]) -> None:
        if not task_ids:
            return
        with self._errors:
            keys = [self._key(k, i) for i in task_ids for k in ("result", "result-wake")]
            self.client.delete(*keys)

    def cleanup(self) -> int:
        return 0  # every key carries its own TTL

    def close(self) -> None:
        self._connections.close()
        self.client.close()


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))
