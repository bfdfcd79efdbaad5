"""What the calls of one publish read once: the settings (:class:`CallSettings`, kept while
they stay), the parent request, the clock, the routes and each task's envelope defaults
(:class:`Calls`); and the checks of the values those defaults are made of."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, SupportsFloat, SupportsIndex

from ._state import current_request
from .exceptions import ConfigurationError
from .message import MAX_TIME_LIMIT
from .publishing import RetryPolicy, publish_policy
from .queues import cap_priority
from .routing import route
from .signing import signer_for

if TYPE_CHECKING:
    from .app import Conveyor
    from .config import Settings
    from .task import Task


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
    priority = checked_priority(task.priority if task else None, calls.priority, calls, queue)
    return _Defaults(
        queue=queue,
        priority=priority,
        ignore_result=bool(first_given(task.ignore_result if task else None, calls.ignore_result)),
        acks_late=bool(first_given(task.acks_late if task else None, calls.acks_late)),
        time_limit=checked_time_limit(
            first_given(task.time_limit if task else None, calls.time_limit), "time_limit"
        ),
        soft_time_limit=checked_time_limit(
            first_given(task.soft_time_limit if task else None, calls.soft_time_limit),
            "soft_time_limit",
        ),
    )


def checked_priority(given: object, default: object, calls: Calls, queue: str) -> int:
    priority = default if given is None else given
    if not isinstance(priority, int) or isinstance(priority, bool) or not 0 <= priority <= 9:
        raise ConfigurationError(f"priority must be an integer 0-9 (9 first), got {priority!r}")
    if calls.queues:
        priority = cap_priority(calls.queues, queue, priority)
    return priority


def first_given(*values: object) -> object:
    """The first of ``values`` that is not None (a call option, then the task's, then the
    setting's), or None."""
    for value in values:
        if value is not None:
            return value
    return None


def checked_time_limit(value: object, what: str) -> float | None:
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
