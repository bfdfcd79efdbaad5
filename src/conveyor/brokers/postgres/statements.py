"""The SQL of the PostgreSQL broker, ``{s}`` standing for the schema name. Every operation is
one statement or one short transaction; times are the database's ``now()``."""

from __future__ import annotations

from ..base import PURGED, DeadLetterReason

M = "{s}.conveyor_messages"

# Remember the published ids (skipping those remembered and not expired), then insert the
# others in the order given. ``due`` is the later of now + countdown and eta. Parameters go
# in binary (``%b``): bodies need no hex encoding, a bulk publish half the client CPU.
PUBLISH = f"""
WITH given AS (
    SELECT * FROM unnest(%(ids)b::text[], %(queues)b::text[], %(priorities)b::smallint[],
        %(bodies)b::bytea[], %(countdowns)b::float8[], %(etas)b::float8[])
        WITH ORDINALITY AS g (id, queue, priority, body, countdown, eta, n)
), fresh AS (
    INSERT INTO {{s}}.conveyor_published AS p (ns, id, expires)
    SELECT %(ns)b, id, now() + make_interval(secs => %(window)b) FROM given
    ON CONFLICT (ns, id) DO UPDATE SET expires = excluded.expires WHERE p.expires <= now()
    RETURNING id
), timed AS (
    SELECT given.*, greatest(now() + make_interval(secs => countdown), to_timestamp(eta)) AS due
    FROM given WHERE id IN (SELECT id FROM fresh)
)
INSERT INTO {M} (ns, id, queue, priority, body, state, due)
SELECT %(ns)b, id, queue, priority, body,
    CASE WHEN due > now() THEN 2 ELSE 0 END, CASE WHEN due > now() THEN due END
FROM timed ORDER BY n
"""

# The same without the published-id check (retries and replays put an id back on purpose).
INSERT_ONE = f"""
INSERT INTO {M} (ns, id, queue, priority, body, state, due)
SELECT %(ns)s, %(id)s, %(queue)s, %(priority)s, %(body)s,
    CASE WHEN due > now() THEN 2 ELSE 0 END, CASE WHEN due > now() THEN due END
FROM (SELECT greatest(now() + make_interval(secs => %(countdown)s::float8),
    to_timestamp(%(eta)s::float8)) AS due) AS t
"""

# Due delayed messages move to the end of their queue in due order (new seqs).
PROMOTE = f"""
WITH moved AS (
    DELETE FROM {M} WHERE seq IN (
        SELECT seq FROM {M} WHERE ns = %(ns)s AND state = 2 AND due <= now()
        ORDER BY due, seq LIMIT 1000 FOR UPDATE SKIP LOCKED)
    RETURNING ns, id, queue, priority, body, deliveries, due, seq
)
INSERT INTO {M} (ns, id, queue, priority, body, state, deliveries)
SELECT ns, id, queue, priority, body, 0, deliveries FROM moved ORDER BY due, seq
"""

# Lease, in one statement (one round trip): ack the finished messages, pick (skipping rows
# other consumers are leasing), mark leased, say if revoked. LEASE_PROMOTING also makes due
# delayed messages ready first (leased from the next statement on: one statement sees one
# snapshot); it costs several times the server CPU of the rest, so a busy consumer runs it
# only every PROMOTE_EVERY seconds (see PostgresBroker.lease_now) and an idle one always.
# The count stops at the column's maximum: a row forged with it would otherwise fail every
# lease of its queue.
# Its commit does not wait for the WAL flush (synchronous_commit off for this transaction
# alone, set in the LIMIT so it is always evaluated): a crash of the server can only lose the
# latest acks and leases, i.e. redeliver messages (at-least-once), never lose one. Records
# and publishes, written by other statements before the acks, stay synchronous; WAL order
# means a lost record implies its ack was lost too.
_ACKED = f"""
WITH acked AS (
    DELETE FROM {M} AS a USING unnest(%(seqs)b::bigint[], %(tokens)b::bigint[]) AS r (seq, token)
    WHERE a.seq = r.seq AND a.token = r.token AND a.state = 1
)"""
_PROMOTED = f""", due AS (
    DELETE FROM {M} WHERE seq IN (
        SELECT seq FROM {M} WHERE ns = %(ns)s AND state = 2 AND due <= now()
        ORDER BY due, seq LIMIT 1000 FOR UPDATE SKIP LOCKED)
    RETURNING ns, id, queue, priority, body, deliveries, due, seq
), promoted AS (
    INSERT INTO {M} (ns, id, queue, priority, body, state, deliveries)
    SELECT ns, id, queue, priority, body, 0, deliveries FROM due ORDER BY due, seq
)"""
_LEASED = f""", picked AS (
    SELECT seq FROM {M} WHERE ns = %(ns)s AND state = 0 AND {{where}}
    ORDER BY priority DESC, seq
    LIMIT (SELECT %(limit)s::int + 0 * length(set_config('synchronous_commit', 'off', true)))
    FOR UPDATE SKIP LOCKED
)
UPDATE {M} AS m SET state = 1, token = %(token)s,
    due = now() + make_interval(secs => %(lease)s),
    deliveries = least(m.deliveries, 2147483646) + 1
FROM picked WHERE m.seq = picked.seq
RETURNING m.seq, m.id, m.queue, m.priority, m.body, m.deliveries,
    EXISTS (SELECT 1 FROM {{s}}.conveyor_revoked AS r
        WHERE r.ns = m.ns AND r.id = m.id AND r.expires > now())
"""
LEASE = _ACKED + _LEASED
LEASE_PROMOTING = _ACKED + _PROMOTED + _LEASED
#: Longest time (s) a busy consumer leases without promoting due delayed messages.
PROMOTE_EVERY = 0.05
ONE_QUEUE = "queue = %(queue)s"
SOME_QUEUES = "queue = ANY(%(queues)s::text[])"

