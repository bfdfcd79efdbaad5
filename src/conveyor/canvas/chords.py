"""A chord's state in the result store, and the results its body receives.

Applying a chord stores a :class:`ChordRecord` under ``chord:<id>`` before the header is
sent. Each header task, once its result is stored, joins the idempotent set
``chord:<id>:joined``; whoever completes the set sends the body inside :func:`body_claim`,
which lets one finisher at a time in and writes ``chord:<id>:sent`` afterwards.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .. import states
from .._exceptions_registry import exception_info
from ..exceptions import ChordError, ResultStoreError
from ..message import ChordInfo, from_json_value
from ..results.base import ResultRecord
from .signature import ResultTree

if TYPE_CHECKING:
    from ..app import Conveyor

logger = logging.getLogger("conveyor.canvas")


def chord_key(chord_id: str) -> str:
    return f"chord:{chord_id}"


@dataclass(frozen=True, slots=True)
class ChordRecord:
    """What a chord stores before its header is sent: where the header results will be,
    the body (as JSON), whether failures propagate, and the workflow's root id."""

    header: ResultTree
    body: dict[str, object]
    propagate: bool
    root_id: str | None

    def dumps(self) -> bytes:
        return json.dumps(
            {
                "header": self.header,
                "body": self.body,
                "propagate": self.propagate,
                "root_id": self.root_id,
            }
        ).encode()

    @classmethod
    def loads(cls, raw: bytes) -> ChordRecord:
        data = json.loads(raw)
        return cls(
            data["header"], data["body"], bool(data.get("propagate", True)), data.get("root_id")
        )


def tree_ids(tree: ResultTree) -> Iterator[str]:
    """The task ids of a result tree, in order."""
    if isinstance(tree, list):
        for item in tree:
            yield from tree_ids(item)
    else:
        yield str(tree)


def tree_map(tree: ResultTree, fn: Callable[[str], object]) -> object:
    """The tree with ``fn(task_id)`` in place of each id."""
    if isinstance(tree, list):
        return [tree_map(item, fn) for item in tree]
    return fn(str(tree))


def join(app: Conveyor, info: ChordInfo, member_id: str) -> bool:
    """Add a finished header task to chord ``info`` (``{"id", "size"}``); True when the
    header is complete (also for every later, redelivered, member)."""
    chord_id, size = info["id"], info["size"]
    joined = app.results.kv.join(f"{chord_key(chord_id)}:joined", member_id, app.results.expires)
    return joined >= size


@contextlib.contextmanager
def body_claim(app: Conveyor, chord_id: str) -> Iterator[ChordRecord | None]:
    """Hold the right to send the body of chord ``chord_id``: yields its record, or None if
    the body was sent already (or the record is gone); marks the body sent when the block
    completes.

    The claim only keeps concurrent finishers from all sending; it expires (after half a
    lease timeout, before a crashed claimer's message can be redelivered), so a claimer that
    died before sending cannot block the body. The "sent" marker, written after sending, stops
    later redeliveries; a duplicate that slips through has the same body ids and is skipped
    by the worker's run-once guard."""
    store = app.results
    sent_key = f"{chord_key(chord_id)}:sent"
    if store.kv.get_value(sent_key) is not None:
        yield None
        return
    hold = max(0.05, float(app.conf.broker_lease_timeout) / 2)
    deadline = time.monotonic() + 2 * hold + 1.0
    while not store.kv.claim(f"{chord_key(chord_id)}:sending", hold):
        if store.kv.get_value(sent_key) is not None:
            yield None
            return
        if time.monotonic() > deadline:
            raise ResultStoreError(f"chord {chord_id}: the send claim never expired")
        time.sleep(0.02)
    raw = store.kv.get_value(chord_key(chord_id))
    if raw is None:
        logger.error("chord %s: its record is gone (expired?); the body cannot be sent", chord_id)
        yield None
        return
    yield ChordRecord.loads(raw)
    store.kv.set_value(sent_key, b"1", store.expires)


class HeaderResults:
    """The stored outcomes of a complete chord header."""

    def __init__(self, tree: ResultTree, records: list[ResultRecord | None]) -> None:
        self.tree = tree
        self.ids = list(tree_ids(tree))
        self.records = dict(zip(self.ids, records, strict=True))
        self.values = {
            task_id: from_json_value(record.result)
            for task_id, record in self.records.items()
            if record is not None and record.state == states.SUCCESS
        }
        #: Header tasks that did not succeed, in header order.
        self.failed = [task_id for task_id in self.ids if task_id not in self.values]

    @classmethod
    def fetch(cls, app: Conveyor, tree: ResultTree) -> HeaderResults:
        return cls(tree, app.results.get_many(list(tree_ids(tree))))

    def body_argument(self, propagate: bool) -> object:
        """What the body receives: the results in header order; with ``propagate=False``
        each header task's ``{"task_id", "state", "result", "error"}``."""
        if propagate:
            return tree_map(self.tree, self.values.__getitem__)
        return tree_map(self.tree, lambda task_id: _outcome(task_id, self.records[task_id]))

    def error(self, chord_id: str) -> dict[str, object]:
        """The body's failure info: a ChordError naming (up to five) failed header tasks."""
        shown = []
        for task_id in self.failed[:5]:
            record = self.records[task_id]
            error = _error(record)
            name = record.name if record is not None and record.name else "?"
            shown.append(f"{name}[{task_id}] {error['type']}: {error['message']}")
        more = f" (and {len(self.failed) - 5} more)" if len(self.failed) > 5 else ""
        message = (
            f"chord {chord_id}: {len(self.failed)} of {len(self.ids)} header task(s) did not "
            "succeed: " + "; ".join(shown) + more
        )
        return {**exception_info(ChordError(message)), "failed": self.failed}


def _outcome(task_id: str, record: ResultRecord | None) -> dict[str, object]:
    """One header task's outcome, as a ``propagate=False`` body receives it."""
    if record is not None and record.state == states.SUCCESS:
        return {
            "task_id": task_id,
            "state": record.state,
            "result": from_json_value(record.result),
            "error": None,
        }
    state = record.state if record is not None else states.PENDING
    return {"task_id": task_id, "state": state, "result": None, "error": _error(record)}


def _error(record: ResultRecord | None) -> dict[str, str]:
    if record is None:
        return {"type": "conveyor.exceptions.ChordError", "message": "result missing"}
    if record.state == states.FAILURE and isinstance(record.result, dict):
        info = from_json_value(record.result)
        if isinstance(info, dict):
            return {"type": str(info.get("type")), "message": str(info.get("message", ""))}
    if record.state == states.REVOKED:
        return {"type": "conveyor.exceptions.TaskRevokedError", "message": "revoked"}
    if record.state == states.EXPIRED:
        return {"type": "conveyor.exceptions.TaskExpiredError", "message": "expired"}
    return {"type": "conveyor.exceptions.ChordError", "message": f"ended in {record.state}"}
