"""Streams in Redis (``redis://`` brokers): one Redis stream per name.

``append`` is one Lua script: ``XADD`` each entry, trim to ``MAXLEN`` and to ``MINID`` (the
age cap, judged on Redis' own clock), and expire the whole key once nothing was written for
``max_age``. Positions are Redis stream ids (``<ms>-<n>``). A waiting ``read`` is a blocking
``XREAD``. Needs Redis 6.2 (``XTRIM MINID``, exclusive ranges). Each call touches one key,
so streams work on Redis Cluster (each stream lives on the node of its name's slot).
"""

from __future__ import annotations

from typing import cast

from .._redis import Client, ErrorMapper, block_limit
from . import START, Entry

_APPEND = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local maxlen, age = ARGV[1], tonumber(ARGV[2])
for i = 3, #ARGV do
    redis.call('XADD', KEYS[1], 'MAXLEN', maxlen, '*', 'b', ARGV[i])
end
redis.call('XTRIM', KEYS[1], 'MINID', tostring(now - age))
redis.call('PEXPIRE', KEYS[1], age)
"""


type _Found = list[tuple[bytes, dict[bytes, bytes]]]


class RedisStreams:
    """:class:`~conveyor.streams.Streams` on ``client`` under ``<prefix>``."""

    def __init__(self, client: Client, errors: ErrorMapper, *, prefix: str) -> None:
        self._client = client
        self._errors = errors
        self._prefix = prefix
        self._append = client.register_script(_APPEND)
        self._block = block_limit(client)

    def _key(self, stream: str) -> str:
        return self._prefix + stream

    def append(self, stream: str, bodies: list[bytes], *, max_length: int, max_age: float) -> None:
        if not bodies:
            return
        age_ms = max(1, int(max_age * 1000))
        with self._errors:
            self._append(keys=[self._key(stream)], args=[max_length, age_ms, *bodies])

    def read(
        self,
        stream: str,
        after: str | None = None,
        *,
        limit: int = 100,
        wait: float = 0.0,
        since: float | None = None,
    ) -> list[Entry]:
        start = _start(after, since)
        key = self._key(stream)
        with self._errors:
            found = cast(_Found, self._client.xrange(key, min=f"({start}", count=max(1, limit)))
            if not found and wait > 0 and limit > 0:
                block = max(1, int(min(wait, self._block) * 1000))
                reply = cast(
                    list[tuple[bytes, _Found]],
                    self._client.xread({key: start}, count=limit, block=block),
                )
                found = reply[0][1] if reply else []
        return [_entry(pos, fields) for pos, fields in found[: max(0, limit)]]

    def last(self, stream: str) -> str:
        with self._errors:
            found = self._client.xrevrange(self._key(stream), count=1)
        if not found:
            return START
        return cast(bytes, found[0][0]).decode()

    def delete(self, stream: str) -> None:
        with self._errors:
            self._client.delete(self._key(stream))


def _entry(position: bytes, fields: dict[bytes, bytes]) -> Entry:
    pos = position.decode()
    return Entry(pos, int(pos.partition("-")[0]) / 1000.0, fields.get(b"b", b""))


def _parse(position: str) -> tuple[int, int]:
    ms, _, seq = position.partition("-")
    try:
        return int(ms), int(seq or 0)
    except ValueError:
        raise ValueError(f"not a stream position of this broker: {position!r}") from None


def _start(after: str | None, since: float | None) -> str:
    """The id to read after: ``after``, or just before the first id at time ``since``."""
    ms, seq = _parse(after or START)
    if since is not None:
        since_ms = int(since * 1000)
        if since_ms > ms:
            # The greatest id below <since_ms>-0 (ids of that millisecond start at 0).
            ms, seq = since_ms - 1, 2**64 - 1
    return f"{ms}-{seq}"
