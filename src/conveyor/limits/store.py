"""The LimitStore contract: token buckets and concurrency slots kept by a broker.

Each broker that can keep them atomically across processes hands out one store as
``broker.limits`` (memory, SQLite, Redis, PostgreSQL; RabbitMQ one beside its key/value data,
:mod:`.kvstores`, if that backend can). Stores know nothing of tasks: a limit is a string key.

**Buckets** (``take``) follow the generic cell rate algorithm: a bucket is one number, the
theoretical arrival time ``tat`` of its next token on the store's clock. A take may *book* a
token up to ``horizon`` seconds ahead, so a caller that must wait is told exactly when its
token is due and does not compete for it again (the worker delays the message to then). All
arithmetic is in :func:`book`; the Redis script mirrors it. Rates are passed with each take,
so a rate changed at run time applies to the next take (tokens booked before keep their times).

**Slots** (``acquire``/``release``/``renew``) are holders of a key with deadlines: at most
``limit`` live holders per key; a holder that is not renewed (its worker died) stops
counting at its deadline. Acquiring again as the same holder renews it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol


class Grant(NamedTuple):
    """What a take gave: ``granted`` - a token is booked for ``wait`` seconds from now (0:
    run now); not granted - nothing changed, try again in about ``wait`` seconds."""

    wait: float
    granted: bool


class LimitStore(Protocol):
    """Token buckets and concurrency slots, atomic across threads and processes."""

    def take(
        self, key: str, interval: float, tolerance: float, after: float = 0.0, horizon: float = 0.0
    ) -> Grant:
        """Book the next token of bucket ``key`` (one every ``interval`` s, ``tolerance`` s
        of burst), no sooner than ``after`` s from now and no later than ``horizon`` s."""
        ...

    def acquire(self, key: str, limit: int, holder: str, ttl: float) -> bool:
        """Hold a slot of ``key`` for ``ttl`` s if fewer than ``limit`` others hold one."""
        ...

    def release(self, key: str, holder: str) -> None:
        """Give a slot back (no error if not held)."""
        ...

    def renew(self, held: Sequence[tuple[str, str]], ttl: float) -> None:
        """Extend the (key, holder) slots still held to ``ttl`` s from now."""
        ...

    def holders(self, key: str) -> list[str]:
        """The live holders of ``key`` (inspection and tests)."""
        ...


def book(
    tat: float | None, now: float, interval: float, tolerance: float, after: float, horizon: float
) -> tuple[float | None, Grant]:
    """One take on a bucket whose next token is due at ``tat`` (None: full bucket): the new
    ``tat`` to store (None: unchanged) and the grant. A ``tat`` further ahead than this rate
    could have booked (the rate was raised at run time) is brought back to the furthest it
    could, and stored so even when nothing is granted."""
    cap = now + horizon + tolerance + interval
    clamped = tat is not None and tat > cap
    due = now if tat is None or tat < now else min(tat, cap)
    earliest = max(now + max(after, 0.0), due - tolerance)
    wait = earliest - now
    if wait <= horizon:
        return max(due, earliest) + interval, Grant(wait, True)
    return (due if clamped else None), Grant(wait - horizon, False)


def slot_member(key: str, holder: str) -> str:
    """The stored name of ``holder``'s slot of ``key`` (in stores that keep one row each)."""
    return f"limit-slot:{key}\x1f{holder}"


def slot_prefix(key: str) -> str:
    return f"limit-slot:{key}\x1f"


def bucket_name(key: str) -> str:
    return f"limit-rate:{key}"
