"""Autoscaling a supervisor's pool of child processes (``conveyor worker --autoscale 10,2``).

Once a second the supervisor asks :class:`Autoscaler` whether to change its size, within
``[low, high]``: it grows while messages wait ready in the worker's queues (by as many as wait,
up to ``high``) and shrinks by one idle child at a time once nothing waited for
``worker_autoscale_keepalive`` seconds (Celery's keepalive, default 30). A child that is
retired finishes its tasks first (a warm stop of that child alone).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Protocol

from ..exceptions import ConveyorError

if TYPE_CHECKING:
    from ..app import Conveyor

logger = logging.getLogger("conveyor.supervisor")

#: Seconds between the autoscaler's decisions.
TICK = 1.0


class ScalablePool(Protocol):
    """What :class:`Autoscaler` needs of a supervisor."""

    app: Conveyor
    queues: list[str]

    def size(self) -> int: ...
    def idle(self) -> int: ...
    def grow(self, n: int) -> int: ...
    def shrink(self, n: int) -> int: ...


def parse_autoscale(text: str) -> tuple[int, int]:
    """``"10,2"`` -> (10, 2) (max, min; min defaults to 1 as in ``"10"``). ValueError if bad."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"--autoscale takes MAX,MIN (e.g. 10,2), not {text!r}") from None
    if len(values) == 1:
        values.append(1)
    if len(values) != 2:
        raise ValueError(f"--autoscale takes MAX,MIN (e.g. 10,2), not {text!r}")
    high, low = values
    if low < 1 or high < low:
        raise ValueError(f"--autoscale needs 1 <= MIN <= MAX, not {text!r}")
    return high, low


class Autoscaler:
    """Decides the pool's size within ``[low, high]`` (see the module docstring)."""

    def __init__(self, pool: ScalablePool, high: int, low: int, keepalive: float) -> None:
        self.pool = pool
        self.high, self.low = high, low
        self.keepalive = keepalive
        self._next = 0.0
        self._last_busy = 0.0

    def set_bounds(self, high: int, low: int) -> None:
        self.high, self.low = high, low
        self._next = 0.0  # decide again at the next turn

    def tick(self, now: float) -> None:
        if now < self._next:
            return
        self._next = now + TICK
        pool = self.pool
        size = pool.size()
        if size < self.low:
            pool.grow(self.low - size)
            return
        if size > self.high:
            pool.shrink(size - self.high)
            return
        try:
            stats = pool.app.broker.stats(pool.queues)
        except ConveyorError as exc:
            logger.error("autoscale: could not read queue sizes: %s", exc)
            return
        waiting = sum(s.ready for s in stats.values())
        if waiting:
            self._last_busy = now
            if size < self.high:
                grown = pool.grow(min(waiting, self.high - size))
                logger.info("autoscale: %d message(s) waiting, pool grows to %d", waiting, grown)
        elif size > self.low and pool.idle() > 0 and now - self._last_busy >= self.keepalive:
            self._last_busy = now  # one child per keepalive period
            logger.info("autoscale: idle, pool shrinks to %d", pool.shrink(1))
