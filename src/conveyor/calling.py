"""From a call to a message: validate the options, route, build and encode the envelope.

Nothing here sends anything or changes any state: :meth:`Conveyor.send_task` and
:meth:`Conveyor.send_many` call :func:`build_call`, let the publish middleware see the
envelope, then :func:`encode_call` and publish. A value that is not JSON, an unknown option
or a bad priority raises here, at the call site, before anything is sent.
"""

from __future__ import annotations

import copy
import gc
import math
import os
import time
from collections.abc import Iterator, Mapping, Sequence, Sized
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import TYPE_CHECKING, SupportsFloat, SupportsIndex, SupportsInt

from . import states
from ._state import current_request
from .brokers.base import Message, queue_matches
from .canvas import ONCE_HEADER, as_signature
from .canvas.signature import chord_option, str_option
from .config import RouteTarget, Settings
from .exceptions import ConfigurationError
from .limits import options as limit_options
from .message import MAX_TIME_LIMIT, Envelope, encode_arguments, encode_envelope, to_json_value
from .publishing import RetryPolicy
from .queues import Exchange, cap_priority, queue_for_routing_key
from .results.base import ResultRecord
from .signing import signer_for
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


# Task ids come from one urandom read per ``_ID_BATCH`` ids (a syscall per id costs more than
# the rest of the id). A forked child drops what its parent drew, so no two processes share an
# id; ``list.pop`` is atomic, so threads never share one either.
_ID_BATCH = 256
_id_pool: list[str] = []
# Byte 6 of a version 4 UUID starts with the version (4), byte 8 with the variant (10).
_VERSION_4 = bytes((b & 0x0F) | 0x40 for b in range(256))
_VARIANT_10 = bytes((b & 0x3F) | 0x80 for b in range(256))


def new_ids(count: int) -> list[str]:
    """``count`` new random (version 4) UUIDs as strings, from one urandom read (the version
    and variant bits of all of them set by two translations, the hex made in one call)."""
    raw = bytearray(os.urandom(16 * count))
    raw[6::16] = raw[6::16].translate(_VERSION_4)
    raw[8::16] = raw[8::16].translate(_VARIANT_10)
    h = raw.hex()
    return [
        f"{h[i : i + 8]}-{h[i + 8 : i + 12]}-{h[i + 12 : i + 16]}-{h[i + 16 : i + 20]}-"
        f"{h[i + 20 : i + 32]}"
        for i in range(0, 32 * count, 32)
    ]


def new_id() -> str:
    """A new task id (a random UUID as a string): ``conveyor.uuid()``, Celery's ``uuid()``."""
    try:
        return _id_pool.pop()
    except IndexError:
        _id_pool.extend(new_ids(_ID_BATCH))
        return _id_pool.pop()


os.register_at_fork(after_in_child=_id_pool.clear)


class CallSettings:
    """The settings every call reads, read once while :attr:`Settings.version` stays and
    the list/dict settings a call reads (routes, signing keys) compare equal to the copies
    kept here; also each task's envelope defaults (:class:`_Defaults`) while the
    task's options stay. :meth:`Conveyor.send_call` (``delay()``) would otherwise read a dozen
    settings and work out the defaults again on every call."""

    __slots__ = (
        "acks_late",
        "defaults",
        "ignore_result",
        "keys",
        "max_bytes",
        "priority",
        "queues",
        "result_extended",
        "routes",
        "settings",
        "signer",
        "soft_time_limit",
        "static_routes",
        "time_limit",
        "version",
    )

    def __init__(self, conf: Settings) -> None:
        self.settings = conf
        self.version = conf.version
        routes = conf.task_routes
        tables = routes if isinstance(routes, list) else [routes]
        #: Routes of tables only (no router functions): a task's queue can be kept.
        self.static_routes = all(isinstance(table, Mapping) for table in tables)
        self.routes = routes
        if self.static_routes:
            try:
                self.routes = copy.deepcopy(routes)  # compared at each call: in-place changes
            except Exception:  # a value that cannot be copied: route every call
                self.static_routes = False
        self.queues = conf.task_queues  # a tuple of frozen Queues: set, never changed
        self.keys = list(conf.message_signing_keys)
        self.priority = conf.task_default_priority
        self.ignore_result = conf.task_ignore_result
        self.acks_late = conf.task_acks_late
        self.time_limit = conf.task_time_limit
        self.soft_time_limit = conf.task_soft_time_limit
        self.max_bytes = conf.message_max_bytes
        self.signer = signer_for(self.keys)
        self.result_extended = conf.result_extended
        #: Task name -> (the task, its options, its defaults), for calls without options.
        self.defaults: dict[str, tuple[Task[..., object] | None, tuple[object, ...], _Defaults]]
        self.defaults = {}

    def current(self, conf: Settings) -> bool:
        """Whether these are still the settings of ``conf``."""
        return (
            conf is self.settings
            and conf.version == self.version
            and conf.task_routes == self.routes
            and conf.message_signing_keys == self.keys
        )


