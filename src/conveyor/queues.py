"""Queue declarations (``task_queues``) without kombu: :class:`Queue` and :class:`Exchange`.

Conveyor's queues are names: a message goes straight to the queue it is sent to. A
declaration adds what Celery users declare queues for:

* the queues a worker consumes when ``-Q`` is not given (all declared queues, as in Celery);
* routing by routing key: a call with ``routing_key="feed.import"`` goes to the first declared
  queue bound to that key (``routing_key="feed.#"`` on a topic exchange matches it);
* ``max_priority``: higher priorities sent to that queue are lowered to it (RabbitMQ's rule).

What AMQP does and Conveyor cannot (fanout and headers exchanges, transient or auto-deleted
queues, queue arguments other than ``x-max-priority``) is refused with an error saying so.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache

from .exceptions import ConfigurationError
from .limits.rates import parse_rate

__all__ = ["Exchange", "Queue", "declared_queues", "queue_for_routing_key"]

_EXCHANGE_TYPES = ("direct", "topic")


@dataclass(frozen=True, slots=True)
class Exchange:
    """Celery's (kombu's) exchange, as far as Conveyor can honour it: a name that calls may
    give as ``exchange=`` and a type, ``direct`` (routing key equals the queue's) or
    ``topic`` (the queue's routing key is a pattern: ``*`` one word, ``#`` any words).

    ``fanout`` and ``headers`` exchanges copy a message to several queues or route on
    headers; a Conveyor message goes to exactly one queue, so they are refused."""

    name: str = ""
    type: str = "direct"
    durable: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise ConfigurationError(f"Exchange name must be a string, got {self.name!r}")
        if self.type not in _EXCHANGE_TYPES:
            raise ConfigurationError(
                f"Exchange({self.name!r}, type={self.type!r}): Conveyor sends each message to "
                "one queue, so only 'direct' and 'topic' exchanges can be honoured (a fanout "
                "copies a message to every bound queue: send one task per queue instead, e.g. "
                "with group())"
            )
        if self.durable is not True:
            raise ConfigurationError(
                f"Exchange({self.name!r}, durable={self.durable!r}): Conveyor's queues and "
                "messages are always durable"
            )


@dataclass(frozen=True, slots=True)
class Queue:
    """A declared queue: ``Queue("feeds", routing_key="feed.#", max_priority=5)``.

    ``exchange`` may be an :class:`Exchange` or its name (a plain name is a direct exchange).
    ``routing_key`` defaults to the queue's name. ``queue_arguments`` accepts only
    ``{"x-max-priority": n}`` (Celery's spelling of ``max_priority``). ``rate_limit``
    limits the starts of all tasks from the queue across the cluster (docs/flow-control.md)."""

    name: str
    exchange: Exchange | str | None = None
    routing_key: str | None = None
    max_priority: int | None = None
    queue_arguments: Mapping[str, object] | None = field(default=None, compare=False)
    durable: bool = True
    auto_delete: bool = False
    exclusive: bool = False
    #: A rate limit over every task taken from this queue, across the cluster (``"10/s"``).
    rate_limit: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigurationError(f"Queue name must be a non-empty string, got {self.name!r}")
        where = f"Queue({self.name!r})"
        if isinstance(self.exchange, str):
            object.__setattr__(self, "exchange", Exchange(self.exchange))
        elif self.exchange is not None and not isinstance(self.exchange, Exchange):
            raise ConfigurationError(
                f"{where}: exchange must be a conveyor.Exchange or a name, got "
                f"{type(self.exchange).__name__} (kombu objects are not read: "
                "use conveyor.Queue and conveyor.Exchange)"
            )
        if self.routing_key is not None and not isinstance(self.routing_key, str):
            raise ConfigurationError(f"{where}: routing_key must be a string")
        priority = self.max_priority
        for key, value in (self.queue_arguments or {}).items():
            if key != "x-max-priority":
                raise ConfigurationError(
                    f"{where}: queue argument {key!r} is AMQP's; Conveyor accepts only "
                    "'x-max-priority' (message TTLs: use expires= on the task or call; "
                    "length limits: none)"
                )
            if priority is not None and priority != value:
                raise ConfigurationError(f"{where}: max_priority and x-max-priority differ")
            # RabbitMQ reads x-max-priority as a number; configurations often give "10".
            priority = int(value) if isinstance(value, str) and value.isdigit() else value  # type: ignore[assignment]  # Celery's "10" spelling of x-max-priority
        if priority is not None and (
            not isinstance(priority, int) or isinstance(priority, bool) or not 1 <= priority <= 255
        ):
            raise ConfigurationError(f"{where}: max_priority must be an integer 1-255")
        object.__setattr__(self, "max_priority", priority)
        if self.rate_limit is not None:
            parse_rate(self.rate_limit, f"{where}: rate_limit")
        if self.durable is not True or self.auto_delete or self.exclusive:
            raise ConfigurationError(
                f"{where}: Conveyor queues are always durable, shared and kept "
                "(durable=False, auto_delete and exclusive are AMQP's)"
            )

    @property
    def key(self) -> str:
        """The routing key the queue is bound with (its name unless given)."""
        return self.routing_key or self.name

    def binds(self, routing_key: str, exchange: str | None) -> bool:
        """Whether a message sent with ``routing_key`` (to ``exchange``) reaches this queue."""
        own = self.exchange if isinstance(self.exchange, Exchange) else None
        if exchange is not None and exchange != (own.name if own else ""):
            return False
        if own is not None and own.type == "topic":
            return topic_matches(self.key, routing_key)
        return routing_key == self.key


def topic_matches(pattern: str, routing_key: str) -> bool:
    """AMQP topic matching: words split by dots, ``*`` is one word, ``#`` zero or more."""
    return _match(tuple(pattern.split(".")), tuple(routing_key.split(".")))


@lru_cache(maxsize=1024)
def _match(pattern: tuple[str, ...], words: tuple[str, ...]) -> bool:
    if not pattern:
        return not words
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(_match(rest, words[i:]) for i in range(len(words) + 1))
    if not words:
        return False
    return (head == "*" or head == words[0]) and _match(rest, words[1:])


def declared_queues(name: str, value: object) -> tuple[Queue, ...]:
    """Check ``task_queues``: a list of :class:`Queue` (or names), or Celery's older mapping
    ``{name: {"routing_key": ..., "exchange": ...}}``."""
    if value is None:
        return ()
    items: Iterable[object]
    if isinstance(value, Mapping):
        items = [_from_mapping(name, str(key), options) for key, options in value.items()]
    elif isinstance(value, list | tuple | set | frozenset):
        items = value
    else:
        raise ConfigurationError(f"{name} must be a list of conveyor.Queue, got {value!r}")
    queues: list[Queue] = []
    for item in items:
        if isinstance(item, str):
            item = Queue(item)
        if not isinstance(item, Queue):
            kind = f"{type(item).__module__}.{type(item).__qualname__}"
            raise ConfigurationError(
                f"{name}: {kind} is not a conveyor.Queue (Conveyor does not use kombu: "
                "`from conveyor import Queue, Exchange`)"
            )
        queues.append(item)
    names = [q.name for q in queues]
    if len(set(names)) != len(names):
        raise ConfigurationError(f"{name} declares a queue twice: {sorted(names)}")
    return tuple(queues)


def _from_mapping(setting: str, queue: str, options: object) -> Queue:
    if not isinstance(options, Mapping):
        raise ConfigurationError(f"{setting}[{queue!r}] must be a mapping of queue options")
    known = {"exchange", "exchange_type", "routing_key", "max_priority", "queue_arguments"}
    unknown = set(options) - known
    if unknown:
        raise ConfigurationError(
            f"{setting}[{queue!r}]: unknown queue option(s) {', '.join(sorted(map(str, unknown)))}"
        )
    exchange = options.get("exchange")
    if isinstance(exchange, str):
        exchange = Exchange(exchange, str(options.get("exchange_type") or "direct"))
    return Queue(
        queue,
        exchange=exchange,
        routing_key=options.get("routing_key"),
        max_priority=options.get("max_priority"),
        queue_arguments=options.get("queue_arguments"),
    )


def queue_for_routing_key(
    queues: Iterable[Queue], routing_key: str, exchange: str | None = None
) -> str:
    """The first declared queue a message with ``routing_key`` reaches; an error if none
    does (AMQP would drop it silently)."""
    for queue in queues:
        if queue.binds(routing_key, exchange):
            return queue.name
    on = f" on exchange {exchange!r}" if exchange is not None else ""
    raise ConfigurationError(
        f"routing_key {routing_key!r}{on} reaches no queue declared in task_queues "
        "(AMQP would drop the message; Conveyor refuses to send it): declare a Queue bound to "
        "it, or send with queue="
    )


def cap_priority(queues: Iterable[Queue], queue: str, priority: int) -> int:
    """``priority`` lowered to the ``max_priority`` of ``queue``, if it declares one."""
    for declared in queues:
        if declared.name == queue and declared.max_priority is not None:
            return min(priority, declared.max_priority)
    return priority
