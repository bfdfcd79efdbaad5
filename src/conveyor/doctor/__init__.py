"""``conveyor doctor``: check a deployment and say how to fix what is wrong.

Each check is a function of the app returning findings (:class:`Finding`: a level, a
message and a fix). :func:`diagnose` runs them all; a check that fails unexpectedly becomes an
error finding of its own, so one broken check never hides the others.

* :mod:`.storage`: the broker's and result store's servers (Redis ``maxmemory-policy`` and
  persistence; SQLite file location, file system and WAL; PostgreSQL in :mod:`.postgres`:
  schema version, durability, autovacuum, long transactions; RabbitMQ in :mod:`.rabbitmq`:
  version, ``consumer_timeout``, alarms, queue arguments);
* :mod:`.fleet`: what live workers announce (clock skew against the broker, tasks the app
  sends that no worker of their queue registers, queues no worker consumes, time zone and
  signing keys that differ from this app's);
* :mod:`.setup`: settings on their own (time zone, signing, result expiry against chords).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from .findings import Finding, Level, error
from .fleet import fleet_checks
from .setup import settings_checks
from .storage import storage_checks

if TYPE_CHECKING:
    from ..app import Conveyor

Check = Callable[["Conveyor"], list[Finding]]
CHECKS: tuple[tuple[str, Check], ...] = (
    ("storage", storage_checks),
    ("workers", fleet_checks),
    ("settings", settings_checks),
)


def diagnose(app: Conveyor) -> list[Finding]:
    """Every finding of every check, in order."""
    findings: list[Finding] = []
    for name, check in CHECKS:
        try:
            findings.extend(check(app))
        except Exception as exc:  # a failing check is a finding; the others still run
            findings.append(
                error(name, f"the check failed: {type(exc).__name__}: {exc}", "see the error")
            )
    return findings


__all__ = ["CHECKS", "Finding", "Level", "diagnose"]


def startup_warnings(app: Conveyor) -> list[Finding]:
    """The storage findings a worker logs at start: settings of its broker's or result
    store's server that lose messages (Redis eviction, no AOF; SQLite on a network file
    system). A check that cannot run is not reported here (``conveyor doctor`` says why)."""
    try:
        found = storage_checks(app, quick=True)
    except Exception:  # a start-up hint must never stop a worker
        return []
    return [f for f in found if f.level in (Level.WARNING, Level.ERROR)]
