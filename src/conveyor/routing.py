"""Which queue a call goes to: ``task_routes`` (exact names, globs, router functions), a
``routing_key`` (and ``exchange``) over the declared queues, the task's ``queue`` option,
then ``task_default_queue``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from .brokers.base import queue_matches
from .canvas.signature import str_option
from .exceptions import ConfigurationError
from .queues import Exchange, queue_for_routing_key

if TYPE_CHECKING:
    from .config import Settings
    from .setting_checks import RouteTarget
    from .task import Task


def route(conf: Settings, name: str, task: Task[..., object] | None = None) -> str:
    """The queue for task ``name``: ``task_routes`` (exact name, then globs), the task's
    ``queue`` option, then ``task_default_queue``."""
    routes = conf.task_routes
    tables = routes if isinstance(routes, list) else [routes]
    for table in tables:
        if not isinstance(table, Mapping):
            found = table(name)
            if found:
                return _queue_of(found, conf)
            continue
        if name in table:
            return _queue_of(table[name], conf)
        for pattern, target in table.items():
            if queue_matches(pattern, name):
                return _queue_of(target, conf)
    if task is not None and task.queue:
        return task.queue
    return conf.task_default_queue


def by_routing_key(conf: Settings, options: Mapping[str, object]) -> str | None:
    """The queue a call's ``routing_key`` (and ``exchange``) reaches: the declared queue it
    binds to, or without declarations the queue of that name (Celery's default direct
    exchange routes a key to the queue of that name)."""
    key = str_option(options, "routing_key")
    if key is None:
        return None
    if not conf.task_queues:
        return key
    exchange = options.get("exchange")
    exchange_name = exchange.name if isinstance(exchange, Exchange) else exchange
    if exchange_name is not None and not isinstance(exchange_name, str):
        raise ConfigurationError(f"exchange must be a name or conveyor.Exchange, got {exchange!r}")
    return queue_for_routing_key(conf.task_queues, key, exchange_name)


def _queue_of(target: RouteTarget, conf: Settings) -> str:
    if isinstance(target, str):
        return target
    if isinstance(target, Mapping) and isinstance(queue := target.get("queue"), str):
        return queue
    if isinstance(target, Mapping) and conf.task_queues and "routing_key" in target:
        found = by_routing_key(conf, target)
        if found is not None:
            return found
    raise ConfigurationError(f"a route must name a queue or be {{'queue': name}}, got {target!r}")
