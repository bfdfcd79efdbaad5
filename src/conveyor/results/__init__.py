"""Result stores, chosen by URL scheme. Modules are imported on first use only.

Besides the built-in schemes, a package can provide a store for a scheme through the entry
point group ``conveyor.result_stores`` (name: the scheme, value: ``module:Class``); that is
how ``django://`` (``conveyor.contrib.django``) plugs in without the core naming it.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from typing import Any

from ..brokers.base import redact_url
from ..exceptions import ConfigurationError
from .base import ResultRecord, ResultStore

ENTRY_POINT_GROUP = "conveyor.result_stores"

_SCHEMES: dict[str, str] = {
    "memory": "conveyor.results.memory:MemoryResultStore",
    "sqlite": "conveyor.results.sqlite:SQLiteResultStore",
    "redis": "conveyor.results.redis:RedisResultStore",
    "rediss": "conveyor.results.redis:RedisResultStore",
    "unix": "conveyor.results.redis:RedisResultStore",
    "redis+sentinel": "conveyor.results.redis:RedisResultStore",
    "rediss+sentinel": "conveyor.results.redis:RedisResultStore",
    "sentinel": "conveyor.results.redis:RedisResultStore",
    "redis+cluster": "conveyor.results.redis:RedisResultStore",
    "rediss+cluster": "conveyor.results.redis:RedisResultStore",
    "postgresql": "conveyor.results.postgres:PostgresResultStore",
    "postgres": "conveyor.results.postgres:PostgresResultStore",
}


#: Celery result backends people port, and why Conveyor has none of that kind.
_CELERY_BACKENDS = {
    "rpc": "Celery's rpc:// sends results back as AMQP messages; Conveyor keeps results in a "
    "store, which on RabbitMQ is one of the URLs below (docs/rabbitmq.md)",
    "amqp": "Celery's old amqp:// result backend; Conveyor keeps results in a store",
    "db": "Celery's SQLAlchemy backend; for a database use postgresql:// or sqlite:// directly",
    "cache": "Celery's cache backend; results need a durable store",
    "mongodb": "Conveyor has no MongoDB store",
}


def result_store_schemes() -> dict[str, str]:
    """Scheme -> ``module:Class`` of every result store: built-in, then registered."""
    schemes = dict(_SCHEMES)
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        schemes.setdefault(entry.name, entry.value)
    return schemes


def create_result_store(
    url: str,
    *,
    expires: float | None,
    key_prefix: str,
    transport_options: Mapping[str, Any] | None = None,
) -> ResultStore:
    """Build the result store for ``url``. ``transport_options`` reach stores that take them
    (Redis: connection settings, Sentinel's ``master_name``); others ignore them."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    target = _SCHEMES.get(scheme)
    if target is None:
        schemes = result_store_schemes()
        target = schemes.get(scheme)
        if target is None:
            known = ", ".join(f"{s}://" for s in sorted(schemes))
            why = _CELERY_BACKENDS.get(scheme.split("+", 1)[0])
            raise ConfigurationError(
                f"unsupported result backend URL {redact_url(url)!r}"
                + (f" ({why})" if why else "")
                + f"; use one of {known}"
            )
    module_name, class_name = target.split(":")
    cls: type[ResultStore] = getattr(importlib.import_module(module_name), class_name)
    if transport_options and "transport_options" in inspect.signature(cls).parameters:
        build: Callable[..., ResultStore] = cls  # a store that takes them (Redis)
        return build(
            url, expires=expires, key_prefix=key_prefix, transport_options=transport_options
        )
    return cls(url, expires=expires, key_prefix=key_prefix)


__all__ = ["ResultRecord", "ResultStore", "create_result_store", "result_store_schemes"]
