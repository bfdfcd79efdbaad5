"""The worker side of unique tasks: free each task's key at its mode's release point."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

from .. import states
from ..middleware import Middleware
from .producer import locks_of, release
from .spec import UNIQUE_HEADER, UniqueMode

if TYPE_CHECKING:
    from ..app import Conveyor
    from ..message import Envelope
    from ..worker.job import Job, Outcome

logger = logging.getLogger("conveyor.unique")

#: Modes whose key is freed when the task starts.
_AT_START = frozenset({str(UniqueMode.UNTIL_STARTED), str(UniqueMode.DEBOUNCE)})
#: Modes whose key a task that never runs (dead letter, revoke) frees.
_NOT_RUN = frozenset({*_AT_START, str(UniqueMode.UNTIL_FINISHED)})


class UniqueMiddleware(Middleware):
    """Built into every app: frees unique keys (``until_started`` / ``debounce`` when the
    task starts; ``until_finished`` when it ended: success, final failure, dead letter,
    revoke or expiry - not on a retry; ``throttle`` keys only expire)."""

    def __init__(self, app: Conveyor) -> None:
        self.app = app

    def uses_hook(self, hook: str) -> bool:
        # The per-task hooks only in workers of apps that declare a unique task (asked when
        # a worker builds its hooks, after the tasks are loaded): no cost for the others.
        # A call-time-only unique task's key is then freed by the producers' holder check.
        if hook in ("before_process", "after_process"):
            return any(task.unique_for is not None for task in list(self.app.tasks.values()))
        return True

    def before_process(self, job: Job) -> None:
        header = _header(job.envelope)
        if header is not None and header.get("mode") in _AT_START:
            self._release(header, job.envelope.id)

    def after_process(self, job: Job, outcome: Outcome) -> None:
        header = _header(job.envelope)
        if (
            header is not None
            and header.get("mode") == UniqueMode.UNTIL_FINISHED
            and outcome.state != states.RETRY
        ):
            self._release(header, job.envelope.id)

    def on_dead_letter(self, envelope: Envelope | None, outcome: Outcome) -> None:
        if envelope is not None:
            release_not_run(self.app, envelope)

    def on_revoked(self, envelope: Envelope, outcome: Outcome) -> None:
        release_not_run(self.app, envelope)

    def _release(self, header: Mapping[str, object], task_id: str) -> None:
        # An error here keeps the key until unique_for runs out (logged by call_each).
        release(locks_of(self.app), header, task_id)


def release_not_run(app: Conveyor, envelope: Envelope) -> None:
    """Free the key of a task that will not run (dead-lettered, revoked, purged), unless
    its mode keeps it (``throttle``) or another task holds it now."""
    header = _header(envelope)
    if header is not None and header.get("mode") in _NOT_RUN:
        release(locks_of(app), header, envelope.id)


def _header(envelope: Envelope | None) -> Mapping[str, object] | None:
    if envelope is None:
        return None
    header = envelope.headers.get(UNIQUE_HEADER)
    return header if isinstance(header, Mapping) else None
