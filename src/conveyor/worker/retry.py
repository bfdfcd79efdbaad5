"""Retrying broker and result-store calls with backoff."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from ..exceptions import BrokerError, ResultStoreError

logger = logging.getLogger("conveyor.worker")


def _never() -> bool:
    return False


def retrying[T](
    action: Callable[[], T],
    what: str,
    *,
    give_up: Callable[[], bool] = _never,
    patience: float | None = None,
    max_delay: float = 5.0,
    level: int = logging.ERROR,
) -> T:
    """Call ``action`` until it returns, retrying a ``BrokerError`` or ``ResultStoreError``
    with exponential backoff (0.05 s, doubling up to ``max_delay``): results, acks and
    follow-ups must not be dropped on a transient error.

    Re-raises the error once ``give_up()`` is true (a worker's cold stop: the lease then
    expires and the message is redelivered) or the next attempt would start more than
    ``patience`` seconds after the first."""
    deadline = None if patience is None else time.monotonic() + patience
    delay = 0.05
    while True:
        try:
            return action()
        except (BrokerError, ResultStoreError) as exc:
            if give_up() or (deadline is not None and time.monotonic() + delay > deadline):
                raise
            logger.log(level, "could not %s (retrying in %.2fs): %s", what, delay, exc)
            time.sleep(delay)  # backoff between reconnect attempts
            delay = min(delay * 2, max_delay)
