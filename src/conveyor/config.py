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
from collections.abc import Callable, Iterator, Mapping
from datetime import timedelta
from types import ModuleType
from typing import TYPE_CHECKING, Any, cast, overload
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .annotations import Annotation, check_annotations
from .celery_names import check_transport_options, describe, reads_as, resolve
from .celery_settings import CELERY_PREFIXES, CELERY_SETTINGS, OLD_NAMES
from .exceptions import ConfigurationError
from .publishing import check_policy_setting
from .queues import Queue, declared_queues
from .signing import check_keys

type Check[T] = Callable[[str, object], T]
#: Where a task goes: a queue name or ``{"queue": name}``.
type RouteTarget = str | Mapping[str, object]
#: A routing table: names/globs to targets, or a function of the task name.
type RouteTable = Mapping[str, RouteTarget] | Callable[[str], RouteTarget | None]
#: ``task_routes``: one table (a mapping) or a list of tables tried in order.
type Routes = dict[str, RouteTarget] | list[RouteTable]

#: Environment variables that override settings (highest precedence; the first one set wins).
#: Celery reads ``CELERY_BROKER_URL`` and ``CELERY_RESULT_BACKEND`` the same way.
ENV_OVERRIDES = {
    "broker_url": ("CONVEYOR_BROKER_URL", "CELERY_BROKER_URL"),
    "result_backend": ("CONVEYOR_RESULT_BACKEND", "CELERY_RESULT_BACKEND"),
}


# -- checks: each turns a configured value into the setting's type or raises -------------


def _seconds(name: str, value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ConfigurationError(
            f"{name} must be a number of seconds or a timedelta, got {value!r}"
        )
    try:
        seconds = float(value)
    except ValueError:
        raise ConfigurationError(f"{name} must be a number of seconds, got {value!r}") from None
    if seconds < 0:
        raise ConfigurationError(f"{name} must not be negative, got {value!r}")
    return seconds


def _positive_seconds(name: str, value: object) -> float:
    seconds = _seconds(name, value)
    if seconds is None or seconds <= 0:
        raise ConfigurationError(f"{name} must be a positive number of seconds, got {value!r}")
    return seconds


def _non_negative_seconds(name: str, value: object) -> float:
    seconds = _seconds(name, value)
    if seconds is None:
        raise ConfigurationError(f"{name} must be a number of seconds, got None")
    return seconds


def _int(minimum: int | None = None, maximum: int | None = None) -> Check[int]:
    def check(name: str, value: object) -> int:
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigurationError(f"{name} must be an integer, got {value!r}")
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            if maximum is None:
                wanted = f"at least {minimum}"
            elif minimum is None:
                wanted = f"at most {maximum}"
            else:
                wanted = f"between {minimum} and {maximum}"
            raise ConfigurationError(f"{name} must be {wanted}, got {value}")
        return value

    return check


def _optional_int(minimum: int | None = None) -> Check[int | None]:
    required = _int(minimum)

    def check(name: str, value: object) -> int | None:
        return None if value is None else required(name, value)

    return check


def _optional_port(name: str, value: object) -> int | None:
    return None if value is None else _int(0, 65535)(name, value)


def _bool(name: str, value: object) -> bool:
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in {"1", "true", "yes", "on"}:
            return True
        if lowered in {"0", "false", "no", "off", ""}:
            return False
    if isinstance(value, bool):
        return value
    raise ConfigurationError(f"{name} must be true or false, got {value!r}")


def _optional_bool(name: str, value: object) -> bool | None:
    return None if value is None else _bool(name, value)


def _str(name: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"{name} must be a non-empty string, got {value!r}")
    return value


def _optional_str(name: str, value: object) -> str | None:
    return None if value is None else _str(name, value)


def _mapping(name: str, value: object) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"{name} must be a mapping, got {type(value).__name__}")
    return {str(key): item for key, item in value.items()}


def _transport_options(name: str, value: object) -> dict[str, Any]:
    return check_transport_options(name, _mapping(name, value))


