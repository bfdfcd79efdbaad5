"""A task about to run (:class:`Job`) and what came of it (:class:`Outcome`)."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field

from ..brokers.base import Delivery, Message
from ..message import Envelope
from ..request import Request
from ..results.base import ResultRecord
from ..task import Task


@dataclass(slots=True)
class Job:
    """A decoded, checked message whose task is about to run."""

    envelope: Envelope
    task: Task[..., object]
    args: list[object]
    kwargs: dict[str, object]
    request: Request
    delivery: Delivery | None = None
    started_at: float = 0.0
    #: run-once verdict for canvas follow-ups (see ``canvas.once_guard``); None = run
    once: ResultRecord | float | None = None

    @property
    def label(self) -> str:
        """The name logs show: the call's ``shadow`` name, else the task's."""
        return self.request.shadow or self.task.name


class Action(enum.Enum):
    """What happens to a message once its outcome is settled."""

    #: Acked: done (success, failure, revoked, or not run again).
    ACK = "ack"
    #: Acked and replaced by ``Outcome.retry_message`` (a retry, or put back for later).
    RETRY = "retry"
    #: Moved to the dead-letter queue with ``Outcome.reason``.
    DEAD = "dead"


@dataclass(slots=True)
class Outcome:
    """What to do with a message after its task ran (or could not run)."""

    delivery: Delivery | None
    action: Action
    records: list[ResultRecord] = field(default_factory=list)
    retry_message: Message | None = None
    reason: str = ""
    detail: str = ""
    followups: list[Callable[[], None]] = field(default_factory=list)
    state: str = ""
    error: BaseException | None = None
    #: Seconds the task ran (0.0 if it did not run).
    runtime: float = 0.0
    #: What the task returned (None unless it succeeded).
    retval: object = None
    #: The decoded message (None if it could not be decoded; set for outcomes of messages
    #: that did not run, see :meth:`TaskRunner.prepare`).
    envelope: Envelope | None = None
    #: Settled without running for another reason than revocation or expiry: a canvas step
    #: delivered again (see ``canvas.once_guard``), or a delivery put back by ``rate_limit``.
    skipped: bool = False
