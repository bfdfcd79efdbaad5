"""The flow-control options of tasks and calls, checked where they are given.

Task options (``@app.task(...)``): ``rate_limit`` (Celery's), ``rate_limit_key``,
``concurrency_limit`` and ``concurrency_key``. Call options (``apply_async(...)``):
``rate_key`` and ``concurrency_key``. A per-key limit's key is computed when the task is
called (the call's option, else the task's function of the call's arguments) and travels in
the message's headers, so a bad key fails at the call site and workers never call user code
to find it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from ..exceptions import ConfigurationError
from .rates import parse_rate

#: Header of a message's rate-limit key, set by :func:`call_headers`.
RATE_KEY_HEADER = "conveyor_rate_key"
#: Header of a message's concurrency key.
CONCURRENCY_KEY_HEADER = "conveyor_concurrency_key"
#: Header naming the buckets that already booked a token for this message (a message put
#: back to wait for its token does not take another one when it comes back).
BOOKED_HEADER = "conveyor_rate_booked"
#: Header counting how often a message was put back for a concurrency slot (its backoff).
WAITS_HEADER = "conveyor_slot_waits"
#: Header counting how often a message found its bucket booked beyond its horizon.
RATE_WAITS_HEADER = "conveyor_rate_waits"

TASK_OPTIONS = frozenset({"rate_limit_key", "concurrency_limit", "concurrency_key"})
CALL_OPTIONS = frozenset({"rate_key", "concurrency_key"})
#: Longest key (characters).
MAX_KEY = 200

type KeyFunction = Callable[..., object]


class Limited(Protocol):
    """What these checks read of a task."""

    name: str
    rate_limit: str | None
    rate_limit_key: KeyFunction | None
    concurrency_limit: int | None
    concurrency_key: KeyFunction | None


def check_task(task: Limited) -> None:
    """Raise :class:`ConfigurationError` for a bad flow-control option of ``task``."""
    where = f"task {task.name or '?'}"
    if task.rate_limit is not None:
        parse_rate(task.rate_limit, f"rate_limit of {where}")
    limit = task.concurrency_limit
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigurationError(
            f"concurrency_limit of {where} must be an integer >= 1 (1: one at a time), "
            f"got {limit!r}"
        )
    keyed = (("rate_limit_key", "rate_limit"), ("concurrency_key", "concurrency_limit"))
    for option, needs in keyed:
        value = getattr(task, option)
        if value is None:
            continue
        if not callable(value):
            raise ConfigurationError(
                f"{option} of {where} must be a function of the task's arguments returning a "
                f"string key, got {value!r}"
            )
        if getattr(task, needs) is None:
            raise ConfigurationError(f"{option} of {where} needs {needs}: it keys that limit")


def check_key(value: object, what: str) -> str:
    """``value`` as a limit key: a non-empty string of printable characters."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a string, got {type(value).__name__} {value!r}")
    if not value or len(value) > MAX_KEY or not value.isprintable():
        raise ConfigurationError(
            f"{what} must be 1-{MAX_KEY} printable characters, got {value[: MAX_KEY + 1]!r}"
        )
    return value


def call_headers(
    headers: dict[str, object],
    name: str,
    task: Limited | None,
    args: Sequence[object] | None,
    kwargs: Mapping[str, object] | None,
    options: Mapping[str, object],
) -> None:
    """Put the call's limit keys into ``headers`` (and drop a forged booking)."""
    headers.pop(BOOKED_HEADER, None)
    headers.pop(WAITS_HEADER, None)
    headers.pop(RATE_WAITS_HEADER, None)
    pairs = (
        ("rate_key", RATE_KEY_HEADER, "rate_limit", "rate_limit_key"),
        ("concurrency_key", CONCURRENCY_KEY_HEADER, "concurrency_limit", "concurrency_key"),
    )
    for option, header, limit, function in pairs:
        key = options.get(option)
        if key is not None:
            check_key(key, f"{option} of {name}")
            if task is not None and getattr(task, limit) is None:
                raise ConfigurationError(
                    f"{option} given but task {name} has no {limit}: the key would limit nothing"
                )
        elif task is not None and (make := getattr(task, function)) is not None:
            key = make(*(args or ()), **(kwargs or {}))
            if key is None:  # no key for this call: the task-wide limit applies
                continue
            check_key(key, f"{function} of {name} returned a key that")
        else:
            continue
        headers[header] = key