def _routes(name: str, value: object) -> Routes:
    if value is None:
        return {}
    tables = [value] if isinstance(value, Mapping) else value
    if isinstance(tables, list | tuple):
        for table in tables:
            keys = table.keys() if isinstance(table, Mapping) else ()
            if bad := [key for key in keys if not isinstance(key, str)]:
                raise ConfigurationError(
                    f"{name}: route keys are task names or globs ('reports.*'), got {bad[0]!r} "
                    "(Celery's regular-expression keys are not supported)"
                )
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, list | tuple) and all(
        isinstance(v, Mapping) or callable(v) for v in value
    ):
        return list(value)
    raise ConfigurationError(f"{name} must map task names/globs to queues, got {value!r}")


def _json_only[T: str | list[str]](name: str, value: T) -> T:
    values = [value] if isinstance(value, str) else list(value or [])
    bad = [v for v in values if str(v).lower() not in {"json", "application/json"}]
    if bad:
        raise ConfigurationError(
            f"{name}={value!r}: Conveyor only speaks JSON (pickle and other formats can run "
            "arbitrary code on workers). Remove this setting or set it to 'json'."
        )
    return value


def _serializer(name: str, value: object) -> str:
    return _json_only(name, _str(name, value))


def _content_types(name: str, value: object) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ConfigurationError(f"{name} must be a list of content types, got {value!r}")
    return _json_only(name, [str(v) for v in value])


