"""Settings: defaults, validation, ``config_from_object`` and environment overrides.

Names follow Celery's lowercase settings so existing configuration ports unchanged. Unknown
names are errors (with a "did you mean" hint) rather than silently ignored, because a typo in
a setting is a production incident waiting to happen.
"""

from __future__ import annotations

import difflib
import importlib
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from types import ModuleType
from typing import Any

from .exceptions import ConfigurationError

#: Environment variables that override settings (highest precedence).
ENV_OVERRIDES = {"broker_url": "CONVEYOR_BROKER_URL", "result_backend": "CONVEYOR_RESULT_BACKEND"}


def _seconds(name: str, value: Any) -> float | None:
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


def _positive_seconds(name: str, value: Any) -> float:
    seconds = _seconds(name, value)
    if seconds is None or seconds <= 0:
        raise ConfigurationError(f"{name} must be a positive number of seconds, got {value!r}")
    return seconds


def _non_negative_seconds(name: str, value: Any) -> float:
    seconds = _seconds(name, value)
    if seconds is None:
        raise ConfigurationError(f"{name} must be a number of seconds, got None")
    return seconds


def _int(
    minimum: int | None = None, maximum: int | None = None, optional: bool = False
) -> Callable[[str, Any], Any]:
    def check(name: str, value: Any) -> int | None:
        if value is None and optional:
            return None
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigurationError(f"{name} must be an integer, got {value!r}")
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            raise ConfigurationError(f"{name} must be between {minimum} and {maximum}, got {value}")
        return value

    return check


def _bool(name: str, value: Any) -> bool:
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in {"1", "true", "yes", "on"}:
            return True
        if lowered in {"0", "false", "no", "off", ""}:
            return False
    if isinstance(value, bool):
        return value
    raise ConfigurationError(f"{name} must be true or false, got {value!r}")


def _str(optional: bool = False) -> Callable[[str, Any], Any]:
    def check(name: str, value: Any) -> str | None:
        if value is None and optional:
            return None
        if not isinstance(value, str) or not value:
            raise ConfigurationError(f"{name} must be a non-empty string, got {value!r}")
        return value

    return check


def _optional_seconds(name: str, value: Any) -> float | None:
    return _seconds(name, value)


def _mapping(name: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"{name} must be a mapping, got {type(value).__name__}")
    return dict(value)


def _routes(name: str, value: Any) -> Any:
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, list | tuple) and all(
        isinstance(v, Mapping) or callable(v) for v in value
    ):
        return list(value)
    raise ConfigurationError(f"{name} must map task names/globs to queues, got {value!r}")


def _json_only(name: str, value: Any) -> Any:
    values = [value] if isinstance(value, str) else list(value or [])
    bad = [v for v in values if str(v).lower() not in {"json", "application/json"}]
    if bad:
        raise ConfigurationError(
            f"{name}={value!r}: Conveyor only speaks JSON (pickle and other formats can run "
            "arbitrary code on workers). Remove this setting or set it to 'json'."
        )
    return value


