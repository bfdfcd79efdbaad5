"""Turning exceptions into stored data and back, without importing names found in data."""

from __future__ import annotations

import builtins
import contextlib
import traceback as tb
from collections.abc import Iterable

from . import exceptions as cx
from .exceptions import SerializationError
from .message import JSONValue, from_json_value, to_json_value

#: Conveyor's own exception types that may be rebuilt from stored data.
_CONVEYOR_TYPES: dict[str, type[BaseException]] = {
    f"conveyor.exceptions.{cls.__name__}": cls
    for cls in vars(cx).values()
    if isinstance(cls, type) and issubclass(cls, Exception) and cls.__module__ == cx.__name__
}


def qualified_name(exc_type: type[BaseException]) -> str:
    module = exc_type.__module__
    return exc_type.__qualname__ if module == "builtins" else f"{module}.{exc_type.__qualname__}"


def exception_info(exc: BaseException) -> dict[str, JSONValue]:
    """The JSON form of an exception: type name, message and (when JSON-able) args."""
    info: dict[str, JSONValue] = {"type": qualified_name(type(exc)), "message": str(exc)}
    with contextlib.suppress(SerializationError):
        info["args"] = to_json_value(list(exc.args), "exception args")
    return info


def format_traceback(exc: BaseException) -> str:
    return "".join(tb.format_exception(type(exc), exc, exc.__traceback__))


def rebuild_exception(
    info: object, traceback: str | None, declared: Iterable[type[BaseException]] = ()
) -> BaseException:
    """Rebuild a stored exception if its type is built in, Conveyor's, or declared (``throws``);
    otherwise return :class:`~conveyor.exceptions.TaskFailed` carrying what was stored."""
    if not isinstance(info, dict):
        return cx.TaskFailed("UnknownError", str(info), traceback)
    type_name = str(info.get("type", "Exception"))
    message = str(info.get("message", ""))
    cls = _known_type(type_name, declared)
    if cls is None:
        return cx.TaskFailed(type_name, message, traceback)
    args = from_json_value(info.get("args", [message]))
    try:
        exc = cls(*args) if isinstance(args, list) else cls(message)
    except Exception:
        try:
            exc = cls(message)
        except Exception:
            return cx.TaskFailed(type_name, message, traceback)
    exc.remote_traceback = traceback  # type: ignore[attr-defined]  # an attribute Conveyor adds to rebuilt exceptions
    return exc


def _known_type(
    type_name: str, declared: Iterable[type[BaseException]]
) -> type[BaseException] | None:
    for cls in declared:
        if qualified_name(cls) == type_name:
            return cls
    if "." not in type_name:
        candidate = getattr(builtins, type_name, None)
        if isinstance(candidate, type) and issubclass(candidate, Exception):
            return candidate
        return None
    return _CONVEYOR_TYPES.get(type_name)