def call_settings(app: Conveyor) -> CallSettings:
    """The app's :class:`CallSettings`, read again if a setting changed."""
    shared = app.call_settings
    if shared is None or not shared.current(app.conf):
        shared = app.call_settings = CallSettings(app.conf)
    return shared


class Calls:
    """What the calls of one publish share, read once: the settings, the parent request,
    the clock and the routes. :meth:`Conveyor.send_many` builds one per batch,
    ``delay()`` one per call (cheap: the settings come from :func:`call_settings`)."""

    __slots__ = (
        "acks_late",
        "app",
        "before",
        "conf",
        "ignore_result",
        "max_bytes",
        "now",
        "parent",
        "policy",
        "priority",
        "queues",
        "result_extended",
        "routes",
        "shared",
        "signer",
        "soft_time_limit",
        "time_limit",
    )

    def __init__(self, app: Conveyor) -> None:
        conf = app.conf
        shared = call_settings(app)
        self.app = app
        self.conf = conf
        self.shared = shared
        self.now = time.time()
        self.parent = current_request()
        self.before = app.hooks.before_publish
        self.queues = shared.queues
        self.priority = shared.priority
        self.ignore_result = shared.ignore_result
        self.acks_late = shared.acks_late
        self.time_limit = shared.time_limit
        self.soft_time_limit = shared.soft_time_limit
        self.max_bytes = shared.max_bytes
        self.signer = shared.signer
        self.result_extended = shared.result_extended
        #: The publish policy of calls without publish options (None: not read yet).
        self.policy: tuple[RetryPolicy | None] | None = None
        #: Queue by task name and task, for calls with options.
        self.routes: dict[tuple[str, int], str] = {}

    def publish_policy(self, options: Mapping[str, object]) -> RetryPolicy | None:
        """:func:`publish_policy` of a call's options (read once for calls without any)."""
        if "retry" in options or "retry_policy" in options:
            return publish_policy(options, self.conf)
        if self.policy is None:
            self.policy = (publish_policy({}, self.conf),)
        return self.policy[0]

    def route(self, name: str, task: Task[..., object] | None) -> str:
        key = (name, id(task))
        found = self.routes.get(key)
        if found is None:
            found = self.routes[key] = route(self.conf, name, task)
        return found

    def defaults_of(self, name: str, task: Task[..., object] | None) -> _Defaults:
        """The envelope fields of a call of ``name`` without options, kept while the
        settings (see :class:`CallSettings`) and the task's own options stay."""
        options = _task_options(task)
        kept = self.shared.defaults.get(name)
        if kept is not None and kept[0] is task and kept[1] == options:
            return kept[2]
        found = _defaults(self, name, task)
        if self.shared.static_routes:
            self.shared.defaults[name] = (task, options, found)
        return found


def _task_options(task: Task[..., object] | None) -> tuple[object, ...]:
    """What a task's call defaults are made of (compared, so a changed option is seen)."""
    if task is None:
        return ()
    return (
        task.queue,
        task.priority,
        task.ignore_result,
        task.acks_late,
        task.time_limit,
        task.soft_time_limit,
    )


@dataclass(frozen=True, slots=True)
class _Defaults:
    """The envelope fields of a call without options (see :meth:`Calls.defaults_of`);
    ``expires`` is the task's option, made a time at each call."""

    queue: str
    priority: int
    ignore_result: bool
    acks_late: bool
    time_limit: float | None
    soft_time_limit: float | None


def _defaults(calls: Calls, name: str, task: Task[..., object] | None) -> _Defaults:
    queue = calls.route(name, task)
    priority = _priority(task.priority if task else None, calls.priority, calls, queue)
    return _Defaults(
        queue=queue,
        priority=priority,
        ignore_result=bool(_pick(task.ignore_result if task else None, calls.ignore_result)),
        acks_late=bool(_pick(task.acks_late if task else None, calls.acks_late)),
        time_limit=_time_limit(
            _pick(task.time_limit if task else None, calls.time_limit), "time_limit"
        ),
        soft_time_limit=_time_limit(
            _pick(task.soft_time_limit if task else None, calls.soft_time_limit),
            "soft_time_limit",
        ),
    )


def _priority(given: object, default: object, calls: Calls, queue: str) -> int:
    priority = default if given is None else given
    if not isinstance(priority, int) or isinstance(priority, bool) or not 0 <= priority <= 9:
        raise ConfigurationError(f"priority must be an integer 0-9 (9 first), got {priority!r}")
    if calls.queues:
        priority = cap_priority(calls.queues, queue, priority)
    return priority


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


