"""The result records a worker writes for a task: STARTED, SUCCESS, RETRY, FAILURE, REVOKED.

:class:`RecordBuilder` fills in what every record of a task carries (its name, queue, worker,
ids, and with ``result_extended`` its arguments); :class:`~.execution.TaskRunner` picks the
state and the result.
"""

from __future__ import annotations

import time

from .. import states
from .._exceptions_registry import exception_info
from ..canvas.signature import str_option
from ..message import Envelope
from ..results.base import ResultRecord


class RecordBuilder:
    """Builds the result records of the tasks one worker runs."""

    def __init__(self, hostname: str, extended: bool) -> None:
        self.hostname = hostname
        #: ``result_extended``: records carry the task's (tagged) arguments.
        self.extended = extended

    def record(
        self,
        envelope: Envelope,
        state: str,
        result: object,
        *,
        traceback: str | None = None,
        date_done: float | None = None,
        started_at: float | None = None,
        children: list[str] | None = None,
    ) -> ResultRecord:
        """A record of ``envelope``'s task in ``state`` with ``result`` (tagged JSON)."""
        record = ResultRecord(
            id=envelope.id,
            state=state,
            result=result,
            traceback=traceback,
            date_done=date_done,
            retries=envelope.retries,
            name=envelope.task,
            worker=self.hostname,
            queue=envelope.queue,
            created_at=envelope.created_at or None,
            started_at=started_at,
            parent_id=envelope.parent_id,
            root_id=envelope.root_id,
            group_id=envelope.group_id,
            children=children,
            periodic_entry=str_option(envelope.headers, "periodic_entry"),
        )
        if self.extended:
            record.args = envelope.args
            record.kwargs = envelope.kwargs
        return record

    def final(
        self, envelope: Envelope, state: str, result: object, children: list[str] | None = None
    ) -> ResultRecord:
        """The record of a task that ended in ``state`` (done now)."""
        return self.record(
            envelope, state, result, date_done=time.time(), children=children or None
        )

    def failure(self, envelope: Envelope, exc: BaseException, einfo: str | None) -> ResultRecord:
        """The FAILURE record of a task that raised ``exc`` (``einfo``: its traceback)."""
        return self.record(
            envelope, states.FAILURE, exception_info(exc), traceback=einfo, date_done=time.time()
        )
