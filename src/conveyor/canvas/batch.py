"""Batches: a set of tasks (and nested batches) with callbacks that fire once.

``batch(members, on_success=..., on_complete=..., on_death=...)`` (Sidekiq Pro's batches):
``on_complete`` fires when every member ended (some may have failed), ``on_success`` when
every member succeeded, ``on_death`` when the first member was dead-lettered. Each callback
is sent with ``{"batch_id", "description", "total", "failed", "dead"}`` (and, for
``on_death``, the dead member's ``task_id`` and ``reason``) as its first argument.

State, in the result store's key/value store (``app.results.kv``) beside chord state:

* ``batch:<id>`` - the record (callbacks as JSON, parent batch, description);
* four idempotent join sets ``batch:<id>:members|done|failed|dead``, each seeded with the
  member :data:`SEED` so that joining it reads a set's size without changing it. A member's
  id joins ``members`` *before* the member is published (also when a running member adds
  tasks), and ``done`` after its result is stored; whoever sees ``done`` reach ``members``
  completes the batch. A member adds to ``members`` before it joins ``done`` itself, so the
  batch cannot complete while a member that adds work runs.
* Callbacks are sent with ids derived from the batch id and the run-once header, after a
  "sent" marker is checked: a redelivered member that completes the batch again re-sends
  the same ids, which the worker's run-once guard skips (exactly-once, as chord bodies).

A nested batch is a member of its parent under its own id: it joins the parent's ``done``
(and ``failed``) when it completes, and ``dead`` when one of its members died.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .. import _state, states
from ..exceptions import BrokerError, ConveyorError, ResultStoreError
from ..middleware import Middleware
from ..result import AsyncResult
from .plan import SendPlan
from .signature import Signature, SignatureLike, as_signature

if TYPE_CHECKING:
    from ..app import Conveyor
    from ..message import Envelope
    from ..worker.job import Outcome

logger = logging.getLogger("conveyor.canvas")

#: The header of a batch member: the id of its batch.
BATCH_HEADER = "conveyor_batch"
#: The member every set of a batch starts with (a task id is never ".").
SEED = "."
#: Seconds a dead member's ``on_death`` is retried through store errors.
PATIENCE = 30.0

type Member = Signature | SignatureLike | batch
_KINDS = ("success", "complete", "death")


class BatchClosedError(ConveyorError):
    """Work was added to a batch that completed already."""


@dataclass(frozen=True, slots=True)
class BatchProgress:
    """How far a batch is: ``done`` of ``total`` members ended (``failed`` of them did not
    succeed, ``dead`` were dead-lettered)."""

    total: int
    done: int
    failed: int
    dead: int

    @property
    def pending(self) -> int:
        return max(0, self.total - self.done)

    @property
    def finished(self) -> bool:
        return self.done >= self.total

    def __str__(self) -> str:
        return f"{self.done}/{self.total}"


class batch:  # a canvas primitive: lower-case like group and chord
    """Members (task signatures or nested batches) with callbacks fired once each."""

    def __init__(
        self,
        members: Iterable[Member] = (),
        *,
        on_success: SignatureLike | None = None,
        on_complete: SignatureLike | None = None,
        on_death: SignatureLike | None = None,
        description: str | None = None,
        app: Conveyor | None = None,
    ) -> None:
        if description is not None and not isinstance(description, str):
            raise TypeError(f"description must be a string, got {description!r}")
        self.description = description
        self.members: list[Signature | batch] = [_member(m, app) for m in members]
        self.callbacks: dict[str, Signature | None] = {
            "success": None if on_success is None else as_signature(on_success, app),
            "complete": None if on_complete is None else as_signature(on_complete, app),
            "death": None if on_death is None else as_signature(on_death, app),
        }
        # Like group: the app of the first part that has one, else the default app.
        parts = [*self.members, *(s for s in self.callbacks.values() if s is not None)]
        self._app: Conveyor | None = app or next((p._app for p in parts if p._app), None)

    def __repr__(self) -> str:
        return f"<batch of {len(self.members)}>"

    @property
    def app(self) -> Conveyor:
        return self._app if self._app is not None else _state.default_app()

    def apply_async(self, *, batch_id: str | None = None) -> BatchResult:
        """Store the batch, then publish its members (one bulk publish per batch)."""
        return self._open(self.app, batch_id or str(uuid.uuid4()), None)

    def delay(self) -> BatchResult:
        return self.apply_async()

    def _open(self, app: Conveyor, batch_id: str, parent: str | None) -> BatchResult:
        kv, ttl = app.results.kv, app.results.expires
        record = {
            "callbacks": {k: None if s is None else s.to_dict() for k, s in self.callbacks.items()},
            "parent": parent,
            "description": self.description,
        }
        kv.set_value(_key(batch_id), json.dumps(record).encode(), ttl)
        for part in ("members", "done", "failed", "dead"):
            kv.join(_key(batch_id, part), SEED, ttl)
        result = BatchResult(batch_id, app)
        result._send(self.members)
        if not self.members:
            _complete(app, batch_id)
        return result


class BatchResult:
    """A batch's handle: :meth:`progress` while it runs, :meth:`add` from its members."""

    def __init__(self, id: str, app: Conveyor | None = None) -> None:
        self.id = id
        self.app = app if app is not None else _state.default_app()
        #: The handles of the members this object sent (at apply, or by :meth:`add`).
        self.results: list[AsyncResult[object] | BatchResult] = []

    def __repr__(self) -> str:
        return f"<BatchResult {self.id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BatchResult) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def progress(self) -> BatchProgress:
        """``done/total`` now (members added later count once added)."""
        kv, ttl = self.app.results.kv, self.app.results.expires
        size = {p: kv.join(_key(self.id, p), SEED, ttl) - 1 for p in ("members", "done")}
        bad = {p: kv.join(_key(self.id, p), SEED, ttl) - 1 for p in ("failed", "dead")}
        return BatchProgress(size["members"], size["done"], bad["failed"], bad["dead"])

    @property
    def completed(self) -> bool:
        """Whether every member ended and the callbacks were sent."""
        return self.app.results.kv.get_value(_key(self.id, "completed")) is not None

    def add(self, *members: Member) -> list[AsyncResult[object] | BatchResult]:
        """Add members to this open batch: call it from a running member (the batch cannot
        complete before that member ends). Raises BatchClosedError once it completed."""
        if self.completed:
            raise BatchClosedError(f"batch {self.id} completed already; nothing can be added")
        if self.app.results.kv.get_value(_key(self.id)) is None:
            raise BatchClosedError(f"batch {self.id} is unknown (or its record expired)")
        return self._send([_member(m, self.app) for m in members])

    def _send(self, members: list[Signature | batch]) -> list[AsyncResult[object] | BatchResult]:
        app = self.app
        kv, ttl = app.results.kv, app.results.expires
        plan = SendPlan(app)
        handles: list[AsyncResult[object] | BatchResult] = []
        nested: list[tuple[batch, str]] = []
        for member in members:
            given = member.options.get("task_id") if isinstance(member, Signature) else None
            member_id = given if isinstance(given, str) and given else str(uuid.uuid4())
            kv.join(_key(self.id, "members"), member_id, ttl)  # counted before it can end
            if isinstance(member, batch):
                nested.append((member, member_id))
                handles.append(BatchResult(member_id, app))
                continue
            sig = member.clone()
            headers = sig.options.get("headers") or {}
            if not isinstance(headers, Mapping):
                raise TypeError(f"headers of {sig.task} must be a dict, got {headers!r}")
            sig.set(task_id=member_id, headers={**headers, BATCH_HEADER: self.id})
            plan.add(sig)
            handles.append(AsyncResult(member_id, app, task_name=sig.task))
        plan.send()
        for child, child_id in nested:
            child._open(app, child_id, self.id)
        self.results.extend(handles)
        return handles


