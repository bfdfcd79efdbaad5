"""What each setting accepts: checks that turn a configured value into the setting's type or
raise :class:`~conveyor.exceptions.ConfigurationError` naming the setting (used by
:class:`conveyor.config.Settings`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .celery_names import check_transport_options
from .exceptions import ConfigurationError

type Check[T] = Callable[[str, object], T]
#: Where a task goes: a queue name or ``{"queue": name}``.
type RouteTarget = str | Mapping[str, object]
#: A routing table: names/globs to targets, or a function of the task name.
type RouteTable = Mapping[str, RouteTarget] | Callable[[str], RouteTarget | None]
#: ``task_routes``: one table (a mapping) or a list of tables tried in order.
type Routes = dict[str, RouteTarget] | list[RouteTable]


def seconds(name: str, value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ConfigurationError(
            f"{name} must be a number of seconds or a timedelta, got {value!r}"
        )
    try:
        number = float(value)
    except ValueError:
        raise ConfigurationError(f"{name} must be a number of seconds, got {value!r}") from None
    if number < 0:
        raise ConfigurationError(f"{name} must not be negative, got {value!r}")
    return number


def positive_seconds(name: str, value: object) -> float:
    number = seconds(name, value)
    if number is None or number <= 0:
        raise ConfigurationError(f"{name} must be a positive number of seconds, got {value!r}")
    return number


def non_negative_seconds(name: str, value: object) -> float:
    number = seconds(name, value)
    if number is None:
        raise ConfigurationError(f"{name} must be a number of seconds, got None")
    return number


def integer(minimum: int | None = None, maximum: int | None = None) -> Check[int]:
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


def optional_integer(minimum: int | None = None) -> Check[int | None]:
    required = integer(minimum)

    def check(name: str, value: object) -> int | None:
        return None if value is None else required(name, value)

    return check


def optional_port(name: str, value: object) -> int | None:
    return None if value is None else integer(0, 65535)(name, value)


def boolean(name: str, value: object) -> bool:
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in {"1", "true", "yes", "on"}:
            return True
        if lowered in {"0", "false", "no", "off", ""}:
            return False
    if isinstance(value, bool):
        return value
    raise ConfigurationError(f"{name} must be true or false, got {value!r}")


def optional_boolean(name: str, value: object) -> bool | None:
    return None if value is None else boolean(name, value)


def string(name: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"{name} must be a non-empty string, got {value!r}")
    return value


def optional_string(name: str, value: object) -> str | None:
    return None if value is None else string(name, value)


def mapping(name: str, value: object) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"{name} must be a mapping, got {type(value).__name__}")
    return {str(key): item for key, item in value.items()}


def transport_options(name: str, value: object) -> dict[str, Any]:
    return check_transport_options(name, mapping(name, value))


def routes(name: str, value: object) -> Routes:
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


def json_only[T: str | list[str]](name: str, value: T) -> T:
    values = [value] if isinstance(value, str) else list(value or [])
    bad = [v for v in values if str(v).lower() not in {"json", "application/json"}]
    if bad:
        raise ConfigurationError(
            f"{name}={value!r}: Conveyor only speaks JSON (pickle and other formats can run "
            "arbitrary code on workers). Remove this setting or set it to 'json'."
        )
    return value


def serializer(name: str, value: object) -> str:
    return json_only(name, string(name, value))


def content_types(name: str, value: object) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ConfigurationError(f"{name} must be a list of content types, got {value!r}")
    return json_only(name, [str(v) for v in value])


def strings(name: str, value: object) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return [str(v) for v in value]
    raise ConfigurationError(f"{name} must be a list of module names, got {value!r}")


def time_zone(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise ConfigurationError(f"{name} must be an IANA time zone name, got {value!r}")
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigurationError(f"{name}: unknown time zone {value!r}") from None
    return value
