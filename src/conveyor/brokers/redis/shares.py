"""How a consumer of several queues on a Redis Cluster splits one lease between them.

One script cannot see two queues there (two slots, maybe two nodes), so the broker first peeks
at the head of each queue (``lua/peek.lua``: the scores of its first ``limit`` ready
messages, after making its due delayed messages ready), then leases from each queue its share:
the ``limit`` best of all the heads, 9 first. Within a band the queues take turns (the first of
each queue, then the second of each, ...), since their sequences are counted apart. Within a
queue the lease script itself serves 9 first and FIFO, so that holds exactly; across queues it
holds as of the peek (a message published between the peek and the lease waits for the next).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

#: Width of one priority's band of ready scores (``BAND`` in the scripts).
BAND = 10**14


def lease_shares(
    queues: Sequence[str], peeks: Sequence[Sequence[Any]], limit: int
) -> tuple[dict[str, int], float]:
    """Each queue's share of ``limit`` (queues with none left out), from the replies of the
    peek script; and the milliseconds until the first delayed message is due (-1: none)."""
    heads: list[tuple[int, int, int, str]] = []
    next_due = -1.0
    for turn, (queue, reply) in enumerate(zip(queues, peeks, strict=True)):
        due = _number(reply[0]) if reply else -1.0
        if due >= 0 and (next_due < 0 or due < next_due):
            next_due = due
        for rank, score in enumerate(reply[1:]):
            heads.append((int(_number(score) // BAND), rank, turn, queue))
    heads.sort()
    shares: dict[str, int] = {}
    for _, _, _, queue in heads[:limit]:
        shares[queue] = shares.get(queue, 0) + 1
    return shares, next_due


def _number(value: object) -> float:
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    try:
        return float(value)  # type: ignore[arg-type]  # a reply field: int, float or text
    except (TypeError, ValueError):
        return -1.0