# Seconds until the next delayed message of the queues is due (NULL: none).
NEXT_DUE = f"""
SELECT extract(epoch FROM min(due) - now())::float8 FROM {M}
WHERE ns = %(ns)s AND state = 2 AND queue = ANY(%(queues)s::text[])
"""

HELD = "unnest(%(seqs)s::bigint[], %(tokens)s::bigint[]) AS r (seq, token)"
ACK = f"DELETE FROM {M} AS m USING {HELD} WHERE m.seq = r.seq AND m.token = r.token AND m.state = 1"
EXTEND = (
    f"UPDATE {M} AS m SET due = now() + make_interval(secs => %(lease)s) FROM {HELD} "
    "WHERE m.seq = r.seq AND m.token = r.token AND m.state = 1"
)
RELEASE = (
    f"UPDATE {M} AS m SET state = 0, due = NULL, token = NULL, "
    f"deliveries = greatest(m.deliveries - 1, 0) FROM {HELD} "
    "WHERE m.seq = r.seq AND m.token = r.token AND m.state = 1 RETURNING m.queue"
)
# A stale receipt (the lease was reclaimed) must not publish a duplicate nor bury anything.
RETRY = f"""
WITH gone AS (
    DELETE FROM {M} WHERE seq = %(seq)s AND token = %(token)s AND state = 1 RETURNING seq
)
INSERT INTO {M} (ns, id, queue, priority, body, state, due)
SELECT %(ns)s, %(id)s, %(queue)s, %(priority)s, %(body)s,
    CASE WHEN due > now() THEN 2 ELSE 0 END, CASE WHEN due > now() THEN due END
FROM (SELECT greatest(now() + make_interval(secs => %(countdown)s::float8),
    to_timestamp(%(eta)s::float8)) AS due) AS t
WHERE EXISTS (SELECT 1 FROM gone)
"""
# RETRY for many (delivery, message) pairs in one statement (one receipt each).
RETRY_MANY = f"""
WITH given AS (
    SELECT * FROM unnest(%(seqs)b::bigint[], %(tokens)b::bigint[], %(ids)b::text[],
        %(queues)b::text[], %(priorities)b::smallint[], %(bodies)b::bytea[],
        %(countdowns)b::float8[], %(etas)b::float8[])
        WITH ORDINALITY AS g (seq, token, id, queue, priority, body, countdown, eta, n)
), gone AS (
    DELETE FROM {M} AS m USING given
    WHERE m.seq = given.seq AND m.token = given.token AND m.state = 1 RETURNING m.seq
), timed AS (
    SELECT given.*, greatest(now() + make_interval(secs => countdown), to_timestamp(eta)) AS due
    FROM given WHERE seq IN (SELECT seq FROM gone)
)
INSERT INTO {M} (ns, id, queue, priority, body, state, due)
SELECT %(ns)b, id, queue, priority, body,
    CASE WHEN due > now() THEN 2 ELSE 0 END, CASE WHEN due > now() THEN due END
FROM timed ORDER BY n
"""
BURY_HELD = f"""
WITH gone AS (
    DELETE FROM {M} WHERE seq = %(seq)s AND token = %(token)s AND state = 1 RETURNING seq
)
INSERT INTO {{s}}.conveyor_dead (ns, id, queue, priority, body, reason, detail, dead_at,
    deliveries)
SELECT %(ns)s, %(id)s, %(queue)s, %(priority)s, %(body)s, %(reason)s, %(detail)s, now(),
    %(deliveries)s
WHERE EXISTS (SELECT 1 FROM gone)
"""