def _strings(name: str, value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ConfigurationError(f"{name} must be a list of module names, got {value!r}")


def _timezone(name: str, value: Any) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    if not isinstance(value, str):
        raise ConfigurationError(f"{name} must be an IANA time zone name, got {value!r}")
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigurationError(f"{name}: unknown time zone {value!r}") from None
    return value


@dataclass(frozen=True, slots=True)
class Setting:
    default: Any
    check: Callable[[str, Any], Any]
    doc: str


SETTINGS: dict[str, Setting] = {
    # where messages and results live
    "broker_url": Setting(
        None, _str(optional=True), "Broker URL; default: SQLite file ./conveyor.sqlite3"
    ),
    "result_backend": Setting(None, _str(optional=True), "Result store URL; default: the broker's"),
    "result_expires": Setting(
        86400.0, _optional_seconds, "Seconds results are kept (None: forever)"
    ),
    "result_extended": Setting(False, _bool, "Also store name, args, kwargs, worker, queue"),
    "broker_transport_options": Setting({}, _mapping, "Broker options, e.g. {'key_prefix': 'x'}"),
    "broker_lease_timeout": Setting(30.0, _positive_seconds, "Lease length; renewed by heartbeat"),
    "broker_sweep_interval": Setting(
        5.0, _positive_seconds, "How often workers return expired leases"
    ),
    "task_max_deliveries": Setting(4, _int(1), "Deliveries before a message is dead-lettered"),
    "message_max_bytes": Setting(256 * 1024, _int(1024), "Largest encoded message accepted"),
    "revoke_expires": Setting(7 * 86400.0, _positive_seconds, "Seconds a revocation is remembered"),
    # time
    "timezone": Setting("UTC", _timezone, "IANA time zone for crontab schedules"),
    "enable_utc": Setting(True, _bool, "Kept for Celery compatibility; times are always UTC"),
    # tasks
    "task_default_queue": Setting("default", _str(), "Queue of tasks with no route"),
    "task_routes": Setting({}, _routes, "Task name or glob -> queue name or {'queue': ...}"),
    "task_default_priority": Setting(5, _int(0, 9), "Priority 0-9; 9 is served first"),
    "task_acks_late": Setting(True, _bool, "Ack after the task finished (at-least-once)"),
    "task_time_limit": Setting(None, _optional_seconds, "Hard time limit (process killed)"),
    "task_soft_time_limit": Setting(None, _optional_seconds, "Soft limit: SoftTimeLimitExceeded"),
    "task_always_eager": Setting(False, _bool, "Run delay() inline (tests); args still serialized"),
    "task_eager_propagates": Setting(False, _bool, "Eager failures raise at the call site"),
    "task_ignore_result": Setting(False, _bool, "Do not store results by default"),
    "task_enqueue_on_commit": Setting(False, _bool, "Inside a Django atomic block, send on commit"),
    "task_serializer": Setting("json", _json_only, "Only 'json' (Celery compatibility)"),
    "result_serializer": Setting("json", _json_only, "Only 'json' (Celery compatibility)"),
    "accept_content": Setting(["json"], _json_only, "Only ['json'] (Celery compatibility)"),
    "imports": Setting([], _strings, "Modules to import when the worker starts"),
    "include": Setting([], _strings, "Alias of imports (Celery compatibility)"),
    # worker
    "worker_concurrency": Setting(None, _int(1, optional=True), "Child processes; default CPUs"),
    "worker_threads": Setting(1, _int(1), "Threads per child for sync tasks"),
    "worker_prefetch_multiplier": Setting(1, _int(1), "Messages leased per free slot"),
    "worker_max_tasks_per_child": Setting(None, _int(1, optional=True), "Recycle child after N"),
    "worker_max_memory_per_child": Setting(None, _int(1, optional=True), "Recycle child over KiB"),
    "worker_shutdown_timeout": Setting(30.0, _positive_seconds, "Warm shutdown grace period"),
    "worker_log_tasks": Setting(True, _bool, "One log line per task outcome"),
    "worker_started_delay": Setting(
        0.1, _non_negative_seconds, "Record STARTED once a task ran this long (0: at once)"
    ),
    "task_track_started": Setting(
        False, _bool, "Celery compatibility: True records STARTED at once (started delay 0)"
    ),
    # beat
    "beat_schedule": Setting({}, _mapping, "Periodic tasks: {name: {'task', 'schedule', ...}}"),
}


def closest_setting(name: str) -> str:
    matches = difflib.get_close_matches(name, SETTINGS, n=1, cutoff=0.5)
    return f"; did you mean {matches[0]!r}?" if matches else ""


class Settings:
    """The app's configuration. Read and write settings as attributes or items."""

    __slots__ = ("_defaults", "_values")

    def __init__(self, **values: Any) -> None:
        object.__setattr__(self, "_values", {})
        object.__setattr__(self, "_defaults", {})
        self.update(values)

    def _validated(self, name: str, value: Any) -> Any:
        setting = SETTINGS.get(name)
        if setting is None:
            raise ConfigurationError(f"unknown setting {name!r}{closest_setting(name)}")
        return setting.check(name, value)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        env = ENV_OVERRIDES.get(name)
        if env and os.environ.get(env):
            return os.environ[env]
        values: dict[str, Any] = object.__getattribute__(self, "_values")
        if name in values:
            return values[name]
        setting = SETTINGS.get(name)
        if setting is None:
            raise AttributeError(f"unknown setting {name!r}{closest_setting(name)}")
        default = setting.default
        if isinstance(default, dict | list):
            # Each app gets its own copy of a mutable default, made once (reads are hot).
            defaults: dict[str, Any] = object.__getattribute__(self, "_defaults")
            if name not in defaults:
                defaults[name] = type(default)(default)
            return defaults[name]
        return default

    def __setattr__(self, name: str, value: Any) -> None:
        self._values[name] = self._validated(name, value)

    def __getitem__(self, name: str) -> Any:
        try:
            return getattr(self, name)
        except AttributeError as exc:
            raise KeyError(str(exc)) from None

    def __setitem__(self, name: str, value: Any) -> None:
        setattr(self, name, value)

    def __contains__(self, name: object) -> bool:
        return name in SETTINGS

    def __iter__(self) -> Iterator[str]:
        return iter(SETTINGS)

    def get(self, name: str, default: Any = None) -> Any:
        return getattr(self, name) if name in SETTINGS else default

    def update(self, values: Mapping[str, Any] | None = None, /, **more: Any) -> None:
        """Set several settings; all are validated before any is applied."""
        merged = {**(values or {}), **more}
        checked = {name: self._validated(name, value) for name, value in merged.items()}
        self._values.update(checked)

    def explicit(self) -> dict[str, Any]:
        """Settings that were set (not defaults)."""
        return dict(self._values)

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in SETTINGS}


