"""What the dashboard reads and does on Redis: counts, the oldest ready messages, the
dead-letter queue, delayed messages (run now, cancel) and departures."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..._redis_calls import Calls
from ..base import (
    DEPARTURE_CLAIM,
    DeadLetter,
    Departure,
    PriorityCounts,
    QueueStats,
    Scheduled,
)
from . import counts
from .core import BAND, RedisCore
from .replies import _blob, _departures, _number, _packed_body, _text


class Inspection(RedisCore):
    # -- inspection and maintenance ------------------------------------------------------
    def stats(self, queues: Sequence[str] | None = None) -> dict[str, QueueStats]:
        with self._errors:
            if queues is None:
                queues = self._known_queues()
            batch = Calls()
            skip = self._absorb_first(batch)
            for queue in queues:
                kinds = ("ready", "delayed", "leased", "dead")
                batch.add(("ZCARD", self.keys.queue_key(queue, kind)) for kind in kinds)
            counts = self._connections.execute(batch)[skip:]
        return {q: QueueStats(*counts[i * 4 : i * 4 + 4]) for i, q in enumerate(queues)}

    def unroutable(self) -> int:
        """How many ingress entries named no queue and were set aside (``lua/ingress.lua``;
        0 on Cluster, where nothing is pushed there)."""
        if self._cluster:
            return 0
        with self._errors:
            return int(self._client.llen(self.keys.unroutable))

    def oldest_ready(self, queues: Sequence[str]) -> dict[str, list[bytes]]:
        names = list(dict.fromkeys(queues))
        keys = self.keys
        with self._errors:
            now_ms = self.time() * 1000
            batch = Calls()
            skip = self._absorb_first(batch)
            for queue in names:
                ready = keys.queue_key(queue, "ready")
                for band in range(10):  # the lowest sequence of each priority's band
                    low, high = band * BAND, (band + 1) * BAND
                    batch.add((("ZRANGE", ready, low, f"({high}", "BYSCORE", "LIMIT", 0, 1),))
                delayed = keys.queue_key(queue, "delayed")
                batch.add((("ZRANGE", delayed, "-inf", now_ms, "BYSCORE", "LIMIT", 0, 1),))
            found = self._connections.execute(batch)[skip:]
            uids = [
                (queue, _text(uid))
                for i, queue in enumerate(names)
                for hit in found[i * 11 : i * 11 + 11]
                for uid in hit
            ]
            reads = Calls()  # the body in Q:m, or in the message's hash (before 2026-12)
            for q, uid in uids:
                reads.add((("HGET", keys.queue_key(q, "m"), uid),))
                reads.add((("HGET", keys.queue_key(q, f"msg:{uid}"), "b"),))
            found = self._connections.execute(reads)
        out: dict[str, list[bytes]] = {}
        for i, (queue, _) in enumerate(uids):
            packed, old = found[2 * i], found[2 * i + 1]
            body = _blob(old) if old is not None else None
            if body is None and packed is not None:
                body = _packed_body(_blob(packed))
            if body is not None:
                out.setdefault(queue, []).append(body)
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
                    queue=_text(flat[i + 1]) or name,
                    body=_blob(flat[i + 2]),
                    reason=_text(flat[i + 3]),
                    detail=_text(flat[i + 4]),
                    dead_at=_number(flat[i + 5]),
                    delivery_count=int(_number(flat[i + 6])),
                ),
                _number(flat[i + 7]),
            )
            for name, flat in zip(queues, replies, strict=True)
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
                _text(flat[i + 1]) or name,
                _blob(flat[i + 2]),
                int(_number(flat[i + 3])),
                _number(flat[i + 4]) / 1000,
            )
            for name, flat in zip(queues, replies, strict=True)
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
                self._script(batch, "priority_counts", queue, (counts.RECOUNT_STEP,))
            return list(self._connections.execute(batch))

        with self._errors:
            names = list(dict.fromkeys(self._known_queues() if queues is None else queues))
            return counts.priority_counts(names, call)
