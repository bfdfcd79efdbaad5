"""The PostgreSQL broker's delayed messages for the dashboard (list, run now, cancel) and its
counts per state and priority: statements, ``{s}`` standing for the schema name."""

from __future__ import annotations

from .schema import DELAYED, LEASED, READY

M = "{s}.conveyor_messages"

LISTING = f"""
SELECT id, queue, body, priority, extract(epoch FROM due)::float8 FROM {M}
WHERE ns = %(ns)s AND state = {DELAYED} {{where}} ORDER BY due, seq LIMIT %(limit)s
"""
# Ready now: new seqs (the end of their queue), in due order; the queues to wake.
RUN = f"""
WITH moved AS (
    DELETE FROM {M} WHERE ns = %(ns)s AND state = {DELAYED} AND id = ANY(%(ids)s::text[])
    RETURNING ns, id, queue, priority, body, deliveries, due, seq
)
INSERT INTO {M} (ns, id, queue, priority, body, state, deliveries)
SELECT ns, id, queue, priority, body, {READY}, deliveries FROM moved ORDER BY due, seq
RETURNING queue
"""
CANCEL = f"DELETE FROM {M} WHERE ns = %(ns)s AND state = {DELAYED} AND id = ANY(%(ids)s::text[])"
# Split as STATS splits (a due delayed message is ready): one GROUP BY pass, like stats().
PRIORITY_COUNTS = f"""
SELECT queue, CASE WHEN state = {READY} OR (state = {DELAYED} AND due <= now()) THEN 'ready'
    WHEN state = {LEASED} THEN 'leased' ELSE 'delayed' END, priority, count(*) FROM {M}
WHERE ns = %(ns)s {{where}} GROUP BY 1, 2, 3
UNION ALL
SELECT queue, 'dead', priority, count(*) FROM {{s}}.conveyor_dead
WHERE ns = %(ns)s {{where}} GROUP BY 1, 3
"""
