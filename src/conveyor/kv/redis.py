"""Key/value storage in Redis (``redis://`` brokers and result stores).

A value or claim is a string key ``<values><key>``, a join set a Redis set ``<sets><key>``;
the owner picks both key prefixes (the broker's are ``<p>:kv:`` and ``<p>:kv-join:``, the
result store's ``<p>:value:`` and ``<p>:join:``, from ``conveyor._redis_keys``). Expiry is
Redis' own TTL. Each operation touches one key (``delete_value`` two, deleted per slot), so
all of it works on Redis Cluster, where ``values`` scans every primary.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from importlib.resources import files
from typing import cast

from .._redis import Client, ErrorMapper, mget

#: Keys per MGET when reading many values.
CHUNK = 1000


class RedisKeyValue:
    """:class:`~conveyor.kv.KeyValue` on ``client``; ``errors`` maps redis-py errors to the
    owner's error type."""

    def __init__(self, client: Client, errors: ErrorMapper, *, values: str, sets: str) -> None:
        self._client = client
        self._errors = errors
        self._values = values
        self._sets = sets
        # Owned locks (conveyor.kv.locks): one key per script, so one slot in a cluster.
        self._put_new = client.register_script(_lua("kv_put_new"))
        self._swap = client.register_script(_lua("kv_swap"))
        self._delete_if = client.register_script(_lua("kv_delete_if"))

    def claim(self, key: str, ttl: float | None = None) -> bool:
        with self._errors:
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
        with self._errors:
            self._client.set(self._values + key, value, px=_px(ttl))

    def delete_value(self, key: str) -> None:
        with self._errors:
            self._client.delete(self._values + key, self._sets + key)

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
        start = len(self._values)
        pattern = _glob_escape(self._values + prefix) + "*"
        out: dict[str, bytes] = {}
        with self._errors:
            keys = cast(list[bytes], list(self._client.scan_iter(match=pattern, count=CHUNK)))
            for i in range(0, len(keys), CHUNK):
                chunk = keys[i : i + CHUNK]
                found = cast(list["bytes | None"], mget(self._client, chunk))
                for key, value in zip(chunk, found, strict=True):
                    if value is not None:  # expired between SCAN and MGET
                        out[key.decode()[start:]] = value
        return out

    # -- owned locks (conveyor.kv.locks) ------------------------------------------------
    def put_new(self, key: str, value: bytes, ttl: float | None = None) -> bytes | None:
        with self._errors:
            held = self._put_new(keys=[self._values + key], args=[value, _px_arg(ttl)])
        return cast("bytes | None", held)

    def swap(self, key: str, expected: bytes, value: bytes, ttl: float | None = None) -> bool:
        with self._errors:
            done = self._swap(keys=[self._values + key], args=[expected, value, _px_arg(ttl)])
        return bool(done)

    def delete_if(self, key: str, expected: bytes) -> bool:
        with self._errors:
            return bool(self._delete_if(keys=[self._values + key], args=[expected]))


def _lua(name: str) -> str:
    # The broker's scripts live beside it; read through the top package (kv is below brokers).
    return files("conveyor").joinpath("brokers", "redis_scripts", f"{name}.lua").read_text("utf-8")


def _px_arg(ttl: float | None) -> str:
    return "" if ttl is None else str(_ms(ttl))


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


def _px(ttl: float | None) -> int | None:
    return None if ttl is None else _ms(ttl)


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
