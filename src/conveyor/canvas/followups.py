"""What a worker does after a task finished (its result is stored): send its ``link``
callbacks or ``link_error`` errbacks, record the tasks that will never run, and join the
chord it belongs to, sending the chord's body when the header is complete.

Every id sent here is derived from the finished task's id (:func:`followup_id`), so doing
this again for a redelivered task sends the same tasks again, which the worker's run-once
guard then skips.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Sequence
from functools import partial
from typing import TYPE_CHECKING

from .. import states
from ..exceptions import BrokerError, ResultStoreError
from ..message import ChordInfo, Envelope, decode_arguments, from_json_value
from ..request import Request
from ..results.base import ResultRecord
from . import chords
from .batch import BATCH_HEADER, member_finished
from .errbacks import send_errbacks
from .plan import SendPlan
from .signature import (
    IdFactory,
    Signature,
    as_signature,
    chord_option,
    listify,
    str_option,
)

if TYPE_CHECKING:
    from ..app import Conveyor

logger = logging.getLogger("conveyor.canvas")


def followup_ids(task_id: str, kind: str, index: int) -> IdFactory:
    """Ids for the ``index``-th ``kind`` (``"link"`` / ``"errback"``) follow-up of
    ``task_id`` and the tasks inside it: they depend only on these and the position."""
    seed = f"{task_id}:{kind}:{index}"
    return lambda path: str(uuid.uuid5(uuid.NAMESPACE_URL, f"conveyor:{seed}{path}"))


def followup_id(task_id: str, kind: str, index: int) -> str:
    """The deterministic id of the ``index``-th ``kind`` follow-up of ``task_id``."""
    return followup_ids(task_id, kind, index)("")


def on_task_finished(app: Conveyor, envelope: Envelope, state: str, value: object) -> None:
    """Follow-ups of a finished task: ``link`` callbacks with the result (SUCCESS); otherwise
    ``link_error`` errbacks (FAILURE) with ``(task_id, {"type", "message"})`` - plus the
    traceback text for handlers that require a third argument - and the tasks its callbacks
    would have started are marked as not run; then the chord join, if it is a header task.

    Safe to run more than once for one task (a redelivery): every id sent is deterministic
    and the chord join is an idempotent set-add."""
    if envelope.callbacks or envelope.errbacks or envelope.chord:
        _retrying(lambda: _settle(app, envelope, state, value))
    batch_id = envelope.headers.get(BATCH_HEADER)
    if isinstance(batch_id, str):  # a batch member: counted once its links were sent
        _retrying(lambda: member_finished(app, batch_id, envelope.id, state))


def _settle(app: Conveyor, envelope: Envelope, state: str, value: object) -> None:
    task_id = envelope.id
    if state == states.SUCCESS:
        result = from_json_value(value)
        plan = SendPlan(app, once=True, parent_id=task_id, root_id=envelope.root_id)
        for index, data in enumerate(envelope.callbacks):
            sig = Signature.from_dict(data, app)
            sig._freeze(followup_ids(task_id, "link", index), "", {})
            plan.add(sig, (result,))
        plan.send()
    else:
        if state == states.FAILURE and envelope.errbacks:
            args, kwargs = decode_arguments(envelope)
            request = Request.from_envelope(envelope, args, kwargs)
            ids = partial(followup_ids, task_id, "errback")
            send_errbacks(app, request, envelope.errbacks, from_json_value(value), ids=ids)
        if envelope.callbacks:
            note = f"not run: {envelope.task}[{task_id}] before it ended in {state}"
            callbacks = [Signature.from_dict(data, app) for data in envelope.callbacks]
            _mark_not_run(app, callbacks, state, value, note)
    if envelope.chord:
        _join_chord(app, envelope.chord, task_id)


def _mark_not_run(
    app: Conveyor, sigs: Sequence[Signature], state: str, info: object, note: str
) -> None:
    """Record the tasks of ``sigs`` that were never sent as not run (``state`` with ``info``,
    the note as traceback), follow their links, and join their chords on their behalf."""
    leaves = [leaf for sig in sigs for leaf in sig._leaves() if leaf.id]
    if not leaves:
        return
    existing = app.results.get_many([str(leaf.id) for leaf in leaves])
    # A task that has a record was sent after all (an earlier run of a redelivered task
    # succeeded): it runs and settles its own follow-ups.
    marked = [leaf for leaf, record in zip(leaves, existing, strict=True) if record is None]
    if not marked:
        return
    now = time.time()
    app.results.store(
        [
            ResultRecord(
                id=str(leaf.id),
                state=state,
                result=info,
                traceback=note,
                date_done=now,
                name=leaf.task,
                queue=str_option(leaf.options, "queue"),
                root_id=str_option(leaf.options, "root_id"),
                group_id=str_option(leaf.options, "group_id"),
            )
            for leaf in marked
        ]
    )
    for leaf in marked:
        links = [as_signature(s, app) for s in listify(leaf.options.get("link"))]
        if links:
            _mark_not_run(app, links, state, info, note)
        chord = chord_option(leaf.options)
        if chord is not None:
            _join_chord(app, chord, str(leaf.id))


def _join_chord(app: Conveyor, info: ChordInfo, member_id: str) -> None:
    if chords.join(app, info, member_id):
        _send_chord_body(app, info["id"], member_id)


def _send_chord_body(app: Conveyor, chord_id: str, member_id: str) -> None:
    """Send the body of a chord whose header is complete, once. If a header task did not
    succeed (and the chord propagates failures), the body is not run: it fails with a
    ChordError and its errbacks are sent instead."""
    with chords.body_claim(app, chord_id) as record:
        if record is None:
            return
        header = chords.HeaderResults.fetch(app, record.header)
        body = Signature.from_dict(record.body, app)
        if header.failed and record.propagate:
            info = header.error(chord_id)
            note = f"not run: chord {chord_id} had failed header tasks"
            for entry in body._entries():
                request = Request(
                    id=str(entry.id),
                    task=entry.task,
                    args=list(entry.args),
                    kwargs=dict(entry.kwargs),
                    root_id=str_option(entry.options, "root_id"),
                    group_id=str_option(entry.options, "group_id"),
                )
                send_errbacks(
                    app,
                    request,
                    listify(entry.options.get("link_error")),
                    from_json_value(info),
                    traceback=note,
                    ids=partial(followup_ids, str(entry.id), "errback"),
                )
            _mark_not_run(app, [body], states.FAILURE, info, note)
        else:
            plan = SendPlan(app, once=True, parent_id=member_id, root_id=record.root_id)
            plan.add(body, (header.body_argument(record.propagate),))
            plan.send()


def _retrying(action: Callable[[], None], patience: float = 30.0) -> None:
    """Follow-ups are idempotent, so a transient broker/store error is retried rather than
    losing a chain step or a chord body (the message is acked after this returns)."""
    deadline = time.monotonic() + patience
    delay = 0.05
    while True:
        try:
            action()
            return
        except (BrokerError, ResultStoreError) as exc:
            if time.monotonic() + delay > deadline:
                raise
            logger.warning("follow-up failed, retrying in %.2fs: %s", delay, exc)
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
