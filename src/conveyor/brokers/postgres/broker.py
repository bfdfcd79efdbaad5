"""The PostgreSQL broker: its parts put together.

The layout and its reasons are in the package docstring (``conveyor.brokers.postgres``);
the parts: ``core`` (state, shared helpers), ``publish``, ``lease`` (and waiting, acks),
``maintenance`` (retries, dead letters, sweep, revocations, purge, departures) and
``inspection`` (counts, dead letters, delayed messages).
"""

from __future__ import annotations

from .inspection import Inspection
from .lease import Leasing
from .maintenance import Maintenance
from .publish import Publishing


class PostgresBroker(Publishing, Leasing, Maintenance, Inspection):
    """A broker kept in PostgreSQL: :mod:`conveyor.brokers.postgres`."""

    schemes = ("postgresql", "postgres")
    lease_checks_revoked = True
