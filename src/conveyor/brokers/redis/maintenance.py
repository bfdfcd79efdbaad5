"""The Redis broker's upkeep: dead-lettering, the sweep of expired leases (and the one-time
move of keys from before hash tags), revocations and purging."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ..._redis import mget
from ..._redis_calls import Calls
from ..base import (
    Delivery,
)
from .core import CHUNK, RedisCore, logger
from .migrate import migrate_old_keys


class Maintenance(RedisCore):
    def dead_letter(self, delivery: Delivery, reason: str, detail: str = "") -> None:
        self.dead_letter_many([(delivery, reason, detail)])

    def dead_letter_many(self, letters: Sequence[tuple[Delivery, str, str]]) -> None:
        if not letters:
            return
        with self._errors:
            batch = Calls()
            self.dead_letter_calls(batch, letters)
            self._connections.execute(batch)

    def dead_letter_calls(self, batch: Calls, letters: Sequence[tuple[Delivery, str, str]]) -> None:
        """Add to ``batch`` the script calls dead-lettering each ``(delivery, reason,
        detail)`` whose lease is still held (one call each; a stale receipt is left alone)."""
        for delivery, reason, detail in letters:
            args = (delivery.receipt, reason, detail)
            self._script(batch, "dead_letter", delivery.queue, args)

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