def current_batch(app: Conveyor | None = None) -> BatchResult | None:
    """The batch of the task running in this thread, or None."""
    request = _state.current_request()
    batch_id = request.headers.get(BATCH_HEADER) if request is not None else None
    if not isinstance(batch_id, str):
        return None
    return BatchResult(batch_id, app)


def member_finished(app: Conveyor, batch_id: str, member_id: str, state: str) -> None:
    """A member ended in ``state`` (its result is stored): count it, complete the batch if
    it was the last. Idempotent (redeliveries)."""
    kv, ttl = app.results.kv, app.results.expires
    if state != states.SUCCESS:
        kv.join(_key(batch_id, "failed"), member_id, ttl)
    done = kv.join(_key(batch_id, "done"), member_id, ttl) - 1
    total = kv.join(_key(batch_id, "members"), SEED, ttl) - 1
    if done >= total:
        _complete(app, batch_id)


def member_died(app: Conveyor, batch_id: str, member_id: str, reason: str) -> None:
    """A member is being dead-lettered: count it and send ``on_death`` (once per batch)."""
    kv, ttl = app.results.kv, app.results.expires
    kv.join(_key(batch_id, "dead"), member_id, ttl)
    record = _record(app, batch_id)
    if record is None:
        return
    summary = {**_summary(app, batch_id, record), "task_id": member_id, "reason": reason}
    _fire(app, batch_id, "death", record, summary)
    parent = record.get("parent")
    if isinstance(parent, str):
        member_died(app, parent, batch_id, reason)


