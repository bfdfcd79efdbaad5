"""What the PostgreSQL broker shows (the dashboard, ``stats()``): counts, dead letters and
delayed messages, and the actions on them."""

from __future__ import annotations

from collections.abc import Sequence

from ..base import DeadLetter, PriorityCounts, QueueStats, Scheduled
from . import scheduled as delayed
from . import statements as sql
from .core import Params, PostgresCore
from .rows import as_blob, as_float, as_int, as_text
from .schema import DELAYED, LEASED, READY


class Inspection(PostgresCore):
    """Counts, dead letters, delayed messages and the actions on them."""

    def stats(self, queues: Sequence[str] | None = None) -> dict[str, QueueStats]:
        if queues is not None and not queues:
            return {}
        params: Params = {"ns": self.ns}
        out: dict[str, QueueStats] = {}
        where = ""
        if queues is not None:
            names = list(dict.fromkeys(queues))
            out = {queue: QueueStats() for queue in names}
            where, params["queues"] = "AND queue = ANY(%(queues)s::text[])", names
        with self.db.connection() as conn:
            rows = conn.execute(self.q(sql.STATS, where=where), params).fetchall()
        for queue, state, due_now, count in rows:
            stats = out.setdefault(as_text(queue), QueueStats())
            number = as_int(count)
            if state == READY or due_now:
                stats.ready += number
            elif state == LEASED:
                stats.leased += number
            elif state == DELAYED:
                stats.delayed += number
            else:
                stats.dead += number
        return out

    def dead_letters(self, limit: int = 100, queue: str | None = None) -> list[DeadLetter]:
        params: Params = {"ns": self.ns, "limit": max(limit, 0), "queue": queue}
        where = "" if queue is None else "AND queue = %(queue)s"
        with self.db.connection() as conn:
            rows = conn.execute(self.q(sql.DEAD_LETTERS, where=where), params).fetchall()
        return [
            DeadLetter(
                as_text(id_),
                as_text(queue_),
                as_blob(body),
                as_text(reason),
                as_text(detail),
                as_float(dead_at),
                as_int(count),
            )
            for id_, queue_, body, reason, detail, dead_at, count in rows
        ]

    def _dead_where(self, ids: Sequence[str] | None) -> tuple[str, Params]:
        if ids is None:
            return "", {"ns": self.ns}
        return "AND id = ANY(%(ids)s::text[])", {"ns": self.ns, "ids": list(dict.fromkeys(ids))}

    def replay_dead(self, ids: Sequence[str] | None = None) -> int:
        where, params = self._dead_where(ids)
        with self.db.connection() as conn:
            moved = conn.execute(self.q(sql.REPLAY, where=where), params).rowcount
        if moved:
            self._wake()
        return max(moved, 0)

    def purge_dead(self, ids: Sequence[str] | None = None) -> int:
        where, params = self._dead_where(ids)
        with self.db.connection() as conn:
            return max(conn.execute(self.q(sql.PURGE_DEAD, where=where), params).rowcount, 0)

    def scheduled(self, limit: int = 100, queue: str | None = None) -> list[Scheduled]:
        params: Params = {"ns": self.ns, "limit": max(limit, 0), "queue": queue}
        where = "" if queue is None else "AND queue = %(queue)s"
        with self.db.connection() as conn:
            rows = conn.execute(self.q(delayed.LISTING, where=where), params).fetchall()
        return [
            Scheduled(as_text(i), as_text(q), as_blob(body), as_int(priority), as_float(due))
            for i, q, body, priority, due in rows
        ]

    def run_scheduled(self, ids: Sequence[str]) -> int:
        if not ids:
            return 0
        with self.db.transaction() as conn:
            cursor = conn.execute(self.q(delayed.RUN), {"ns": self.ns, "ids": list(ids)})
            queues = [as_text(row[0]) for row in cursor.fetchall()]
            self._notify_queues(conn, set(queues))
        if queues:
            self._wake()
        return len(queues)

    def cancel_scheduled(self, ids: Sequence[str]) -> int:
        if not ids:
            return 0
        with self.db.connection() as conn:
            cursor = conn.execute(self.q(delayed.CANCEL), {"ns": self.ns, "ids": list(ids)})
            return max(cursor.rowcount, 0)

    def priority_counts(self, queues: Sequence[str] | None = None) -> dict[str, PriorityCounts]:
        params: Params = {"ns": self.ns}
        where, out = "", {}
        if queues is not None:
            params["queues"] = names = list(dict.fromkeys(queues))
            where, out = "AND queue = ANY(%(queues)s::text[])", {q: PriorityCounts() for q in names}
        with self.db.connection() as conn:
            rows = conn.execute(self.q(delayed.PRIORITY_COUNTS, where=where), params).fetchall()
        for queue, state, priority, count in rows:
            out.setdefault(as_text(queue), PriorityCounts()).add(
                as_text(state), as_int(priority), as_int(count)
            )
        return out
