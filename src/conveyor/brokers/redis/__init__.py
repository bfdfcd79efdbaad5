"""Redis broker (``redis://``, ``rediss://``, ``unix://``): sorted sets moved by Lua scripts.

Why not streams (the design's first suggestion)? Streams give delivery counts and server-side
blocking reads, but not the rest of the contract: XREADGROUP over one stream per priority band
returns entries from every stream at once, so "9 first, FIFO within a priority, across several
queues" needs a client-side merge with no way to hand back what was read too early; XCLAIM
always counts a delivery, so ``release()`` cannot return a message uncharged; lease deadlines
are idle times, so every heartbeat is one XCLAIM per message; delayed messages and dead
letters need sorted sets anyway. Here each operation is one script call for a whole batch:

* ``ready:<q>`` is a sorted set scored ``(9 - priority) * 1e14 + sequence`` with one global
  sequence, so the lowest score is the next message: exact priority and FIFO, merged across
  queues inside the script. ``delayed:<q>`` is scored by due time, ``leased:<q>`` by lease
  deadline (sweeping is a range query), ``dead:<q>`` by burial order; message fields (body,
  delivery count, ...) live in one hash per message. All times come from Redis ``TIME``.
* A receipt is ``<uid>:<n>:<priority>``, n counting the message's leases (never going down;
  a release is counted apart, so it charges no delivery): an ack, heartbeat or release with a
  receipt whose lease ran out and was handed to another worker changes nothing. The priority
  lets an ack uncount the lease in ``tally:<q>`` (per-priority counts of delayed, leased and
  dead messages, kept by the scripts: ``counts``) without reading the message.
* A publish of a few messages ready now (most ``delay()`` calls) is one ``RPUSH`` on the
  prefix's ingress list, ``{<p>}:in``, and a wake-up: a script call costs redis-server ~15 µs
  more than that, most of a single publish's server time. The first script of any queue
  after it queues every entry, in the order pushed, before it reads or writes anything, so
  FIFO, priorities, the dedupe and every count hold as for a scripted publish; a producer
  that finds over 1,000 entries queues them itself. Larger and delayed publishes, and every
  publish on Cluster, go through ``ack_publish.lua``.
* A ``send_many`` of more than a chunk (1,000) on one server is staged while it is encoded
  (``staging``): each chunk's stage call numbers its messages and stores their values at once,
  outside every zset, so redis-server works while the producer encodes the next chunk; one
  commit call per chunk queues them at the end. A bad argument anywhere still sends nothing
  (the stage is dropped), a stage that went wrong is published again whole, and the sweep
  drops a stage its producer never committed.
* Blocking: each queue has a wake-up list holding at most one token. Anything that makes
  work appear (publish, requeue, release, replay, a delayed message added) pushes it; an idle
  consumer BLPOPs the lists of its queues, with a timeout no later than the next delayed due
  time, and its next lease call queued behind the BLPOP (one round trip per wake-up), and a
  consumer that leaves ready work behind pushes the token on to the next one.
  Redis checks blocking timeouts on its ``hz`` tick (100 ms by default), so a delayed message
  with an idle consumer becomes ready within about that much of its due time; a publish
  wakes a consumer at once.

The layout of keys is described in ``lua/common.lua`` and their names are made in
``conveyor._redis_keys``: every key of a queue carries the queue's hash tag, so each script
call touches one queue and so one slot of a Redis Cluster (``redis+cluster://``), and queues
spread over its shards. Revocations are ``{<p>}:revoked:<id>``; ``kv`` keeps values under
``<p>:kv:`` and join sets under ``<p>:kv-join:`` (``conveyor.kv.redis``). Like any broker kept
in Redis it needs ``maxmemory-policy noeviction`` and AOF persistence to keep its promises.

What changes on Cluster (docs/scaling.md): a lease from several queues is one script call
per queue (each queue's share is chosen from a peek at their heads, so 9 first holds across
queues as of the peek, and exactly within a queue; FIFO within a priority holds within a
queue only); scripts cannot push the wake-up lists (one slot for the prefix, so a consumer
blocks on all its queues with one BLPOP), the client does after the call; the revoked flags
of leased ids are read in a second call.

Modules: ``core`` (client, keys, scripts, helpers), ``publish`` (publish, ack, retry),
``lease`` (lease and wait, heartbeat, release), ``maintenance`` (dead-letter, sweep,
revocations, purge), ``inspection`` (counts, dead letters, delayed messages, departures),
``staging`` (large bulk publishes), ``counts``, ``shares``, ``replies``, ``migrate``; the Lua
scripts are in ``lua/``.
"""

from .broker import RedisBroker
from .core import CHUNK, PRELUDE, lua_source, script_source

__all__ = ["CHUNK", "PRELUDE", "RedisBroker", "lua_source", "script_source"]