def _strings(name: str, value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return [str(v) for v in value]
    raise ConfigurationError(f"{name} must be a list of module names, got {value!r}")


def _timezone(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise ConfigurationError(f"{name} must be an IANA time zone name, got {value!r}")
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigurationError(f"{name}: unknown time zone {value!r}") from None
    return value


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
        None, _optional_str, "Broker URL; default: conveyor.sqlite3 beside the app's module"
    )
    result_backend = Setting[str | None](
        None, _optional_str, "Result store URL; default: the broker's"
    )
    result_expires = Setting[float | None](
        86400.0, _seconds, "Seconds results are kept (None: forever)"
    )
    result_extended = Setting(False, _bool, "Also store name, args, kwargs, worker, queue")
    broker_transport_options = Setting[dict[str, Any]](
        {}, _transport_options, "Broker options, e.g. {'key_prefix': 'x'}"
    )
    result_backend_transport_options = Setting[dict[str, Any]](
        {}, _transport_options, "Redis result store options (as broker_transport_options)"
    )
    broker_lease_timeout = Setting(30.0, _positive_seconds, "Lease length; renewed by heartbeat")
    broker_sweep_interval = Setting(
        5.0, _positive_seconds, "How often workers return expired leases"
    )
    task_max_deliveries = Setting(4, _int(1), "Deliveries before a message is dead-lettered")
    message_max_bytes = Setting(256 * 1024, _int(1024), "Largest encoded message accepted")
    message_signing_keys = Setting[list[str]](
        [], check_keys, "HMAC keys: the first signs, any verifies (conveyor.signing)"
    )
    revoke_expires = Setting(7 * 86400.0, _positive_seconds, "Seconds a revocation is remembered")
    # time
    timezone = Setting("UTC", _timezone, "IANA time zone for crontab schedules")
    enable_utc = Setting(True, _bool, "Kept for Celery compatibility; times are always UTC")
    # tasks
    task_default_queue = Setting("default", _str, "Queue of tasks with no route")
    task_routes = Setting[Routes]({}, _routes, "Task name or glob -> queue name or {'queue': ...}")
    task_queues = Setting[tuple[Queue, ...]](
        (), declared_queues, "Declared queues (conveyor.Queue): consumed by default, routing keys"
    )
    task_annotations = Setting[tuple[Annotation, ...]](
        (), check_annotations, "Task options by task name or '*' (conveyor.annotations)"
    )
    task_default_priority = Setting(5, _int(0, 9), "Priority 0-9; 9 is served first")
    task_acks_late = Setting(True, _bool, "Ack after the task finished (at-least-once)")
    task_time_limit = Setting[float | None](None, _seconds, "Hard time limit (process killed)")
    task_soft_time_limit = Setting[float | None](
        None, _seconds, "Soft limit: SoftTimeLimitExceeded"
    )
    task_always_eager = Setting(False, _bool, "Run delay() inline (tests); args still serialized")
    task_eager_propagates = Setting(False, _bool, "Eager failures raise at the call site")
    task_ignore_result = Setting(False, _bool, "Do not store results by default")
    task_enqueue_on_commit = Setting(False, _bool, "Inside a Django atomic block, send on commit")
    task_publish_retry = Setting(True, _bool, "Retry a publish that meets a connection error")
    task_publish_retry_policy = Setting[dict[str, int | float | None]](
        check_policy_setting("task_publish_retry_policy", None),
        check_policy_setting,
        "max_retries, interval_start, interval_step, interval_max (conveyor.publishing)",
    )
    task_serializer = Setting("json", _serializer, "Only 'json' (Celery compatibility)")
    result_serializer = Setting("json", _serializer, "Only 'json' (Celery compatibility)")
    accept_content = Setting(["json"], _content_types, "Only ['json'] (Celery compatibility)")
    imports = Setting[list[str]]([], _strings, "Modules to import when the worker starts")
    include = Setting[list[str]]([], _strings, "Alias of imports (Celery compatibility)")
    # worker
    worker_concurrency = Setting[int | None](
        None, _optional_int(1), "Child processes; default CPUs"
    )
    worker_threads = Setting(1, _int(1), "Threads per child for sync tasks")
    worker_prefetch_multiplier = Setting[int | None](
        None, _optional_int(1), "Messages leased per free slot; default: adaptive"
    )
    worker_prefetch_max = Setting(
        16, _int(1), "Adaptive prefetch: most messages leased per free slot"
    )
    worker_prefetch_short = Setting(
        0.005, _positive_seconds, "Adaptive prefetch: leases extra while tasks average under this"
    )
    worker_max_tasks_per_child = Setting[int | None](
        None, _optional_int(1), "Recycle child after N"
    )
    worker_max_memory_per_child = Setting[int | None](
        None, _optional_int(1), "Recycle child over KiB"
    )
    worker_shutdown_timeout = Setting(30.0, _positive_seconds, "Warm shutdown grace period")
    worker_log_tasks = Setting(True, _bool, "One log line per task outcome")
    worker_autoscale_keepalive = Setting(
        30.0, _positive_seconds, "--autoscale: seconds idle before the pool shrinks by one"
    )
    worker_metrics_port = Setting[int | None](
        None, _optional_port, "Serve Prometheus metrics on this port (0: any free one)"
    )
    worker_metrics_host = Setting("127.0.0.1", _str, "Address the metrics endpoint listens on")
    worker_started_delay = Setting(
        0.1, _non_negative_seconds, "Record STARTED once a task ran this long (0: at once)"
    )
    task_track_started = Setting(
        False, _bool, "Celery compatibility: True records STARTED at once (started delay 0)"
    )
    # events (conveyor.events)
    worker_send_task_events = Setting(
        False, _bool, "Emit events (workers: task and worker events; -E); see docs/events.md"
    )
    task_send_sent_event = Setting[bool | None](
        None, _optional_bool, "Producers emit task-sent (None: as worker_send_task_events)"
    )
    events_max_length = Setting(100_000, _int(10), "Events kept in the broker (newest)")
    events_max_age = Setting(86400.0, _positive_seconds, "Seconds events are kept")
    events_flush_interval = Setting(
        0.25, _positive_seconds, "Seconds between batched event writes of a process"
    )
    # beat
    beat_schedule = Setting[dict[str, Any]](
        {}, _mapping, "Periodic tasks: {name: {'task', 'schedule', ...}}"
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
