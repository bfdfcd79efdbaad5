"""Settings: defaults, validation, ``config_from_object`` and environment overrides.

Names follow Celery's lowercase settings so existing configuration ports unchanged. Celery's
other names, old uppercase and new lowercase, are honoured, refused or ignored as
:mod:`conveyor.celery_settings` says. Unknown names are errors (with a "did you mean" hint)
rather than silently ignored, because a typo in a setting is a production incident waiting to
happen.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator, Mapping
from types import ModuleType
from typing import TYPE_CHECKING, Any, cast, overload

from .annotations import Annotation, check_annotations
from .celery_names import describe, reads_as, resolve
from .celery_settings import CELERY_PREFIXES, CELERY_SETTINGS, OLD_NAMES
from .exceptions import ConfigurationError
from .publishing import check_policy_setting
from .queues import Queue, declared_queues
from .setting_checks import (
    Check,
    Routes,
    boolean,
    content_types,
    integer,
    mapping,
    non_negative_seconds,
    optional_boolean,
    optional_integer,
    optional_port,
    optional_string,
    positive_seconds,
    routes,
    seconds,
    serializer,
    string,
    strings,
    time_zone,
    transport_options,
)
from .signing import check_keys

#: Environment variables that override settings (highest precedence; the first one set wins).
#: Celery reads ``CELERY_BROKER_URL`` and ``CELERY_RESULT_BACKEND`` the same way.
ENV_OVERRIDES = {
    "broker_url": ("CONVEYOR_BROKER_URL", "CELERY_BROKER_URL"),
    "result_backend": ("CONVEYOR_RESULT_BACKEND", "CELERY_RESULT_BACKEND"),
}


# -- the settings ------------------------------------------------------------------------


class Setting[T]:
    """One setting of :class:`Settings`: its default, how a configured value is checked
    (and converted to ``T``), and a line of documentation. Reading it on a ``Settings``
    instance gives the configured value, or the default."""

    __slots__ = ("check", "default", "doc", "name")

    def __init__(self, default: T, check: Check[T], doc: str) -> None:
        self.default = default
        self.check = check
        self.doc = doc
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, settings: None, owner: type | None = None) -> Setting[T]: ...
    @overload
    def __get__(self, settings: Settings, owner: type | None = None) -> T: ...
    def __get__(self, settings: Settings | None, owner: type | None = None) -> T | Setting[T]:
        if settings is None:
            return self
        envs = ENV_OVERRIDES.get(self.name)
        if envs:
            for env in envs:
                if override := os.environ.get(env):
                    return cast(T, override)  # only str-valued settings have overrides
        values = settings._values
        if self.name in values:
            return cast(T, values[self.name])
        default = self.default
        if isinstance(default, dict | list):
            # Each app gets its own copy of a mutable default, made once (reads are hot).
            copies = settings._defaults
            if self.name not in copies:
                copies[self.name] = type(default)(default)
            return cast(T, copies[self.name])
        return default

    def __set__(self, settings: Settings, value: object) -> None:
        settings._values[self.name] = self.check(self.name, value)
        object.__setattr__(settings, "_version", settings._version + 1)


class Settings:
    """The app's configuration, typed: read and write settings as attributes or items.

    Names follow Celery's lowercase settings; Celery's other names (``BROKER_URL``,
    ``worker_pool``, ...) are mapped or refused by :func:`conveyor.celery_names.resolve`.
    Every value is checked when it is set; an unknown name is an error naming the closest
    known one.
    """

    __slots__ = ("_defaults", "_values", "_version")
    _values: dict[str, object]  # what was set, checked
    _defaults: dict[str, object]  # this app's copies of mutable defaults
    _version: int  # see version

    # where messages and results live
    broker_url = Setting[str | None](
        None,
        optional_string,
        "Broker URL; default: conveyor.sqlite3 beside the app's module",
    )
    result_backend = Setting[str | None](
        None, optional_string, "Result store URL; default: the broker's"
    )
    result_expires = Setting[float | None](
        86400.0, seconds, "Seconds results are kept (None: forever)"
    )
    result_extended = Setting(False, boolean, "Also store name, args, kwargs, worker, queue")
    broker_transport_options = Setting[dict[str, Any]](
        {}, transport_options, "Broker options, e.g. {'key_prefix': 'x'}"
    )
    result_backend_transport_options = Setting[dict[str, Any]](
        {}, transport_options, "Redis result store options (as broker_transport_options)"
    )
    broker_lease_timeout = Setting(30.0, positive_seconds, "Lease length; renewed by heartbeat")
    broker_sweep_interval = Setting(
        5.0, positive_seconds, "How often workers return expired leases"
    )
    task_max_deliveries = Setting(4, integer(1), "Deliveries before a message is dead-lettered")
    message_max_bytes = Setting(256 * 1024, integer(1024), "Largest encoded message accepted")
    message_signing_keys = Setting[list[str]](
        [], check_keys, "HMAC keys: the first signs, any verifies (conveyor.signing)"
    )
    revoke_expires = Setting(7 * 86400.0, positive_seconds, "Seconds a revocation is remembered")
    # time
    timezone = Setting("UTC", time_zone, "IANA time zone for crontab schedules")
    enable_utc = Setting(True, boolean, "Kept for Celery compatibility; times are always UTC")
    # tasks
    task_default_queue = Setting("default", string, "Queue of tasks with no route")
    task_routes = Setting[Routes]({}, routes, "Task name or glob -> queue name or {'queue': ...}")
    task_queues = Setting[tuple[Queue, ...]](
        (), declared_queues, "Declared queues (conveyor.Queue): consumed by default, routing keys"
    )
    task_annotations = Setting[tuple[Annotation, ...]](
        (), check_annotations, "Task options by task name or '*' (conveyor.annotations)"
    )
    task_default_priority = Setting(5, integer(0, 9), "Priority 0-9; 9 is served first")
    task_acks_late = Setting(True, boolean, "Ack after the task finished (at-least-once)")
    task_time_limit = Setting[float | None](None, seconds, "Hard time limit (process killed)")
    task_soft_time_limit = Setting[float | None](None, seconds, "Soft limit: SoftTimeLimitExceeded")
    task_always_eager = Setting(False, boolean, "Run delay() inline (tests); args still serialized")
    task_eager_propagates = Setting(False, boolean, "Eager failures raise at the call site")
    task_ignore_result = Setting(False, boolean, "Do not store results by default")
    task_enqueue_on_commit = Setting(False, boolean, "Inside a Django atomic block, send on commit")
    task_publish_retry = Setting(True, boolean, "Retry a publish that meets a connection error")
    task_publish_retry_policy = Setting[dict[str, int | float | None]](
        check_policy_setting("task_publish_retry_policy", None),
        check_policy_setting,
        "max_retries, interval_start, interval_step, interval_max (conveyor.publishing)",
    )
    task_serializer = Setting("json", serializer, "Only 'json' (Celery compatibility)")
    result_serializer = Setting("json", serializer, "Only 'json' (Celery compatibility)")
    accept_content = Setting(["json"], content_types, "Only ['json'] (Celery compatibility)")
    imports = Setting[list[str]]([], strings, "Modules to import when the worker starts")
    include = Setting[list[str]]([], strings, "Alias of imports (Celery compatibility)")
    # worker
    worker_concurrency = Setting[int | None](
        None, optional_integer(1), "Child processes; default CPUs"
    )
    worker_threads = Setting(1, integer(1), "Threads per child for sync tasks")
    worker_prefetch_multiplier = Setting[int | None](
        None, optional_integer(1), "Messages leased per free slot; default: adaptive"
    )
    worker_prefetch_max = Setting(
        16, integer(1), "Adaptive prefetch: most messages leased per free slot"
    )
    worker_prefetch_short = Setting(
        0.005,
        positive_seconds,
        "Adaptive prefetch: leases extra while tasks average under this",
    )
    worker_max_tasks_per_child = Setting[int | None](
        None, optional_integer(1), "Recycle child after N"
    )
    worker_max_memory_per_child = Setting[int | None](
        None, optional_integer(1), "Recycle child over KiB"
    )
    worker_shutdown_timeout = Setting(30.0, positive_seconds, "Warm shutdown grace period")
    worker_log_tasks = Setting(True, boolean, "One log line per task outcome")
    worker_autoscale_keepalive = Setting(
        30.0, positive_seconds, "--autoscale: seconds idle before the pool shrinks by one"
    )
    worker_metrics_port = Setting[int | None](
        None, optional_port, "Serve Prometheus metrics on this port (0: any free one)"
    )
    worker_metrics_host = Setting("127.0.0.1", string, "Address the metrics endpoint listens on")
    worker_started_delay = Setting(
        0.1, non_negative_seconds, "Record STARTED once a task ran this long (0: at once)"
    )
    task_track_started = Setting(
        False,
        boolean,
        "Celery compatibility: True records STARTED at once (started delay 0)",
    )
    # events (conveyor.events)
    worker_send_task_events = Setting(
        False,
        boolean,
        "Emit events (workers: task and worker events; -E); see docs/events.md",
    )
    task_send_sent_event = Setting[bool | None](
        None, optional_boolean, "Producers emit task-sent (None: as worker_send_task_events)"
    )
    events_max_length = Setting(100_000, integer(10), "Events kept in the broker (newest)")
    events_max_age = Setting(86400.0, positive_seconds, "Seconds events are kept")
    events_flush_interval = Setting(
        0.25, positive_seconds, "Seconds between batched event writes of a process"
    )
    # beat
    beat_schedule = Setting[dict[str, Any]](
        {}, mapping, "Periodic tasks: {name: {'task', 'schedule', ...}}"
    )

    def __init__(self, **values: object) -> None:
        object.__setattr__(self, "_values", {})
        object.__setattr__(self, "_defaults", {})
        object.__setattr__(self, "_version", 0)
        self.update(values)

    @property
    def version(self) -> int:
        """A number that changes whenever a setting is set (not when a list or dict value
        is changed in place): what reads settings once may keep them while it stays."""
        return self._version

    if not TYPE_CHECKING:  # unknown names are type errors too, not Any

        def __getattr__(self, name: str) -> object:  # not a Conveyor name: Celery's old one?
            target = reads_as(name)
            if target is None or target not in SETTINGS:
                raise AttributeError(f"unknown setting {name!r}{closest_setting(name)}")
            return getattr(self, target)

    def __setattr__(self, name: str, value: object) -> None:
        self.update({name: value})

    def __getitem__(self, name: str) -> object:
        target = name if name in SETTINGS else reads_as(name)
        if target is None or target not in SETTINGS:
            raise KeyError(f"unknown setting {name!r}{closest_setting(name)}")
        return getattr(self, target)

    def __setitem__(self, name: str, value: object) -> None:
        setattr(self, name, value)

    def __contains__(self, name: object) -> bool:
        return name in SETTINGS

    def __iter__(self) -> Iterator[str]:
        return iter(SETTINGS)

    def get(self, name: str, default: object = None) -> object:
        target = name if name in SETTINGS else reads_as(name)
        return getattr(self, target) if target is not None and target in SETTINGS else default

    def update(self, values: Mapping[str, object] | None = None, /, **more: object) -> None:
        """Set several settings; all are validated before any is applied."""
        merged = {**(values or {}), **more}
        checked: dict[str, object] = {}
        for key, value in merged.items():
            name = key if key in SETTINGS else resolve(key, value, SETTINGS)  # Celery's?
            if name is not None:
                checked[name] = _setting(name).check(name, value)
        self._values.update(checked)
        object.__setattr__(self, "_version", self._version + 1)

    def explicit(self) -> dict[str, object]:
        """Settings that were set (not defaults)."""
        return dict(self._values)

    def as_dict(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in SETTINGS}


#: Every setting by name (the class attributes of :class:`Settings`).
SETTINGS: dict[str, Setting[Any]] = {
    name: value for name, value in vars(Settings).items() if isinstance(value, Setting)
}


def _setting(name: str) -> Setting[Any]:
    setting = SETTINGS.get(name)
    if setting is None:
        raise ConfigurationError(f"unknown setting {name!r}{closest_setting(name)}")
    return setting


def closest_setting(name: str) -> str:
    """The hint after "unknown setting": the closest name, or what becomes of a Celery name."""
    return describe(name, SETTINGS)


def load_object(source: str) -> object:
    """Import ``"pkg.module"`` or ``"pkg.module:attr"`` (Celery also accepts this)."""
    module_name, _, attr = source.partition(":")
    try:
        module: ModuleType = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"cannot import configuration {source!r}: {exc}") from exc
    if not attr:
        return module
    obj: object = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigurationError(f"{module_name!r} has no attribute {attr!r}") from None
    return obj


def settings_from(source: object, namespace: str | None = None) -> dict[str, object]:
    """Extract settings, by their Conveyor names, from a module, object, mapping or dotted path.

    With ``namespace="CONVEYOR"``, ``CONVEYOR_BROKER_URL`` becomes ``broker_url``; keys without
    the prefix are ignored, and unknown prefixed keys are errors. Without a namespace, lowercase
    public names and Celery's old uppercase names (``BROKER_URL``, ``CELERYD_CONCURRENCY``) are
    settings; other uppercase names (``DEBUG``) are ignored, but not unknown ``CELERY*_`` ones.
    Celery names are honoured, refused or ignored as :mod:`conveyor.celery_settings` says.
    """
    if isinstance(source, str):
        source = load_object(source)
    prefix = namespace.rstrip("_") + "_" if namespace else ""

    def wanted(key: str) -> bool:
        if prefix:  # under Celery's own namespace, its old names are mistakes to report
            return key.startswith(prefix) or (
                prefix == "CELERY_" and key.startswith(CELERY_PREFIXES)
            )
        return key == key.lower() or key in OLD_NAMES or key.startswith(CELERY_PREFIXES)

    # Read only the names we may use: getattr on unrelated settings can have side effects
    # (Django warns when deprecated settings are read).
    if isinstance(source, Mapping):
        items = {str(key): value for key, value in source.items() if wanted(str(key))}
    else:
        names = [name for name in dir(source) if not name.startswith("_") and wanted(name)]
        items = {name: getattr(source, name) for name in names}
    found: dict[str, object] = {}
    given: dict[str, str] = {}  # setting -> the key that set it
    for key, value in items.items():
        target: str | None
        if prefix:
            name = _namespaced(key, prefix)
            if name is None:
                raise ConfigurationError(f"unknown setting {key!r}{_celery_hint(key, prefix)}")
            try:
                target = name if name in SETTINGS else resolve(name, value, SETTINGS)
            except ConfigurationError as exc:
                raise ConfigurationError(f"{key}: {exc}") from None
        elif key == key.lower():
            if isinstance(value, ModuleType | type) or callable(value):
                continue  # helpers in a settings module
            target = key if key in SETTINGS else resolve(key, value, SETTINGS)
        elif key in OLD_NAMES:
            target = resolve(key, value, SETTINGS)
        else:
            raise ConfigurationError(f"unknown setting {key!r}{_celery_hint(key, prefix)}")
        if target is None:
            continue
        if target in given and found[target] != value:
            raise ConfigurationError(f"{given[target]} and {key} both set {target}: keep one")
        found[target], given[target] = value, key
    return found


def _namespaced(key: str, prefix: str) -> str | None:
    """The setting a namespaced key names (Conveyor's or Celery's), or None."""
    if not key.startswith(prefix):
        return None
    name = key[len(prefix) :].lower()
    return name if name in SETTINGS or name in CELERY_SETTINGS else None


def _celery_hint(key: str, prefix: str) -> str:
    """Why ``key`` is unknown: its namespaced twin, Celery's namespace rules or the closest."""
    if key in OLD_NAMES:  # an old name under namespace="CELERY": Celery ignores it too
        new = OLD_NAMES[key]
        return f"; it is Celery's old name, not read under a namespace: use {prefix}{new.upper()}"
    if not prefix and key.startswith("CELERY_"):
        name = key.removeprefix("CELERY_").lower()
        if name in SETTINGS or name in CELERY_SETTINGS:
            return f"; {key} names {name} only with config_from_object(..., namespace='CELERY')"
    name = key[len(prefix) :].lower() if prefix else key
    names = [*SETTINGS, *CELERY_SETTINGS]
    import difflib  # only for a suggestion: not loaded at start-up

    matches = difflib.get_close_matches(name, names, n=1, cutoff=0.5) if prefix else []
    if matches:
        return f"; did you mean {prefix + matches[0].upper()!r}?"
    return describe(key, SETTINGS)
