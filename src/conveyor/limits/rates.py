"""Rates of ``rate_limit``: "100/m" parsed into a :class:`Rate` (a token bucket's refill and size).

The text is Celery's: ``"<count>/<unit>"`` with unit ``s``, ``m``, ``h`` or ``d`` (seconds,
minutes, hours, days), or a bare number per second. A rate is a token bucket that holds
``burst`` tokens (1 unless given) and gains one every ``1 / per_second`` seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..exceptions import ConfigurationError

_UNITS = {"": 1.0, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


@dataclass(frozen=True, slots=True)
class Rate:
    """``per_second`` tokens a second, at most ``burst`` of them saved up."""

    per_second: float
    burst: int = 1
    text: str = ""

    @property
    def interval(self) -> float:
        """Seconds between two tokens."""
        return 1.0 / self.per_second

    @property
    def tolerance(self) -> float:
        """How far ahead of its schedule the bucket may run (``burst - 1`` tokens)."""
        return (self.burst - 1) * self.interval


def parse_rate(value: object, what: str = "rate_limit", burst: int = 1) -> Rate:
    """A :class:`Rate` from ``"10/s"``, ``"100/m"``, ``"1000/h"``, ``"5000/d"`` or a positive
    number per second; anything else raises :class:`ConfigurationError` naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ConfigurationError(
            f"{what} must be a rate like '10/s', '100/m' or '1000/h', got {value!r}"
        )
    count, _, unit = str(value).strip().partition("/")
    seconds = _UNITS.get(unit.strip().lower())
    try:
        number = float(count)
    except ValueError:
        number = math.nan
    if seconds is None or not math.isfinite(number) or number <= 0:
        raise ConfigurationError(
            f"invalid {what} {value!r}: use a positive count per unit, e.g. '10/s', '100/m', "
            "'1000/h', '5000/d'"
        )
    if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
        raise ConfigurationError(f"the burst of {what} must be an integer >= 1, got {burst!r}")
    return Rate(number / seconds, burst, str(value))
