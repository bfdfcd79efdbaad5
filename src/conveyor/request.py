"""The request: what a running task knows about its own message (``self.request``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .message import Envelope, from_json_value


@dataclass(slots=True)
class Request:
    """What a running task knows about its own message (``self.request`` in bound tasks)."""

    id: str
    task: str
    args: list[object] = field(default_factory=list)
    kwargs: dict[str, object] = field(default_factory=dict)
    retries: int = 0
    eta: float | None = None
    expires: float | None = None
    queue: str | None = None
    priority: int | None = None
    root_id: str | None = None
    parent_id: str | None = None
    group_id: str | None = None
    group_index: int | None = None
    hostname: str | None = None
    delivery_count: int = 1
    headers: dict[str, object] = field(default_factory=dict)
    is_eager: bool = False
    time_limit: float | None = None
    soft_time_limit: float | None = None
    #: the name to show in logs instead of the task's (Celery's ``shadow``), if any
    shadow: str | None = None
    #: ids of tasks sent while this one ran (stored as the result's ``children``)
    children: list[str] = field(default_factory=list)
    #: the envelope this request came from (for retries); not part of the public API
    envelope: Envelope | None = None
    #: called before update_state() writes this task's own state (the worker uses it to
    #: drop a STARTED record not stored yet, which would overwrite it); not public API
    before_state_update: Callable[[], None] | None = None

    @classmethod
    def from_envelope(
        cls,
        envelope: Envelope,
        args: list[object],
        kwargs: dict[str, object],
        *,
        hostname: str | None = None,
        delivery_count: int = 1,
        is_eager: bool = False,
    ) -> Request:
        """The request of the task in ``envelope`` (with its decoded arguments)."""
        headers = (
            {key: from_json_value(value) for key, value in envelope.headers.items()}
            if envelope.headers
            else {}
        )
        shadow = headers.get("shadow")
        return cls(
            id=envelope.id,
            task=envelope.task,
            args=args,
            kwargs=kwargs,
            retries=envelope.retries,
            eta=envelope.eta,
            expires=envelope.expires,
            queue=envelope.queue,
            priority=envelope.priority,
            root_id=envelope.root_id,
            parent_id=envelope.parent_id,
            group_id=envelope.group_id,
            group_index=envelope.group_index,
            hostname=hostname,
            delivery_count=delivery_count,
            headers=headers,
            is_eager=is_eager,
            time_limit=envelope.time_limit,
            soft_time_limit=envelope.soft_time_limit,
            shadow=shadow if isinstance(shadow, str) and shadow else None,
            envelope=envelope,
        )

    @property
    def delivery_info(self) -> dict[str, object]:
        return {"routing_key": self.queue, "priority": self.priority}
