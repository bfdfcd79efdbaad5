"""From a call to a message: validate the options, route, build and encode the envelope.

Nothing here sends anything or changes any state: :meth:`Conveyor.send_task` and
:meth:`Conveyor.send_many` call :func:`build_call`, let the publish middleware see the
envelope, then :func:`encode_call` and publish. A value that is not JSON, an unknown option
or a bad priority raises here, at the call site, before anything is sent.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Iterator, Mapping, Sequence, Sized
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, SupportsFloat, SupportsIndex, SupportsInt

from . import states
from .brokers.base import Message
from .call_settings import Calls, checked_priority, checked_time_limit, first_given
from .canvas import ONCE_HEADER, as_signature
from .canvas.signature import chord_option, str_option
from .exceptions import ConfigurationError
from .ids import new_id
from .limits import options as limit_options
from .message import Envelope, encode_arguments, encode_envelope, to_json_value
from .publishing import publish_policy
from .results.base import ResultRecord
from .routing import by_routing_key
from .task import Task

if TYPE_CHECKING:
    from .app import Conveyor

#: Options accepted by ``apply_async`` / ``send_task``.
CALL_OPTIONS = frozenset(
    {
        "countdown",
        "eta",
        "expires",
        "queue",
        "routing_key",
        "priority",
        "task_id",
        "headers",
        "link",
        "link_error",
        "ignore_result",
        "time_limit",
        "soft_time_limit",
        "retries",
        "parent_id",
        "root_id",
        "group_id",
        "group_index",
        "group_size",
        "chord",
        "acks_late",
        "on_commit",
        # a database connection to enqueue in (transactional enqueue, PostgreSQL)
        "connection",
        "shadow",
        "serializer",
        "exchange",
        # publish options (conveyor.publishing), not envelope fields
        "retry",
        "retry_policy",
        # flow control (conveyor.limits): keys of per-key limits
        *limit_options.CALL_OPTIONS,
    }
)


@dataclass(slots=True)
class Call:
    """One call, validated and routed, not yet encoded. ``countdown`` (seconds on the
    broker's clock) and ``eta`` (a POSIX time) tell the broker when it is due."""

    envelope: Envelope
    countdown: float
    eta: float | None


#: A batch at least this long is built with the cyclic garbage collector paused.
PAUSE_GC_FROM = 1000


@contextmanager
def collection_paused(batch: object) -> Iterator[None]:
    """Pause the cyclic garbage collector while ``batch`` (a list or another sized
    collection of at least :data:`PAUSE_GC_FROM` calls) is built. Every message of a batch
    lives until the publish, so each collection walks all of them again for nothing: a third
    of the client's time for 100,000 messages. Iterators (whose own code may make garbage
    for as long as they run), small batches and a collector already off are left alone."""
    if not (isinstance(batch, Sized) and len(batch) >= PAUSE_GC_FROM and gc.isenabled()):
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def build_call(
    calls: Calls,
    name: str,
    args: Sequence[object] | None,
    kwargs: Mapping[str, object] | None,
    options: Mapping[str, object],
    task: Task[..., object] | None = None,
) -> Call:
    """Validate a call of task ``name`` (sent from inside ``calls.parent``, if any) and build
    its envelope. Headers stay as given, for the publish middleware; :func:`encode_call`
    tags them."""
    if options and not CALL_OPTIONS.issuperset(options):
        unknown = set(options) - CALL_OPTIONS
        raise ConfigurationError(f"unknown option(s) for {name}: {', '.join(sorted(unknown))}")
    # Exact types first: the ABC check costs more than the rest of this test.
    if (type(args) is not tuple and type(args) is not list and args is not None) and (
        isinstance(args, str | bytes) or not isinstance(args, Sequence)
    ):
        raise TypeError(f"args of {name} must be a list or tuple, got {type(args).__name__}")
    headers = _headers(options.get("headers"), name) if options else {}
    shadow = options.get("shadow") if options else None
    if shadow is None and task is not None:
        shadow = task.shadow_name(args or (), kwargs or {}, options)
    if shadow is not None:
        if not isinstance(shadow, str):
            raise TypeError(f"shadow of {name} must be a string, got {shadow!r}")
        headers["shadow"] = shadow
    if headers or options or _keys_limits(task):
        limit_options.call_headers(headers, name, task, args, kwargs, options)
    if task is not None and task.typing and ONCE_HEADER not in headers:
        # Follow-ups (run-once) are sent by a worker with what their parent returned: a
        # mismatch there fails in the task, as in Celery, not in the sending worker.
        task.check_arguments(args or (), kwargs or {})
    tagged_args, tagged_kwargs = (
        encode_arguments(name, args, kwargs) if args or kwargs else ([], {})
    )
    now = calls.now
    parent = calls.parent
    if not options:
        # The common call (``delay()``, ``task.s()``): every field from the task's defaults.
        defaults = calls.defaults_of(name, task)
        task_id = new_id()
        envelope = Envelope(
            id=task_id,
            task=name,
            args=tagged_args,
            kwargs=tagged_kwargs,
            queue=defaults.queue,
            priority=defaults.priority,
            expires=_expires_at(task.expires, now) if task is not None else None,
            root_id=((parent.root_id or parent.id) if parent else None) or task_id,
            parent_id=parent.id if parent else None,
            headers=headers,
            time_limit=defaults.time_limit,
            soft_time_limit=defaults.soft_time_limit,
            ignore_result=defaults.ignore_result,
            acks_late=defaults.acks_late,
            created_at=now,
        )
        return Call(envelope, 0.0, None)
    conf = calls.conf
    if "retry" in options or "retry_policy" in options:
        publish_policy(options, conf)  # publish options: checked here too (beat loads entries)
    queue = str_option(options, "queue") or by_routing_key(conf, options)
    queue = queue or calls.route(name, task)
    priority = checked_priority(
        options.get("priority"),
        first_given(task.priority if task else None, calls.priority),
        calls,
        queue,
    )
    countdown = _float(options.get("countdown") or 0.0, "countdown")
    eta = _timestamp(options.get("eta"), "eta")
    due = now + countdown if eta is None and countdown > 0 else eta
    expires = _expires_at(options.get("expires", task.expires if task else None), now)
    task_id = str(options.get("task_id") or new_id())
    parent_id = str_option(options, "parent_id") or (parent.id if parent else None)
    root_id = (
        str_option(options, "root_id")
        or (parent.root_id or parent.id if parent else None)
        or task_id
    )
    ignore_result = bool(
        first_given(
            options.get("ignore_result"),
            task.ignore_result if task else None,
            calls.ignore_result,
        )
    )
    acks_late = bool(
        first_given(options.get("acks_late"), task.acks_late if task else None, calls.acks_late)
    )
    app = calls.app
    link = options.get("link")
    link_error = options.get("link_error")
    retries = options.get("retries")
    envelope = Envelope(
        id=task_id,
        task=name,
        args=tagged_args,
        kwargs=tagged_kwargs,
        queue=queue,
        priority=priority,
        eta=due,
        expires=expires,
        retries=_int(retries, "retries") if retries else 0,
        root_id=root_id,
        parent_id=parent_id,
        group_id=str_option(options, "group_id"),
        group_index=_optional_int(options.get("group_index"), "group_index"),
        group_size=_optional_int(options.get("group_size"), "group_size"),
        chord=chord_option(options),
        callbacks=_signatures(link, app),
        errbacks=_signatures(link_error, app),
        headers=headers,
        time_limit=checked_time_limit(
            first_given(
                options.get("time_limit"), task.time_limit if task else None, calls.time_limit
            ),
            "time_limit",
        ),
        soft_time_limit=checked_time_limit(
            first_given(
                options.get("soft_time_limit"),
                task.soft_time_limit if task else None,
                calls.soft_time_limit,
            ),
            "soft_time_limit",
        ),
        ignore_result=ignore_result,
        acks_late=acks_late,
        created_at=now,
    )
    return Call(envelope, countdown, eta)


def _keys_limits(task: Task[..., object] | None) -> bool:
    """Whether ``task`` makes limit keys from its arguments (else a call without options or
    headers has no limit headers to add or drop)."""
    return task is not None and (
        task.rate_limit_key is not None or task.concurrency_key is not None
    )


def encode_call(call: Call, calls: Calls) -> tuple[Message, ResultRecord | None]:
    """Encode ``call`` into the message to publish and its QUEUED record (None when the
    task ignores its result). Tags the envelope's headers."""
    envelope = call.envelope
    headers = envelope.headers
    periodic_entry = None
    if headers:
        periodic_entry = str_option(headers, "periodic_entry")
        envelope.headers = {
            str(k): to_json_value(v, f"header {k!r} of {envelope.task}") for k, v in headers.items()
        }
    body = encode_envelope(envelope, calls.max_bytes, calls.signer)
    message = Message(
        envelope.id, envelope.queue, body, envelope.priority, call.countdown, call.eta
    )
    if envelope.ignore_result:
        return message, None
    record = ResultRecord(
        id=envelope.id,
        state=states.QUEUED,
        name=envelope.task,
        queue=envelope.queue,
        created_at=envelope.created_at,
        parent_id=envelope.parent_id,
        root_id=envelope.root_id,
        group_id=envelope.group_id,
        periodic_entry=periodic_entry,
    )
    if calls.result_extended:
        record.args = envelope.args
        record.kwargs = envelope.kwargs
    return message, record


def _float(value: object, what: str) -> float:
    if isinstance(value, SupportsFloat | SupportsIndex | str):
        number = float(value)
        if not math.isfinite(number):
            raise ConfigurationError(f"{what} must be a finite number, got {value!r}")
        return number
    raise TypeError(f"{what} must be a number, got {value!r}")


def _int(value: object, what: str) -> int:
    if isinstance(value, SupportsInt | SupportsIndex | str):
        return int(value)
    raise TypeError(f"{what} must be an integer, got {value!r}")


def _optional_int(value: object, what: str) -> int | None:
    return None if value is None else _int(value, what)


def _headers(value: object, name: str) -> dict[str, object]:
    if not value:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(f"headers of {name} must be a dict, got {type(value).__name__}")
    return dict(value)


def _signatures(value: object, app: Conveyor) -> list[dict[str, object]]:
    """The ``link`` / ``link_error`` option as serialized signatures."""
    if value is None:
        return []
    return [as_signature(s, app).to_dict() for s in _listify(value)]


def _listify(value: object) -> list[object]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def _timestamp(value: object, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)  # naive datetimes are taken as UTC
        return float(value.timestamp())
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ConfigurationError(f"{what} must be a finite time, got {value!r}")
        return float(value)
    raise ConfigurationError(f"{what} must be a datetime, got {value!r}")


def _expires_at(value: object, now: float) -> float | None:
    if value is None:
        return None
    if isinstance(value, timedelta):
        return now + value.total_seconds()
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ConfigurationError(f"expires must be a finite number, got {value!r}")
        return now + float(value)
    return _timestamp(value, "expires")
