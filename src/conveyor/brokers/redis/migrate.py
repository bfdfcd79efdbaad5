"""Upgrading a Redis broker's keys from the layout before hash tags (``<p>:ready:<q>``,
``<p>:msg:<uid>``, ...) to today's (``conveyor._redis_keys``): one script moves each queue's
keys and the counter (``lua/migrate.lua``), then the revocations are renamed (keeping
their time to live). A worker's first sweep calls it; docs/scaling.md says when it runs."""

from __future__ import annotations

import logging
from typing import cast

from ..._redis import Client
from ..._redis_calls import Connections, Script
from ..._redis_cluster import ClusterConnections
from ..._redis_keys import RedisKeys

_REVOKED = "revoked:"


def migrate_old_keys(
    client: Client,
    connections: Connections | ClusterConnections,
    script: Script,
    keys: RedisKeys,
    logger: logging.Logger,
) -> None:
    """Move what a Conveyor before hash tags left under ``keys.prefix``, if anything."""
    old = f"{keys.prefix}:"
    if not client.exists(f"{old}queues"):
        return
    known = cast(set[bytes], client.smembers(f"{old}queues"))
    args: list[str] = [old]
    for queue in sorted(q.decode() for q in known):
        args += (queue, keys.queue(queue), keys.wake(queue))
    moved = connections.call(
        script, (f"{old}queues", keys.queues, f"{old}seq", keys.shared("seq")), args
    )
    revoked = 0
    pattern = "".join("\\" + c if c in "*?[]\\" else c for c in old + _REVOKED) + "*"
    for key in cast(list[bytes], list(client.scan_iter(match=pattern, count=1000))):
        # RENAME keeps the time to live; a key that expired meanwhile is skipped.
        if client.exists(key):
            client.rename(key, keys.revoked(key.decode()[len(old) + len(_REVOKED) :]))
            revoked += 1
    logger.warning(
        "moved %d messages of %d queues and %d revocations to the key names with hash tags "
        "of this Conveyor version",
        moved,
        len(known),
        revoked,
    )