def load_object(source: str) -> Any:
    """Import ``"pkg.module"`` or ``"pkg.module:attr"`` (Celery also accepts this)."""
    module_name, _, attr = source.partition(":")
    try:
        module: ModuleType = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"cannot import configuration {source!r}: {exc}") from exc
    if not attr:
        return module
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigurationError(f"{module_name!r} has no attribute {attr!r}") from None
    return obj


def settings_from(source: Any, namespace: str | None = None) -> dict[str, Any]:
    """Extract Conveyor settings from a module, object, mapping or dotted path.

    With ``namespace="CONVEYOR"``, ``CONVEYOR_BROKER_URL`` becomes ``broker_url``; keys without
    the prefix are ignored, and unknown prefixed keys are errors. Without a namespace,
    lowercase public names are settings and must be known; other names are ignored.
    """
    if isinstance(source, str):
        source = load_object(source)
    prefix = namespace.rstrip("_") + "_" if namespace else ""
    # Read only the names we may use: getattr on unrelated settings can have side effects
    # (Django warns when deprecated settings are read).
    if isinstance(source, Mapping):
        names = [str(key) for key in source]
        items = {name: source[name] for name in names if name.startswith(prefix)}
    else:
        names = [name for name in dir(source) if not name.startswith("_")]
        items = {
            name: getattr(source, name)
            for name in names
            if name.startswith(prefix) and (prefix or name == name.lower())
        }
    found: dict[str, Any] = {}
    if namespace:
        for key, value in items.items():
            if key.startswith(prefix):
                name = key[len(prefix) :].lower()
                if name not in SETTINGS:
                    raise ConfigurationError(
                        f"unknown setting {key!r}{_namespaced_hint(name, prefix)}"
                    )
                found[name] = value
        return found
    for key, value in items.items():
        if key != key.lower() or isinstance(value, ModuleType | type) or callable(value):
            continue
        if key not in SETTINGS:
            raise ConfigurationError(f"unknown setting {key!r}{closest_setting(key)}")
        found[key] = value
    return found


def _namespaced_hint(name: str, prefix: str) -> str:
    matches = difflib.get_close_matches(name, SETTINGS, n=1, cutoff=0.5)
    return f"; did you mean {prefix + matches[0].upper()!r}?" if matches else ""
