"""Sending a unique task: take its key, or return the task that holds it.

The key's value in the broker's key/value store (``app.kv``, owned locks of
:mod:`conveyor.kv.locks`) is the id of the task that holds it. A call takes the key with its
new task's id *before* publishing (one atomic step on the server, so of any number of
concurrent producers exactly one publishes); the others get the holder's result. A holder
that can no longer release the key (revoked, or ended without releasing it) is replaced.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from .. import states
from ..exceptions import ConfigurationError
from ..ids import new_id
from ..kv.locks import Locks
from .spec import UNIQUE_CALL_OPTIONS, UNIQUE_HEADER, UniqueMode, unique_call

if TYPE_CHECKING:
    from ..app import Conveyor
    from ..result import AsyncResult
    from ..task import Task

logger = logging.getLogger("conveyor.unique")

#: Attempts at taking a key that keeps changing hands under the caller (debounce storms).
ATTEMPTS = 50


def wants_unique(task: Task[..., object] | None, options: Mapping[str, object]) -> bool:
    """Whether a call goes through :func:`send_unique` (a cheap test for every call)."""
    if any(name in options for name in UNIQUE_CALL_OPTIONS):
        return True
    if task is None or task.unique_for is None:
        return False
    headers = options.get("headers")
    return not (isinstance(headers, Mapping) and UNIQUE_HEADER in headers)


def locks_of(app: Conveyor) -> Locks:
    """The broker's owned locks (every built-in broker has them)."""
    kv = app.kv
    if not isinstance(kv, Locks):
        raise ConfigurationError(
            f"unique tasks need owned locks in the broker's key/value store; "
            f"{type(kv).__name__} has none"
        )
    return kv


def send_unique(
    app: Conveyor,
    name: str,
    args: Sequence[object] | None,
    kwargs: Mapping[str, object] | None,
    options: Mapping[str, object],
    *,
    task: Task[..., object] | None,
    eager: bool,
) -> AsyncResult[object]:
    """``send_call`` of a unique call: queue it under its key, or return the result of the
    task that holds the key (``duplicate_of`` set)."""
    rest = {k: v for k, v in options.items() if k not in UNIQUE_CALL_OPTIONS}
    task_options = (
        (task.unique_for, task.unique_mode, task.unique_key) if task is not None else (None,) * 3
    )
    call = unique_call(name, args, kwargs, options, task_options)
    headers = rest.get("headers")
    if headers is not None and not isinstance(headers, Mapping):
        raise TypeError(f"headers of {name} must be a dict, got {type(headers).__name__}")
    if call is None:
        return app.send_call(name, args, kwargs, rest, task=task, eager=eager)
    marked = {**(headers or {}), UNIQUE_HEADER: call.header()}
    if eager or app.conf.task_always_eager:
        # Run here and now: nothing waits in the broker to be deduplicated against.
        return app.send_call(
            name, args, kwargs, {**rest, "headers": marked}, task=task, eager=eager
        )
    task_id = str(rest.get("task_id") or new_id())
    sent = {**rest, "task_id": task_id, "headers": marked}
    ttl = call.unique_for
    if call.mode is UniqueMode.DEBOUNCE and rest.get("eta") is None:
        delay = _seconds(rest.get("countdown"), call.unique_for)
        sent["countdown"] = delay
        ttl = delay + call.unique_for
    locks = locks_of(app)
    owner = task_id.encode()
    replaced: str | None = None
    for _ in range(ATTEMPTS):
        held = locks.put_new(call.key, owner, ttl)
        if held is None:
            break
        holder = held.decode("utf-8", "replace")
        if call.mode is UniqueMode.DEBOUNCE or _stale(app, holder, call.mode):
            if locks.swap(call.key, held, owner, ttl):
                replaced = holder if call.mode is UniqueMode.DEBOUNCE else None
                break
            continue  # it changed hands meanwhile: look again
        duplicate = app.AsyncResult(holder, task_name=name)
        duplicate.duplicate_of = holder
        return duplicate
    else:
        raise ConfigurationError(f"unique key {call.key!r} kept changing hands; gave up")
    try:
        result = app.send_call(name, args, kwargs, sent, task=task)
    except BaseException:
        # Nothing was queued: give the key back (to the debounced task it was taken from).
        if replaced is None or not locks.swap(call.key, owner, replaced.encode(), ttl):
            locks.delete_if(call.key, owner)
        raise
    if replaced is not None:
        app.revoke(replaced)  # the replaced call's task never starts
        result.replaced = replaced
    return result


def _seconds(value: object, default: float) -> float:
    """A debounced call's wait: its ``countdown`` if it has one, else ``unique_for``."""
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"countdown must be a number of seconds, got {value!r}")
    return max(0.0, float(value))


def _stale(app: Conveyor, holder: str, mode: UniqueMode) -> bool:
    """Whether the key's holder will never release it: revoked, or in a state past the
    mode's release point (it ended, or started under ``until_started``)."""
    if mode is UniqueMode.THROTTLE:
        return False  # a fixed window, whatever its task did
    if app.broker.revoked([holder]):
        return True
    record = app.results.get(holder)
    if record is None:
        return False
    if record.state in states.READY_STATES:
        return True
    return mode is UniqueMode.UNTIL_STARTED and record.state in (states.STARTED, states.RETRY)


def release(locks: Locks, header: object, task_id: str) -> None:
    """Free a task's key if the task still holds it."""
    key = header.get("key") if isinstance(header, Mapping) else None
    if isinstance(key, str) and locks.delete_if(key, task_id.encode()):
        logger.debug("unique key %s released by %s", key, task_id)
