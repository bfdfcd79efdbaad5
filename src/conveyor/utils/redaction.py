"""Hiding secrets: URL passwords in any text, and task arguments whose names look secret."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][\w+.-]*://[^:/@\s]*):[^@\s]*@")

#: What a redacted value is replaced with.
REDACTED = "[redacted]"
#: Keyword names (or parts of them) whose values are hidden by :func:`redact_arguments`.
SECRET_NAMES: tuple[str, ...] = (
    "password",
    "passwd",
    "secret",
    "token",
    "api_key",
    "apikey",
    "authorization",
    "credential",
    "private_key",
    "session",
    "cookie",
)


def redact_text(text: str) -> str:
    """Replace the password of every URL in ``text`` with ``***``."""
    if "@" not in text:  # no URL with credentials: skip the regex (one line per task)
        return text
    return _URL_PASSWORD.sub(r"\g<head>:***@", text)


def _secret(name: str, names: Iterable[str]) -> bool:
    lowered = name.lower()
    return any(part in lowered for part in names)


def redact_value(value: object, names: Iterable[str] = SECRET_NAMES) -> object:
    """``value`` with dict entries under secret-looking keys hidden (recursively) and URL
    passwords in strings replaced."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {
            str(k): REDACTED if _secret(str(k), names) else redact_value(v, names)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact_value(item, names) for item in value]
    return value


def redact_arguments(
    args: Iterable[object],
    kwargs: Mapping[str, object],
    *,
    all_values: bool = False,
    names: Iterable[str] = SECRET_NAMES,
) -> tuple[list[object], dict[str, object]]:
    """Task arguments safe to log or report: every value replaced when ``all_values``,
    otherwise the values of secret-looking keyword names (``password``, ``token``, ...;
    also inside dicts) hidden and URL passwords removed."""
    names = tuple(names)
    if all_values:
        return [REDACTED for _ in args], dict.fromkeys(kwargs, REDACTED)
    redacted_kwargs = {
        k: REDACTED if _secret(k, names) else redact_value(v, names) for k, v in kwargs.items()
    }
    return [redact_value(a, names) for a in args], redacted_kwargs
