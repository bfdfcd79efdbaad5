"""Key/value storage in Redis (``redis://`` brokers and result stores).

A value or claim is a string key ``<values><key>``, a join set a Redis set ``<sets><key>``;
the owner picks both key prefixes (the broker's are ``<p>:kv:`` and ``<p>:kv-join:``, the
result store's ``<p>:value:`` and ``<p>:join:``, from ``conveyor._redis_keys``). Expiry is
Redis' own TTL. Each operation touches one key (``delete_value`` two, deleted per slot), so
all of it works on Redis Cluster.

Redis finds keys by prefix only by scanning the whole keyspace (every queued message's hash
included), so the keys under each of :data:`~conveyor.kv.LISTED_PREFIXES` are also members of
an index, a sorted set ``<index><listed prefix>`` scored by their expiry time (``+inf``: none).
A write adds the key to the index before it writes the value and a delete removes it after, so
a crash in between leaves at worst a member without a value, which ``values`` skips (it reads
the values themselves); members whose expiry passed more than :data:`STALE_AFTER` ago are
dropped. The first ``values`` of a listed prefix on a server whose index was never built (keys
written by an older Conveyor) scans for that prefix once and builds it. ``values`` of another
prefix scans every primary, as before.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from importlib.resources import files
from typing import cast

from redis.cluster import RedisCluster

from .._redis import Client, ErrorMapper, mget
from . import LISTED_PREFIXES

#: Keys per MGET when reading many values.
CHUNK = 1000
#: Index members whose key expired this long ago (s) are dropped. Their expiry is scored by the
#: writer's clock, so this is how far clients' clocks may disagree without losing a listing.
STALE_AFTER = 3600.0
#: The member that says an index was built (no key is empty).
_BUILT = ""


class RedisKeyValue:
    """:class:`~conveyor.kv.KeyValue` on ``client``; ``errors`` maps redis-py errors to the
    owner's error type."""

    def __init__(
        self,
        client: Client,
        errors: ErrorMapper,
        *,
        values: str,
        sets: str,
        index: str,
        listed: Sequence[str] = LISTED_PREFIXES,
    ) -> None:
        if any(a != b and b.startswith(a) for a in listed for b in listed) or "" in listed:
            raise ValueError(f"listed prefixes must be non-empty and not nest: {listed!r}")
        self._client = client
        self._errors = errors
        self._values = values
        self._sets = sets
        self._index = index
        self._listed = tuple(listed)
        # On Cluster the index and the value are in different slots: no MULTI over both.
        self._cluster = isinstance(client, RedisCluster)
        # Owned locks (conveyor.kv.locks): one key per script, so one slot in a cluster.
        self._put_new = client.register_script(_lua("kv_put_new"))
        self._swap = client.register_script(_lua("kv_swap"))
        self._delete_if = client.register_script(_lua("kv_delete_if"))

    def claim(self, key: str, ttl: float | None = None) -> bool:
        with self._errors:
            self._index_add(key, ttl)
            return bool(self._client.set(self._values + key, b"1", nx=True, px=_px(ttl)))

    def get_value(self, key: str) -> bytes | None:
        with self._errors:
            return cast("bytes | None", self._client.get(self._values + key))

    def get_values(self, keys: Sequence[str]) -> dict[str, bytes]:
        unique = list(dict.fromkeys(keys))
        out: dict[str, bytes] = {}
        with self._errors:
            for i in range(0, len(unique), CHUNK):
                chunk = unique[i : i + CHUNK]
                found = cast(
                    list["bytes | None"], mget(self._client, [self._values + k for k in chunk])
                )
                out.update((k, v) for k, v in zip(chunk, found, strict=True) if v is not None)
        return out

    def set_value(self, key: str, value: bytes, ttl: float | None = None) -> None:
        listed = self._listed_under(key)
        with self._errors:
            if listed is None or self._cluster:
                self._index_add(key, ttl)
                self._client.set(self._values + key, value, px=_px(ttl))
                return
            pipe = self._client.pipeline(transaction=True)
            pipe.zadd(self._index + listed, {key: _expiry(ttl)}, gt=True)
            pipe.set(self._values + key, value, px=_px(ttl))
            pipe.execute()

    def delete_value(self, key: str) -> None:
        with self._errors:
            self._client.delete(self._values + key, self._sets + key)
            self._index_remove(key)

    def join(self, key: str, member: str, ttl: float | None = None) -> int:
        name = self._sets + key
        with self._errors:
            pipe = self._client.pipeline(transaction=True)
            pipe.sadd(name, member)
            if ttl is not None:
                pipe.pexpire(name, _ms(ttl))
            pipe.scard(name)
            return int(pipe.execute()[-1])

    def values(self, prefix: str) -> dict[str, bytes]:
        listed = next((p for p in self._listed if prefix.startswith(p)), None)
        with self._errors:
            if listed is None:
                names = [key.decode() for key in self._scan(prefix)]
            else:
                names = [
                    self._values + key for key in self._indexed(listed) if key.startswith(prefix)
                ]
            return self._read(names)

    # -- the index of listed keys -----------------------------------------------------------
    def _listed_under(self, key: str) -> str | None:
        for prefix in self._listed:
            if key.startswith(prefix):
                return prefix
        return None

    def _index_add(self, key: str, ttl: float | None) -> None:
        # GT: a shorter expiry never replaces a longer one (a failed claim must not shorten
        # the listing of the value it found); a late member only costs a read.
        listed = self._listed_under(key)
        if listed is not None:
            self._client.zadd(self._index + listed, {key: _expiry(ttl)}, gt=True)

    def _index_remove(self, key: str) -> None:
        listed = self._listed_under(key)
        if listed is not None:
            self._client.zrem(self._index + listed, key)

    def _indexed(self, listed: str) -> list[str]:
        """The keys the index of ``listed`` holds (built first if it never was)."""
        name = self._index + listed
        pipe = self._client.pipeline(transaction=False)
        pipe.zremrangebyscore(name, "-inf", f"({time.time() - STALE_AFTER}")
        pipe.zscore(name, _BUILT)
        pipe.zrange(name, 0, -1)
        _, built, members = pipe.execute()
        if built is None:
            self._build(listed)
            members = self._client.zrange(name, 0, -1)
        return [m.decode() for m in cast(list[bytes], members) if m]

    def _build(self, listed: str) -> None:
        """Index the keys under ``listed`` that exist already (written by an older version)."""
        start = len(self._values)
        found = self._scan(listed)
        name = self._index + listed
        for i in range(0, len(found), CHUNK):
            chunk = found[i : i + CHUNK]
            pipe = self._client.pipeline(transaction=False)
            for key in chunk:
                pipe.pttl(key)
            scores: dict[str, float] = {}
            for key, pttl in zip(chunk, cast(list[int], pipe.execute()), strict=True):
                if pttl != -2:  # -2: gone meanwhile
                    scores[key.decode()[start:]] = _expiry(None if pttl < 0 else pttl / 1000)
            if scores:
                self._client.zadd(name, scores, gt=True)
        self._client.zadd(name, {_BUILT: math.inf})

    def _scan(self, prefix: str) -> list[bytes]:
        pattern = _glob_escape(self._values + prefix) + "*"
        return cast(list[bytes], list(self._client.scan_iter(match=pattern, count=CHUNK)))

    def _read(self, names: Sequence[str | bytes]) -> dict[str, bytes]:
        start = len(self._values)
        out: dict[str, bytes] = {}
        for i in range(0, len(names), CHUNK):
            chunk = names[i : i + CHUNK]
            found = cast(list["bytes | None"], mget(self._client, chunk))
            for name, value in zip(chunk, found, strict=True):
                if value is not None:  # expired or deleted since it was found
                    text = name.decode() if isinstance(name, bytes) else name
                    out[text[start:]] = value
        return out

    # -- owned locks (conveyor.kv.locks) ------------------------------------------------
    def put_new(self, key: str, value: bytes, ttl: float | None = None) -> bytes | None:
        with self._errors:
            self._index_add(key, ttl)
            held = self._put_new(keys=[self._values + key], args=[value, _px_arg(ttl)])
        return cast("bytes | None", held)

    def swap(self, key: str, expected: bytes, value: bytes, ttl: float | None = None) -> bool:
        with self._errors:
            self._index_add(key, ttl)
            done = self._swap(keys=[self._values + key], args=[expected, value, _px_arg(ttl)])
        return bool(done)

    def delete_if(self, key: str, expected: bytes) -> bool:
        with self._errors:
            deleted = bool(self._delete_if(keys=[self._values + key], args=[expected]))
            if deleted:
                self._index_remove(key)
            return deleted


def _lua(name: str) -> str:
    # The broker's scripts live beside it; read through the top package (kv is below brokers).
    return files("conveyor").joinpath("brokers", "redis", "lua", f"{name}.lua").read_text("utf-8")


def _expiry(ttl: float | None) -> float:
    """An index score: when a value written now with ``ttl`` expires (inf: never)."""
    return math.inf if ttl is None else time.time() + ttl


def _px_arg(ttl: float | None) -> str:
    return "" if ttl is None else str(_ms(ttl))


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


def _px(ttl: float | None) -> int | None:
    return None if ttl is None else _ms(ttl)


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
