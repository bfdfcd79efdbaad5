"""Result stores, chosen by URL scheme. Modules are imported on first use only."""

from __future__ import annotations

import importlib

from ..brokers.base import redact_url
from ..exceptions import ConfigurationError
from .base import ResultRecord, ResultStore

_SCHEMES: dict[str, str] = {
    "memory": "conveyor.results.memory:MemoryResultStore",
    "sqlite": "conveyor.results.sqlite:SQLiteResultStore",
    "redis": "conveyor.results.redis:RedisResultStore",
    "rediss": "conveyor.results.redis:RedisResultStore",
    "unix": "conveyor.results.redis:RedisResultStore",
    "django": "conveyor.contrib.django.results:DjangoResultStore",
}


def create_result_store(url: str, *, expires: float | None, key_prefix: str) -> ResultStore:
    """Build the result store for ``url``."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    target = _SCHEMES.get(scheme)
    if target is None:
        known = ", ".join(f"{s}://" for s in sorted(_SCHEMES))
        raise ConfigurationError(
            f"unsupported result backend URL {redact_url(url)!r}; use one of {known}"
        )
    module_name, class_name = target.split(":")
    cls: type[ResultStore] = getattr(importlib.import_module(module_name), class_name)
    return cls(url, expires=expires, key_prefix=key_prefix)


__all__ = ["ResultRecord", "ResultStore", "create_result_store"]