def _complete(app: Conveyor, batch_id: str) -> None:
    record = _record(app, batch_id)
    if record is None:
        logger.error("batch %s: its record is gone (expired?); callbacks not sent", batch_id)
        return
    summary = _summary(app, batch_id, record)
    if not summary["failed"] and not summary["dead"]:
        _fire(app, batch_id, "success", record, summary)
    _fire(app, batch_id, "complete", record, summary)
    app.results.kv.set_value(_key(batch_id, "completed"), b"1", app.results.expires)
    parent = record.get("parent")
    if isinstance(parent, str):
        failed = bool(summary["failed"] or summary["dead"])
        member_finished(app, parent, batch_id, states.FAILURE if failed else states.SUCCESS)


def _fire(app: Conveyor, batch_id: str, kind: str, record: dict[str, object], arg: object) -> None:
    """Send callback ``kind`` once: a deterministic id and the run-once header."""
    callbacks = record.get("callbacks")
    data = callbacks.get(kind) if isinstance(callbacks, dict) else None
    if not isinstance(data, dict):
        return
    sent = _key(batch_id, f"sent:{kind}")
    kv = app.results.kv
    if kv.get_value(sent) is not None:
        return
    sig = Signature.from_dict(data, app)
    seed = f"conveyor:batch:{batch_id}:{kind}"
    sig._freeze(lambda path: str(uuid.uuid5(uuid.NAMESPACE_URL, seed + path)), "", {})
    plan = SendPlan(app, once=True)
    plan.add(sig, (arg,))
    plan.send()
    kv.set_value(sent, b"1", app.results.expires)


def _summary(app: Conveyor, batch_id: str, record: Mapping[str, object]) -> dict[str, object]:
    progress = BatchResult(batch_id, app).progress()
    return {
        "batch_id": batch_id,
        "description": record.get("description"),
        "total": progress.total,
        "failed": progress.failed,
        "dead": progress.dead,
    }


def _record(app: Conveyor, batch_id: str) -> dict[str, object] | None:
    raw = app.results.kv.get_value(_key(batch_id))
    if raw is None:
        return None
    data = json.loads(raw)
    return data if isinstance(data, dict) else None


def _key(batch_id: str, part: str | None = None) -> str:
    return f"batch:{batch_id}" if part is None else f"batch:{batch_id}:{part}"


def _member(value: Member, app: Conveyor | None) -> Signature | batch:
    if isinstance(value, batch):
        return value
    sig = as_signature(value, app)
    if type(sig) is not Signature:
        raise TypeError(
            f"a batch member must be a task signature or a batch, got {type(sig).__name__} "
            "(put a chain or group inside a task, or use a nested batch)"
        )
    return sig


class BatchMiddleware(Middleware):
    """Built into every app: a batch member being dead-lettered fires ``on_death``, and
    counts as ended and failed (by its follow-ups when it has any, here otherwise: a
    malformed message)."""

    def __init__(self, app: Conveyor) -> None:
        self.app = app

    def on_dead_letter(self, envelope: Envelope | None, outcome: Outcome) -> None:
        batch_id = envelope.headers.get(BATCH_HEADER) if envelope is not None else None
        if envelope is None or not isinstance(batch_id, str):
            return
        reason = str(outcome.reason or "dead")
        # Called once, before the message moves: a transient error is retried here, as
        # follow-ups are (there is no redelivery to try again).
        deadline = time.monotonic() + PATIENCE
        delay = 0.05
        while True:
            try:
                member_died(self.app, batch_id, envelope.id, reason)
                if not outcome.followups:  # nothing else will count it as ended
                    member_finished(self.app, batch_id, envelope.id, states.FAILURE)
                return
            except (BrokerError, ResultStoreError) as exc:
                if time.monotonic() + delay > deadline:
                    raise
                logger.warning("batch %s: on_death failed, retrying: %s", batch_id, exc)
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
