"""Limits in the Redis broker's server, one key per limit (Redis Cluster friendly).

A bucket is a string (its next token's due time, expiring when the bucket is full again), a
limit's slots one sorted set of holder -> deadline; both named by the broker's own key
helper (``<p>:limit-rate:<key>``, ``<p>:limit-slots:<key>``). Each change is one Lua script
(``brokers/redis/lua/limit_*.lua``) touching that one key, timed by Redis ``TIME``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from importlib.resources import files
from typing import TYPE_CHECKING, cast

from .._redis import Client, ErrorMapper
from .store import Grant

if TYPE_CHECKING:
    from redis.commands.core import Script


def _source(name: str) -> str:
    return files("conveyor.brokers").joinpath("redis", "lua", f"{name}.lua").read_text("utf-8")


class RedisLimits:
    """:class:`~conveyor.limits.store.LimitStore` on ``client``; ``key(kind, name)`` is the
    broker's key helper."""

    def __init__(self, client: Client, errors: ErrorMapper, key: Callable[[str, str], str]) -> None:
        self._client = client
        self._errors = errors
        self._key = key
        self._take: Script = client.register_script(_source("limit_take"))
        self._acquire: Script = client.register_script(_source("limit_acquire"))
        self._renew: Script = client.register_script(_source("limit_renew"))

    def take(
        self, key: str, interval: float, tolerance: float, after: float = 0.0, horizon: float = 0.0
    ) -> Grant:
        args = [repr(interval), repr(tolerance), repr(after), repr(horizon)]
        with self._errors:
            granted, wait = cast(
                "list[object]", self._take(keys=[self._key("limit-rate", key)], args=args)
            )
        return Grant(float(cast("bytes", wait)), bool(granted))

    def acquire(self, key: str, limit: int, holder: str, ttl: float) -> bool:
        args: list[str | int] = [limit, holder, max(1, round(ttl * 1000))]
        with self._errors:
            return bool(self._acquire(keys=[self._key("limit-slots", key)], args=args))

    def release(self, key: str, holder: str) -> None:
        with self._errors:
            self._client.zrem(self._key("limit-slots", key), holder)

    def renew(self, held: Sequence[tuple[str, str]], ttl: float) -> None:
        by_key: dict[str, list[str]] = defaultdict(list)
        for key, holder in held:
            by_key[key].append(holder)
        if not by_key:
            return
        ms = max(1, round(ttl * 1000))
        with self._errors:
            pipe = self._client.pipeline(transaction=False)
            for key, holders in by_key.items():
                self._renew(keys=[self._key("limit-slots", key)], args=[ms, *holders], client=pipe)
            pipe.execute()

    def holders(self, key: str) -> list[str]:
        with self._errors:
            t = cast("list[bytes]", self._client.time())
            now_ms = int(t[0]) * 1000 + int(t[1]) / 1000
            found = cast(
                "list[bytes]",
                self._client.zrangebyscore(self._key("limit-slots", key), f"({now_ms!r}", "+inf"),
            )
        return sorted(h.decode() for h in found)
