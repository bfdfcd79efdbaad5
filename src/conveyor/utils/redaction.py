"""Hiding secrets: URL passwords in any text, and task arguments whose names look secret."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][\w+.-]*://[^:/@\s]*):[^@\s]*@")
#: A password given as a query parameter (libpq's ``?password=``, ``sslpassword``, ...).
_QUERY_SECRET = re.compile(
    r"(?P<head>[?&](?:password|passwd|pass|sslpassword|secret|token)=)[^&\s#]*", re.IGNORECASE
)
#: A URL with a password percent-encoded inside a query value
#: (``amqp://host//?kv_url=redis%3A%2F%2F%3Apw%40host``).
_ENCODED_PASSWORD = re.compile(r"(?P<head>%3A%2F%2F[^\s&]*?)%3A[^\s&]*%40", re.IGNORECASE)

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
    """Replace the password of every URL in ``text`` with ``***``: in its user part, in a
    password query parameter, and in a percent-encoded URL inside a query value."""
    # Cheap tests first: most lines (one per task) hold no URL with credentials.
    if "@" in text:
        text = _URL_PASSWORD.sub(r"\g<head>:***@", text)
    if "%40" in text:
        text = _ENCODED_PASSWORD.sub(r"\g<head>%3A***%40", text)
    if "=" in text and ("?" in text or "&" in text):
        text = _QUERY_SECRET.sub(r"\g<head>***", text)
    return text


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


def secret_strings(
    args: Iterable[object],
    kwargs: Mapping[str, object],
    *,
    all_values: bool = False,
    names: Iterable[str] = SECRET_NAMES,
) -> set[str]:
    """The texts of the argument values :func:`redact_arguments` hides (strings and numbers
    of 4 characters or more), to find them again where they were copied (a traceback's
    local variables, the repr of a job)."""
    names = tuple(names)
    found: set[str] = set()

    def add(value: object, hidden: bool) -> None:
        if isinstance(value, Mapping):
            for k, v in value.items():
                add(v, hidden or _secret(str(k), names))
        elif isinstance(value, list | tuple):
            for item in value:
                add(item, hidden)
        elif hidden and isinstance(value, str | int | float) and not isinstance(value, bool):
            text = str(value)
            if len(text) >= 4:
                found.add(text)

    for arg in args:
        add(arg, all_values)
    for key, value in kwargs.items():
        add(value, all_values or _secret(key, names))
    return found


def scrub(value: object, secrets: set[str], names: Iterable[str] = SECRET_NAMES) -> object:
    """``value`` (JSON-like data, such as an error tracker's event) with every string that
    contains one of ``secrets`` and every entry under a secret-looking key replaced."""
    names = tuple(names)
    if isinstance(value, str):
        return REDACTED if any(s in value for s in secrets) else redact_text(value)
    if isinstance(value, dict):
        return {
            k: REDACTED if isinstance(k, str) and _secret(k, names) else scrub(v, secrets, names)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [scrub(item, secrets, names) for item in value]
    return value
