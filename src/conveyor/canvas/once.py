"""The run-once guard: a task sent by a follow-up may be sent again (its parent was
redelivered), always with the same id; the worker runs each such id at most once."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..message import Envelope
from ..results.base import ResultRecord

if TYPE_CHECKING:
    from ..app import Conveyor

#: Header marking a task sent by a follow-up: the worker runs one id at most once.
ONCE_HEADER = "conveyor_once"


def once_guard(app: Conveyor, envelope: Envelope) -> ResultRecord | float | None:
    """Decide about a delivery of a task sent by a follow-up (it has :data:`ONCE_HEADER`):
    ``None`` to run it; its ready record if it already finished (do not run it again, only
    re-send its follow-ups); or a delay in seconds if another delivery of the same id (and the
    same retry) started less than two lease timeouts ago (check again later)."""
    record = app.results.get(envelope.id)
    if record is not None and record.ready:
        return record
    lease = float(app.conf.broker_lease_timeout)
    if app.results.kv.claim(f"once:{envelope.id}:{envelope.retries}", 2 * lease):
        return None
    return lease / 2
