"""The Redis broker's counts per state and priority (``Broker.priority_counts``).

Ready messages are split by priority for free: their scores sit in one band per priority
(``redis_scripts/common.lua``), so ten ``ZCOUNT`` calls answer in O(log n) whatever the
queue holds. Delayed, leased and dead messages are kept in zsets by time, with their priority
only in each message's hash; keeping a per-priority counter for them would add a write to
every publish, lease, ack and sweep. So ``redis_scripts/priority_counts.lua`` reads the hash
of each of them instead, one ``HGET`` per message, and only while the state holds at most
:data:`SPLIT_CAP` messages of the queue: above that the state is not split (``None``) and only
its total (``stats()``) is shown. The script blocks the server while it runs; measured with
200-byte messages on this project's 2-core machine under load (9, the script's server at
nice 19): 1.3 ms for 1,000 delayed messages, 2.5 ms for 2,000, 12 ms for 5,000, 33 ms for
10,000. So the cap is 2,000: a few milliseconds per state, which the queues page, refreshed
every few seconds, may spend.
"""

from __future__ import annotations

from collections.abc import Sequence

from .base import STATES, PriorityCounts
from .redis_replies import _number

#: Most delayed (or leased, or dead) messages of one queue that are split by priority.
SPLIT_CAP = 2_000


def counts_of(reply: Sequence[Sequence[object]]) -> PriorityCounts:
    """Decode one reply of the script: four arrays of ten counts (priority 0 first), or
    ``[-1]`` for a state left unsplit."""
    out = PriorityCounts()
    for state, counts in zip(STATES, reply, strict=True):
        if len(counts) != 10:
            setattr(out, state, None)
            continue
        for priority, count in enumerate(counts):
            out.add(state, priority, int(_number(count)))
    return out