# Sweep: expired leases delivered max_deliveries times go to the dead-letter queue, the
# other expired leases back to their queues (rows another sweep is moving are skipped).
BURY_LOST = f"""
WITH lost AS (
    DELETE FROM {M} WHERE seq IN (
        SELECT seq FROM {M} WHERE ns = %(ns)s AND state = 1 AND due <= now()
        AND deliveries >= %(max)s FOR UPDATE SKIP LOCKED)
    RETURNING seq, ns, id, queue, priority, body, deliveries
), noted AS (
    INSERT INTO {{s}}.conveyor_departures (ns, id, queue, body, reason)
    SELECT ns, id, queue, body, '{DeadLetterReason.WORKER_LOST}' FROM lost ORDER BY seq
)
INSERT INTO {{s}}.conveyor_dead (ns, id, queue, priority, body, reason, detail, dead_at,
    deliveries)
SELECT ns, id, queue, priority, body, '{DeadLetterReason.WORKER_LOST}',
    'lease expired after ' || deliveries || ' deliveries', now(), deliveries
FROM lost ORDER BY seq
"""
RETURN_EXPIRED = f"""
UPDATE {M} SET state = 0, due = NULL, token = NULL WHERE seq IN (
    SELECT seq FROM {M} WHERE ns = %(ns)s AND state = 1 AND due <= now()
    FOR UPDATE SKIP LOCKED)
RETURNING queue
"""
FORGET_EXPIRED = (
    "DELETE FROM {s}.conveyor_revoked WHERE ns = %(ns)s AND expires <= now()",
    "DELETE FROM {s}.conveyor_published WHERE ns = %(ns)s AND expires <= now()",
)
WAKE = "SELECT pg_notify(%(channel)s, q) FROM unnest(%(queues)s::text[]) AS q"

REVOKE = (
    "INSERT INTO {s}.conveyor_revoked (ns, id, expires) "
    "SELECT %(ns)s, id, now() + make_interval(secs => %(ttl)s) "
    "FROM unnest(%(ids)s::text[]) AS id "
    "ON CONFLICT (ns, id) DO UPDATE SET expires = excluded.expires"
)
REVOKED = (
    "SELECT id FROM {s}.conveyor_revoked WHERE ns = %(ns)s AND id = ANY(%(ids)s::text[]) "
    "AND expires > now()"
)

STATS = f"""
SELECT queue, state, state = 2 AND due <= now(), count(*) FROM {M}
WHERE ns = %(ns)s {{where}} GROUP BY 1, 2, 3
UNION ALL
SELECT queue, 3, false, count(*) FROM {{s}}.conveyor_dead WHERE ns = %(ns)s {{where}} GROUP BY 1
"""
DEAD_LETTERS = """
SELECT id, queue, body, reason, detail, extract(epoch FROM dead_at)::float8, deliveries
FROM {s}.conveyor_dead WHERE ns = %(ns)s {where} ORDER BY seq LIMIT %(limit)s
"""
REPLAY = f"""
WITH moved AS (
    DELETE FROM {{s}}.conveyor_dead WHERE ns = %(ns)s {{where}}
    RETURNING seq, id, queue, priority, body
)
INSERT INTO {M} (ns, id, queue, priority, body, state)
SELECT %(ns)s, id, queue, priority, body, 0 FROM moved ORDER BY seq
"""
PURGE_DEAD = "DELETE FROM {s}.conveyor_dead WHERE ns = %(ns)s {where}"
# Purged messages are recorded as departures (their rowcount is the purge's count).
PURGE = f"""
WITH gone AS (
    DELETE FROM {M} WHERE ns = %(ns)s AND state != 1 AND queue = ANY(%(queues)s::text[])
    RETURNING seq, ns, id, queue, body
)
INSERT INTO {{s}}.conveyor_departures (ns, id, queue, body, reason)
SELECT ns, id, queue, body, '{PURGED}' FROM gone ORDER BY seq
"""
D = "{s}.conveyor_departures"
TAKE_DEPARTURES = f"""
UPDATE {D} SET claimed = now() + make_interval(secs => %(claim)s) WHERE seq IN (
    SELECT seq FROM {D} WHERE ns = %(ns)s AND claimed <= now() ORDER BY seq LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED)
RETURNING seq, id, queue, body, reason
"""
FORGET_DEPARTURES = f"DELETE FROM {D} WHERE ns = %(ns)s AND seq = ANY(%(seqs)s::bigint[])"
