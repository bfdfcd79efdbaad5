"""Handles on task outcomes: :class:`AsyncResult` and :class:`GroupResult`."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Generic, TypeVar, cast

from . import _state, states
from ._exceptions_registry import rebuild_exception
from .exceptions import InvalidTaskCall, TaskExpiredError, TaskRevokedError, TimeoutError
from .message import TAG, from_json_value
from .results.base import ResultRecord

if TYPE_CHECKING:
    from .app import Conveyor

R = TypeVar("R", covariant=True)  # an AsyncResult[int] is an AsyncResult[object]


@dataclass(frozen=True, slots=True)
class ResultSnapshot:
    """What a result store held for one task at one moment (:meth:`AsyncResult.snapshot`):
    its state, value and the rest read together, so they always agree (reading
    ``result.state`` and then ``result.ready()`` is two reads, between which the task may
    finish)."""

    id: str
    state: str
    #: The return value (SUCCESS), the exception (FAILURE, REVOKED, EXPIRED, RETRY), the
    #: meta of a custom state (``update_state``), or None.
    result: object
    traceback: str | None
    date_done: datetime | None
    retries: int
    name: str | None

    @property
    def info(self) -> object:
        return self.result

    @property
    def status(self) -> str:
        return self.state

    @property
    def ready(self) -> bool:
        return self.state in states.READY_STATES

    @property
    def successful(self) -> bool:
        return self.state == states.SUCCESS

    @property
    def failed(self) -> bool:
        return self.state == states.FAILURE


class AsyncResult(Generic[R]):
    """The outcome of one task, fetched from the app's result store on access.

    ``state`` is PENDING for ids the store has never seen, QUEUED once the broker accepted the
    message, then STARTED, RETRY, and one of the ready states SUCCESS, FAILURE, REVOKED, EXPIRED.
    """

    #: Unique tasks: the id of the task holding the call's key, which this result is (no
    #: new task was queued); None when the call queued a task.
    duplicate_of: str | None = None
    #: Debounced unique tasks: the id of the waiting task this call replaced (revoked).
    replaced: str | None = None

    def __init__(
        self,
        id: str,
        app: Conveyor | None = None,
        *,
        task_name: str | None = None,
        parent: AsyncResult[object] | GroupResult | None = None,
    ) -> None:
        self.id = id
        self.app = app if app is not None else _state.default_app()
        self.task_name = task_name
        self._parent: AsyncResult[object] | GroupResult | None = parent
        self._ready_record: ResultRecord | None = None

    def __repr__(self) -> str:
        return f"<AsyncResult {self.id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AsyncResult) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    # -- reading -------------------------------------------------------------------------
    def _record(self) -> ResultRecord | None:
        if self._ready_record is not None:
            return self._ready_record
        record = self.app.results.get(self.id)
        if record is not None and record.ready:
            self._ready_record = record
        return record

    @property
    def state(self) -> str:
        record = self._record()
        return record.state if record is not None else states.PENDING

    def snapshot(self) -> ResultSnapshot:
        """State, value, traceback and the rest from one read of the store, consistent with
        each other: what a status endpoint should use (``snap.state``, ``snap.ready``,
        ``snap.result``) rather than several properties, each of which reads again."""
        record = self._record()
        if record is None:
            return ResultSnapshot(self.id, states.PENDING, None, None, None, 0, self.task_name)
        done = record.date_done
        return ResultSnapshot(
            id=self.id,
            state=record.state,
            result=self._value(record),
            traceback=record.traceback,
            date_done=None if done is None else datetime.fromtimestamp(done, UTC),
            retries=record.retries,
            name=record.name or self.task_name,
        )

    status = state

    def ready(self) -> bool:
        return self.state in states.READY_STATES

    def successful(self) -> bool:
        return self.state == states.SUCCESS

    def failed(self) -> bool:
        return self.state == states.FAILURE

    @property
    def result(self) -> object:
        """The return value, the exception (FAILURE), or the meta of custom states."""
        record = self._record()
        return None if record is None else self._value(record)

    info = result

    @property
    def traceback(self) -> str | None:
        record = self._record()
        return None if record is None else record.traceback

    @property
    def date_done(self) -> datetime | None:
        record = self._record()
        if record is None or record.date_done is None:
            return None
        return datetime.fromtimestamp(record.date_done, UTC)

    @property
    def date_started(self) -> datetime | None:
        record = self._record()
        if record is None or record.started_at is None:
            return None
        return datetime.fromtimestamp(record.started_at, UTC)

    @property
    def retries(self) -> int:
        record = self._record()
        return 0 if record is None else record.retries

    @property
    def name(self) -> str | None:
        record = self._record()
        return record.name if record is not None and record.name else self.task_name

    @property
    def args(self) -> list[object] | None:
        record = self._record()
        return None if record is None or record.args is None else from_json_value(record.args)

    @property
    def kwargs(self) -> dict[str, object] | None:
        record = self._record()
        if record is None or record.kwargs is None:
            return None
        return {key: from_json_value(value) for key, value in record.kwargs.items()}

    @property
    def worker(self) -> str | None:
        record = self._record()
        return None if record is None else record.worker

    @property
    def queue(self) -> str | None:
        record = self._record()
        return None if record is None else record.queue

    @property
    def parent(self) -> AsyncResult[object] | GroupResult | None:
        """The result this one came from: the previous step of a chain (a chord body's is the
        header's GroupResult). Known from the workflow that returned this handle, else read
        from the stored record's ``parent_id``."""
        if self._parent is None:
            record = self._record()
            if record is not None and record.parent_id:
                self._parent = AsyncResult(record.parent_id, self.app)
        return self._parent

    @parent.setter
    def parent(self, value: AsyncResult[object] | GroupResult | None) -> None:
        self._parent = value

    @property
    def children(self) -> list[AsyncResult[object]]:
        record = self._record()
        if record is None or not record.children:
            return []
        return [AsyncResult(child, self.app, parent=self) for child in record.children]

    def _value(self, record: ResultRecord) -> object:
        """The return value of a SUCCESS; the exception of any other ready state."""
        if record.state == states.FAILURE or record.state == states.RETRY:
            return self._exception(record)
        if record.state == states.REVOKED:
            return TaskRevokedError(f"task {self.id} was revoked")
        if record.state == states.EXPIRED:
            return TaskExpiredError(f"task {self.id} expired before it started")
        stored = record.result
        if type(stored) is dict and stored.get(TAG) == "result":
            return result_from_tuple(from_json_value(stored), self.app)
        return from_json_value(stored)

    def _exception(self, record: ResultRecord) -> BaseException:
        declared: tuple[type[BaseException], ...] = ()
        name = record.name or self.task_name
        if name and name in self.app.tasks:
            declared = tuple(self.app.tasks[name].throws)
        return rebuild_exception(record.result, record.traceback, declared)

    # -- waiting -------------------------------------------------------------------------
    def get(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        interval: float | None = None,
        disable_sync_subtasks: bool = True,
    ) -> R:
        """Wait for the task to finish and return its value.

        Raises the task's exception on failure (when ``propagate``), TaskRevokedError or
        TaskExpiredError for those states, and :class:`conveyor.exceptions.TimeoutError`
        when ``timeout`` passes. Waiting is done by the result store without busy polling.
        """
        if disable_sync_subtasks and _state.joining_forbidden():
            raise InvalidTaskCall(
                "never call result.get() inside a task: it can deadlock the worker. "
                "Use a chain or a chord, or pass disable_sync_subtasks=False if you must."
            )
        record = self._ready_record or self.app.results.wait(self.id, timeout)
        if record is None or not record.ready:
            raise TimeoutError(f"task {self.id} did not finish within {timeout} s")
        self._ready_record = record
        value = self._value(record)
        if propagate and isinstance(value, BaseException):
            raise value
        # The stored value is what the task returned (R), or its error with propagate=False.
        return cast(R, value)

    wait = get

    async def aget(self, timeout: float | None = None, propagate: bool = True) -> R:
        """``get()`` for async code: waits in a worker thread, never blocking the loop."""
        return await asyncio.to_thread(self.get, timeout, propagate)

    def forget(self) -> None:
        self.app.results.forget([self.id])
        self._ready_record = None

    def revoke(self, terminate: bool = False) -> None:
        """Revoke the task: it will never start; with ``terminate`` a running one is stopped."""
        self.app.revoke(self.id, terminate=terminate)

    def as_tuple(self) -> tuple[object, ...]:
        """Celery's form: ``((id, parent's form or None), None)`` (see
        :func:`result_from_tuple`)."""
        parent = self.parent
        return ((self.id, parent.as_tuple() if parent else None), None)


class ResultSet:
    """Results of several tasks read and waited for together (Celery's ``ResultSet``);
    :class:`GroupResult` is one with an id. Members may be GroupResults."""

    def __init__(
        self,
        results: Sequence[AsyncResult[object] | GroupResult],
        app: Conveyor | None = None,
    ) -> None:
        self.results: list[AsyncResult[object] | GroupResult] = list(results)
        self.app = app if app is not None else _state.default_app()

    def __repr__(self) -> str:
        return f"<ResultSet [{', '.join(r.id for r in self.results)}]>"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and getattr(other, "results", None) == self.results

    def __hash__(self) -> int:
        return hash(tuple(r.id for r in self.results))

    def add(self, result: AsyncResult[object] | GroupResult) -> None:
        """Add ``result`` to the set (if not already in it)."""
        if result not in self.results:
            self.results.append(result)

    def update(self, results: Iterable[AsyncResult[object] | GroupResult]) -> None:
        for result in results:
            self.add(result)

    def discard(self, result: AsyncResult[object] | GroupResult) -> None:
        if result in self.results:
            self.results.remove(result)

    remove = discard

    def clear(self) -> None:
        self.results.clear()

    def __len__(self) -> int:
        return len(self.results)

    def __iter__(self) -> Iterator[AsyncResult[object] | GroupResult]:
        return iter(self.results)

    def __getitem__(self, index: int) -> AsyncResult[object] | GroupResult:
        return self.results[index]

    @property
    def children(self) -> list[AsyncResult[object] | GroupResult]:
        return self.results

    def leaves(self) -> list[AsyncResult[object]]:
        """Every task's result, nested groups flattened, in order."""
        out: list[AsyncResult[object]] = []
        for result in self.results:
            if isinstance(result, GroupResult):
                out.extend(result.leaves())
            else:
                out.append(result)
        return out

    def _states(self) -> dict[str, str]:
        """State of every task, read in one round trip."""
        leaves = self.leaves()
        records = self.app.results.get_many([r.id for r in leaves])
        return {
            r.id: record.state if record is not None else states.PENDING
            for r, record in zip(leaves, records, strict=True)
        }

    def _member_states(self) -> list[list[str]]:
        found = self._states()
        return [
            [found[leaf.id] for leaf in result.leaves()]
            if isinstance(result, GroupResult)
            else [found[result.id]]
            for result in self.results
        ]

    def ready(self) -> bool:
        """True when every task is ready (SUCCESS, FAILURE, REVOKED or EXPIRED)."""
        return all(state in states.READY_STATES for state in self._states().values())

    def waiting(self) -> bool:
        return not self.ready()

    def successful(self) -> bool:
        """True when every task succeeded."""
        return all(state == states.SUCCESS for state in self._states().values())

    def failed(self) -> bool:
        """True when any task failed."""
        return any(state == states.FAILURE for state in self._states().values())

    def completed_count(self) -> int:
        """How many members succeeded (a nested group counts once, when all of it did)."""
        return sum(
            1
            for member in self._member_states()
            if all(state == states.SUCCESS for state in member)
        )

    def get(
        self,
        timeout: float | None = None,
        propagate: bool = True,
        interval: float | None = None,
        disable_sync_subtasks: bool = True,
    ) -> list[object]:
        """Every task's value in group order (lists for nested groups); raises the first
        failure in that order when ``propagate``, else returns the exception in its place."""
        deadline = None if timeout is None else time.monotonic() + timeout
        values = []
        for result in self.results:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            values.append(
                result.get(
                    timeout=remaining,
                    propagate=propagate,
                    disable_sync_subtasks=disable_sync_subtasks,
                )
            )
        return values

    join = get
    join_native = get

    async def aget(self, timeout: float | None = None, propagate: bool = True) -> list[object]:
        return await asyncio.to_thread(self.get, timeout, propagate)

    def revoke(self, terminate: bool = False) -> None:
        self.app.revoke([r.id for r in self.leaves()], terminate=terminate)

    def forget(self) -> None:
        self.app.results.forget([r.id for r in self.leaves()])


class GroupResult(ResultSet):
    """Results of a group of tasks, in the group's order (members may be GroupResults).

    ``save()`` stores the membership so ``GroupResult.restore(id, app=app)`` can rebuild it
    from the id alone (a chord's header is saved under the chord id automatically).
    """

    def __init__(
        self,
        id: str,
        results: Sequence[AsyncResult[object] | GroupResult],
        app: Conveyor | None = None,
        *,
        parent: AsyncResult[object] | GroupResult | None = None,
    ) -> None:
        super().__init__(results, app)
        self.id = id
        self.parent = parent

    def __repr__(self) -> str:
        return f"<GroupResult {self.id} [{len(self.results)} tasks]>"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, GroupResult) and other.id == self.id and other.results == self.results
        )

    def __hash__(self) -> int:
        return hash(self.id)

    def as_tuple(self) -> tuple[object, ...]:
        return (
            (self.id, self.parent.as_tuple() if self.parent else None),
            [r.as_tuple() for r in self.results],
        )

    # -- saving ----------------------------------------------------------------------------
    @property
    def storage_key(self) -> str:
        return f"group:{self.id}"

    def _tree(self) -> dict[str, object]:
        return {
            "id": self.id,
            "results": [r._tree() if isinstance(r, GroupResult) else r.id for r in self.results],
        }

    def dumps(self) -> bytes:
        """The stored form: ids, nested groups as ``{"id", "results"}``."""
        return json.dumps(self._tree()).encode()

    def save(self) -> GroupResult:
        """Store the membership (for ``result_expires``) so it can be restored by id."""
        store = self.app.results
        store.kv.set_value(self.storage_key, self.dumps(), store.expires)
        return self

    def delete(self) -> None:
        self.app.results.kv.delete_value(self.storage_key)

    @classmethod
    def restore(cls, id: str, app: Conveyor | None = None) -> GroupResult | None:
        """The saved group ``id``, or None if it was never saved (or expired)."""
        app = app if app is not None else _state.default_app()
        raw = app.results.kv.get_value(f"group:{id}")
        if raw is None:
            return None
        return cls._from_tree(json.loads(raw), app)

    @classmethod
    def _from_tree(cls, tree: dict[str, object], app: Conveyor) -> GroupResult:
        items = tree["results"]
        if not isinstance(items, list):
            raise TypeError(f"saved group {tree['id']!r} has no list of results")
        return cls(
            str(tree["id"]),
            [
                cls._from_tree(item, app) if isinstance(item, dict) else AsyncResult(str(item), app)
                for item in items
            ],
            app,
        )


