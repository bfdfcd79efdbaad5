"""Brokers, chosen by URL scheme. Modules are imported on first use only."""

from __future__ import annotations

import importlib

from ..exceptions import ConfigurationError
from .base import Broker, BrokerOptions, redact_url

_SCHEMES: dict[str, str] = {
    "memory": "conveyor.brokers.memory:MemoryBroker",
    "sqlite": "conveyor.brokers.sqlite:SQLiteBroker",
    "redis": "conveyor.brokers.redis:RedisBroker",
    "rediss": "conveyor.brokers.redis:RedisBroker",
    "unix": "conveyor.brokers.redis:RedisBroker",
    "redis+sentinel": "conveyor.brokers.redis:RedisBroker",
    "rediss+sentinel": "conveyor.brokers.redis:RedisBroker",
    "sentinel": "conveyor.brokers.redis:RedisBroker",
    "redis+cluster": "conveyor.brokers.redis:RedisBroker",
    "rediss+cluster": "conveyor.brokers.redis:RedisBroker",
    "postgresql": "conveyor.brokers.postgres:PostgresBroker",
    "postgres": "conveyor.brokers.postgres:PostgresBroker",
    "amqp": "conveyor.brokers.amqp:AMQPBroker",
    "amqps": "conveyor.brokers.amqp:AMQPBroker",
    "pyamqp": "conveyor.brokers.amqp:AMQPBroker",
}


#: URL schemes of RabbitMQ, which holds messages only (results and key/value data live in
#: the result store).
AMQP_SCHEMES = frozenset({"amqp", "amqps", "pyamqp"})


def scheme_of(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else ""


def create_broker(url: str, options: BrokerOptions) -> Broker:
    """Build the broker for ``url``."""
    target = _SCHEMES.get(scheme_of(url))
    if target is None:
        known = ", ".join(f"{s}://" for s in sorted(_SCHEMES))
        raise ConfigurationError(f"unsupported broker URL {redact_url(url)!r}; use one of {known}")
    module_name, class_name = target.split(":")
    cls: type[Broker] = getattr(importlib.import_module(module_name), class_name)
    return cls(url, options)


__all__ = ["AMQP_SCHEMES", "Broker", "BrokerOptions", "create_broker", "redact_url", "scheme_of"]