def route(conf: Settings, name: str, task: Task[..., object] | None = None) -> str:
    """The queue for task ``name``: ``task_routes`` (exact name, then globs), the task's
    ``queue`` option, then ``task_default_queue``."""
    routes = conf.task_routes
    tables = routes if isinstance(routes, list) else [routes]
    for table in tables:
        if not isinstance(table, Mapping):
            found = table(name)
            if found:
                return _queue_of(found, conf)
            continue
        if name in table:
            return _queue_of(table[name], conf)
        for pattern, target in table.items():
            if queue_matches(pattern, name):
                return _queue_of(target, conf)
    if task is not None and task.queue:
        return task.queue
    return conf.task_default_queue


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
    queue = str_option(options, "queue") or _by_routing_key(conf, options)
    queue = queue or calls.route(name, task)
    priority = _priority(
        options.get("priority"),
        _pick(task.priority if task else None, calls.priority),
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
        _pick(
            options.get("ignore_result"),
            task.ignore_result if task else None,
            calls.ignore_result,
        )
    )
    acks_late = bool(
        _pick(options.get("acks_late"), task.acks_late if task else None, calls.acks_late)
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
        time_limit=_time_limit(
            _pick(options.get("time_limit"), task.time_limit if task else None, calls.time_limit),
            "time_limit",
        ),
        soft_time_limit=_time_limit(
            _pick(
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


def publish_policy(options: Mapping[str, object], conf: Settings) -> RetryPolicy | None:
    """How the publish of a call is retried: the ``retry`` / ``retry_policy`` call options
    over the ``task_publish_retry`` / ``task_publish_retry_policy`` settings (None: no
    retries). A bad option raises ConfigurationError here, naming the bad key."""
    retry = options.get("retry")
    if retry is None:
        retry = conf.task_publish_retry
    elif not isinstance(retry, bool):
        raise ConfigurationError(f"retry must be True or False, got {retry!r}")
    base = _configured_policy(tuple(conf.task_publish_retry_policy.items()))
    given = options.get("retry_policy")
    if given is not None:
        if not isinstance(given, Mapping):
            raise ConfigurationError(f"retry_policy must be a mapping, got {type(given).__name__}")
        policy = RetryPolicy.from_mapping(given, base)
    else:
        policy = base
    return policy if retry else None


@lru_cache(maxsize=16)
def _configured_policy(items: tuple[tuple[str, int | float | None], ...]) -> RetryPolicy:
    # The setting is checked when set; this saves building the policy on every call.
    return RetryPolicy.from_mapping(dict(items))


def _pick(*values: object) -> object:
    for value in values:
        if value is not None:
            return value
    return None


def _float(value: object, what: str) -> float:
    if isinstance(value, SupportsFloat | SupportsIndex | str):
        number = float(value)
        if not math.isfinite(number):
            raise ConfigurationError(f"{what} must be a finite number, got {value!r}")
        return number
    raise TypeError(f"{what} must be a number, got {value!r}")


def _time_limit(value: object, what: str) -> float | None:
    """A time limit in seconds: None or 0 for none, else a positive number up to
    :data:`~conveyor.message.MAX_TIME_LIMIT` (ten years)."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, SupportsFloat | SupportsIndex | str):
        raise TypeError(f"{what} must be a number of seconds, got {value!r}")
    try:
        seconds = float(value)
    except (ValueError, OverflowError):
        raise ConfigurationError(f"{what} must be a number of seconds, got {value!r}") from None
    if not math.isfinite(seconds) or not 0 <= seconds <= MAX_TIME_LIMIT:
        raise ConfigurationError(
            f"{what} must be a number of seconds from 0 (none) to {MAX_TIME_LIMIT:.0f} "
            f"(ten years), got {value!r}"
        )
    return seconds


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


def _by_routing_key(conf: Settings, options: Mapping[str, object]) -> str | None:
    """The queue a call's ``routing_key`` (and ``exchange``) reaches: the declared queue it
    binds to, or without declarations the queue of that name (Celery's default direct
    exchange routes a key to the queue of that name)."""
    key = str_option(options, "routing_key")
    if key is None:
        return None
    if not conf.task_queues:
        return key
    exchange = options.get("exchange")
    exchange_name = exchange.name if isinstance(exchange, Exchange) else exchange
    if exchange_name is not None and not isinstance(exchange_name, str):
        raise ConfigurationError(f"exchange must be a name or conveyor.Exchange, got {exchange!r}")
    return queue_for_routing_key(conf.task_queues, key, exchange_name)


def _queue_of(target: RouteTarget, conf: Settings) -> str:
    if isinstance(target, str):
        return target
    if isinstance(target, Mapping) and isinstance(queue := target.get("queue"), str):
        return queue
    if isinstance(target, Mapping) and conf.task_queues and "routing_key" in target:
        found = _by_routing_key(conf, target)
        if found is not None:
            return found
    raise ConfigurationError(f"a route must name a queue or be {{'queue': name}}, got {target!r}")


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
