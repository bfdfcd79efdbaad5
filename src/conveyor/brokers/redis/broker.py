"""The Redis broker: its parts put together (see the package's docstring)."""

from __future__ import annotations

from ..._redis_urls import REDIS_SCHEMES
from .inspection import Inspection
from .lease import Leasing
from .maintenance import Maintenance


class RedisBroker(Leasing, Maintenance, Inspection):
    """A broker kept in Redis or a Redis Cluster: :mod:`conveyor.brokers.redis`."""

    schemes = REDIS_SCHEMES
    lease_checks_revoked = True
