"""What makes a call unique: the mode, the time bound and the key, checked where they are
given (task definition or call) so a bad value fails there, never in a worker."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from ..exceptions import ConfigurationError
from ..message import encode_arguments

#: The header a unique task's message carries: ``{"key": ..., "mode": ...}``; the worker
#: releases the key with it.
UNIQUE_HEADER = "unique"

#: Call options of ``apply_async`` / ``send_task`` that make one call unique.
UNIQUE_CALL_OPTIONS = ("unique_key", "unique_for", "unique_mode")

type KeyFunction = Callable[..., str]


class UniqueMode(StrEnum):
    """When a unique task's key is free again (BullMQ's deduplication modes, Sidekiq's
    ``until``)."""

    #: While the task is queued, delayed, retrying or running; free once it ended (success,
    #: final failure, dead letter, revoke, expiry) - or after ``unique_for`` seconds.
    UNTIL_FINISHED = "until_finished"
    #: While the task waits to start; free when a worker starts it.
    UNTIL_STARTED = "until_started"
    #: A fixed window of ``unique_for`` seconds from the first call, whatever the task does.
    THROTTLE = "throttle"
    #: The task waits ``unique_for`` seconds (or the call's countdown); a call meanwhile
    #: replaces it (its arguments win) and restarts the wait. Free when a worker starts it.
    DEBOUNCE = "debounce"


@dataclass(frozen=True, slots=True)
class UniqueCall:
    """One call's uniqueness: the storage key, the mode, and the lock's bound in seconds."""

    key: str
    mode: UniqueMode
    unique_for: float

    def header(self) -> dict[str, object]:
        return {"key": self.key, "mode": str(self.mode)}


def check_unique_for(value: object) -> float:
    """``unique_for`` in seconds: a finite number >= 1."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(f"unique_for must be a number of seconds >= 1, got {value!r}")
    seconds = float(value)
    if not math.isfinite(seconds) or seconds < 1:
        raise ConfigurationError(f"unique_for must be a number of seconds >= 1, got {value!r}")
    return seconds


def check_mode(value: object) -> UniqueMode:
    for mode in UniqueMode:
        if value == mode.value:
            return mode
    modes = ", ".join(repr(m.value) for m in UniqueMode)
    raise ConfigurationError(f"unique_mode must be one of {modes}, got {value!r}")


def check_task_options(
    unique_for: object, unique_mode: object, unique_key: object, name: str
) -> None:
    """The unique options of a task definition (``@app.task(unique_for=...)``)."""
    if unique_for is not None:
        check_unique_for(unique_for)
    check_mode(unique_mode)
    if unique_key is not None:
        if not callable(unique_key):
            raise ConfigurationError(
                f"unique_key of task {name} must be a function of the task's arguments "
                f"returning a string, got {unique_key!r}"
            )
        if unique_for is None:
            raise ConfigurationError(f"unique_key of task {name} needs unique_for (seconds)")


def unique_call(
    name: str,
    args: Sequence[object] | None,
    kwargs: Mapping[str, object] | None,
    given: Mapping[str, object],
    task_options: tuple[object, object, object] = (None, UniqueMode.UNTIL_FINISHED, None),
) -> UniqueCall | None:
    """The uniqueness of a call of task ``name``: the call's ``unique_*`` options over the
    task's ``(unique_for, unique_mode, unique_key)``; None if the call is not unique."""
    task_for, task_mode, task_key = task_options
    unique_for = given.get("unique_for", task_for)
    key = given.get("unique_key")
    if unique_for is None:
        if key is not None or "unique_mode" in given:
            raise ConfigurationError(f"unique_key/unique_mode of {name} need unique_for (seconds)")
        return None
    seconds = check_unique_for(unique_for)
    mode = check_mode(given.get("unique_mode", task_mode))
    if key is None and callable(task_key):
        key = task_key(*(args or ()), **(kwargs or {}))
        if not isinstance(key, str) or not key:
            raise TypeError(
                f"unique_key of task {name} must return a non-empty string, got {key!r}"
            )
    if key is None:
        return UniqueCall(
            f"unique:{name}:args:{arguments_digest(name, args, kwargs)}", mode, seconds
        )
    if not isinstance(key, str) or not key:
        raise TypeError(f"unique_key of {name} must be a non-empty string, got {key!r}")
    return UniqueCall(f"unique:{name}:key:{key}", mode, seconds)


def arguments_digest(
    name: str, args: Sequence[object] | None, kwargs: Mapping[str, object] | None
) -> str:
    """A digest of the call's arguments as JSON (keyword order does not matter)."""
    tagged_args, tagged_kwargs = encode_arguments(name, args, kwargs)
    text = json.dumps([tagged_args, tagged_kwargs], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]