def result_from_tuple(
    value: object, app: Conveyor | None = None
) -> AsyncResult[object] | GroupResult:
    """Rebuild a result from its ``as_tuple()`` form (Celery's ``result_from_tuple``): what
    ``get()`` returns for a task that returned an AsyncResult or a GroupResult."""
    if isinstance(value, AsyncResult | GroupResult):
        return value
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise TypeError(f"not the as_tuple() form of a result: {value!r}")
    head, nodes = value
    task_id, parent_form = head if isinstance(head, list | tuple) else (head, None)
    parent = result_from_tuple(parent_form, app) if parent_form else None
    if nodes is not None:
        if not isinstance(nodes, list | tuple):
            raise TypeError(f"not the as_tuple() form of a group result: {value!r}")
        members = [result_from_tuple(node, app) for node in nodes]
        return GroupResult(str(task_id), members, app, parent=parent)
    return AsyncResult(str(task_id), app, parent=parent)


@contextmanager
def allow_join_result() -> Iterator[None]:
    """Allow ``result.get()`` inside a running task within this block (Celery's
    ``allow_join_result``). Waiting on another task from a task can deadlock a worker whose
    slots are all waiting: prefer a chain or a chord."""
    token = _state.join_allowed.set(True)
    try:
        yield
    finally:
        _state.join_allowed.reset(token)
