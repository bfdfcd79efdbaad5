"""Applying :mod:`conveyor.celery_settings`: the Conveyor setting a Celery name is read as
(or the error refusing it), hints for unknown names, and Celery's constructor keywords."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from datetime import timedelta

from .celery_settings import (
    CELERY_SETTINGS,
    CONSTRUCTOR_KEYWORDS,
    OLD_NAMES,
    TRANSPORT_OPTIONS,
    Honoured,
    Refused,
)
from .exceptions import ConfigurationError


class CeleryNameWarning(FutureWarning):
    """An old Celery setting name was mapped to its Conveyor (Celery 4+) name: rename it.

    A FutureWarning, not a DeprecationWarning: Python shows it by default, and the person who
    must act on it is the application's developer, not a library author."""


_warned: set[str] = set()


def lowercase_name(name: str) -> str | None:
    """The Celery 4+ name of a Celery setting given by either name, or None."""
    if name in CELERY_SETTINGS:
        return name
    return OLD_NAMES.get(name)


def resolve(name: str, value: object, known: Iterable[str] = ()) -> str | None:
    """The Conveyor setting a Celery setting ``name`` (old or new) is read as, or None when it
    is ignored. Warns once for an old name; raises for a refused name or value, and for a name
    Celery does not have (:func:`describe` gives the hint)."""
    new = lowercase_name(name)
    if new is None:
        raise ConfigurationError(f"unknown setting {name!r}{describe(name, known)}")
    fate = CELERY_SETTINGS[new]
    if isinstance(fate, Refused) and not accepts(value, fate.allowed):
        shown = name if name == new else f"{name} ({new})"
        raise ConfigurationError(f"{shown}={value!r}: {fate.reason}")
    if not isinstance(fate, Honoured):
        return None
    _warn_old(name, new, fate.setting, stacklevel=4)
    return fate.setting


def reads_as(name: str) -> str | None:
    """The Conveyor setting that reading a Celery setting ``name`` (old or new) gives, or None
    when it is not honoured. Warns once for an old name."""
    new = lowercase_name(name)
    fate = CELERY_SETTINGS[new] if new is not None else None
    if new is None or not isinstance(fate, Honoured):
        return None
    _warn_old(name, new, fate.setting, stacklevel=4)
    return fate.setting


def _warn_old(name: str, new: str, setting: str, *, stacklevel: int) -> None:
    if name != new and name not in _warned:
        _warned.add(name)
        warnings.warn(
            f"{name} is Celery's old name for {new}, read as Conveyor's {setting}: "
            f"rename it to {new}",
            CeleryNameWarning,
            stacklevel=stacklevel + 1,
        )


def describe(name: str, known: Iterable[str]) -> str:
    """A hint for an unknown setting ``name``: what Conveyor does with it if it is a Celery
    name, else the closest name among ``known`` and Celery's (with that one's fate)."""
    new = lowercase_name(name)
    if new is not None:
        fate = CELERY_SETTINGS[new]
        if isinstance(fate, Honoured):
            return f"; Celery's {new} is Conveyor's {fate.setting!r}"
        return f"; Celery's {new}: {fate.reason}"
    upper = name.isupper()
    pool = [*OLD_NAMES] if upper else [*known, *CELERY_SETTINGS]
    import difflib  # only for a suggestion: not loaded at start-up

    matches = difflib.get_close_matches(name, pool, n=1, cutoff=0.6 if upper else 0.5)
    if not matches:
        return ""
    match = matches[0]
    if match in known:
        return f"; did you mean {match!r}?"
    fate = CELERY_SETTINGS[lowercase_name(match) or match]
    if isinstance(fate, Honoured):
        return f"; did you mean {match!r} (Conveyor's {fate.setting!r})?"
    return f"; did you mean {match!r}? (Conveyor: {fate.reason})"


def accepts(value: object, allowed: tuple[object, ...]) -> bool:
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, tuple):
        value = list(value)
    return any(type(value) is type(ok) and value == ok for ok in allowed if ok is not None) or (
        value is None and None in allowed
    )


def forget_warnings() -> None:
    """Warn again for old names already seen (for tests)."""
    _warned.clear()


def constructor_keywords(keywords: dict[str, object]) -> dict[str, object]:
    """Settings passed to ``Conveyor(...)``, without Celery's constructor keywords: those are
    refused or dropped (:data:`CONSTRUCTOR_KEYWORDS`), and ``changes=`` (a mapping of
    settings) is merged in."""
    settings = dict(keywords)
    changes = settings.pop("changes", None)
    for name in CONSTRUCTOR_KEYWORDS.keys() & settings.keys():
        value = settings.pop(name)
        fate = CONSTRUCTOR_KEYWORDS[name]
        if not accepts(value, (None, *fate.allowed)):
            raise ConfigurationError(f"Conveyor({name}={value!r}): {fate.reason}")
    if changes is not None:
        if not isinstance(changes, Mapping):
            raise ConfigurationError(f"changes= must be a mapping of settings, got {changes!r}")
        settings = {**{str(k): v for k, v in changes.items()}, **settings}
    return settings


def check_transport_options[T: Mapping[str, object]](name: str, options: T) -> T:
    """``options`` unchanged, unless a key is one of Celery's that Conveyor refuses
    (:data:`~conveyor.celery_settings.TRANSPORT_OPTIONS`)."""
    for key, value in options.items():
        fate = TRANSPORT_OPTIONS.get(key)
        if isinstance(fate, Refused) and not accepts(value, (None, *fate.allowed)):
            raise ConfigurationError(f"{name}[{key!r}]={value!r}: {fate.reason}")
    return options
