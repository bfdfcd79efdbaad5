"""The Broker contract: what a broker (memory, SQLite, Redis; PostgreSQL, RabbitMQ next) provides.

A broker holds messages (opaque bodies with an id, a queue and a priority) for workers to lease;
it knows nothing of tasks, result stores or the worker. To add one: subclass :class:`Broker`,
implement its abstract methods with the guarantees below, set ``schemes``,
``lease_checks_revoked`` and ``kv`` (a :class:`~conveyor.kv.KeyValue` on the same server or
file), map its URL schemes in ``conveyor/brokers/__init__.py``, and add it to ``BACKENDS`` in
``tests/conformance/conftest.py``: the conformance suite (``test_broker.py``, ``test_kv.py``,
``test_settlement.py``) then checks every promise. The worker needs no change. Operations that
combine a broker with a result store (records and acks in one round trip) are not part of a
broker: they live in ``conveyor.settlement``, where a broker may add a faster settlement of its
own built from small broker methods.

**Receipts.** ``lease()`` hands out each message with a receipt that is *held* until it is
acked, released, dead-lettered or retried, or until ``sweep()`` reclaims its expired lease.
``ack``, ``extend``, ``release``, ``retry_later`` and ``dead_letter`` with a receipt that is no
longer held do nothing at all, so a late worker never removes, duplicates or buries a message
that another worker holds.

**Operations.** All are safe to call from several threads and processes at once.

* ``publish(messages)``: add a batch; each is ready now or, with ``countdown``/``eta``, delayed
  until ``max(now + countdown, eta)`` on the broker's clock (``time()``). A ready message wakes
  a waiting ``lease()`` promptly.
  Idempotent by message id: a message whose id was published in the last
  :data:`PUBLISH_DEDUPE_WINDOW` seconds adds nothing, so a producer may publish again after a
  lost reply (``conveyor.publishing``) without a duplicate. ``retry_later`` and
  ``replay_dead`` put an id back on purpose and are not affected.
* ``lease(queues, limit, wait)``: take up to ``limit`` ready messages, priority 9 first across
  all ``queues``, FIFO within a priority; make due delayed messages ready first. Each lease
  adds one to the message's delivery count (1 on the first delivery). Wait up to ``wait`` s
  for the first message, waking promptly on a publish, release or due time; return ``[]`` on
  timeout. A message is never held by two receipts at once.
* ``ack(deliveries)``: remove finished messages; idempotent.
* ``extend(deliveries)``: renew leases to ``now + lease_timeout`` (the worker's heartbeat).
* ``release(deliveries)``: return messages to their queue now without charging the delivery
  (cold shutdown).
* ``retry_later(delivery, message)``: atomically ack and publish the retry (fresh count).
  ``retry_later_many(retries)`` does the same for many (delivery, message) pairs, each pair
  atomic on its own; a broker may do them in one round trip (SQLite, PostgreSQL: one
  transaction), the default calls ``retry_later`` for each.
* ``dead_letter(delivery, reason, detail)``: atomically ack and keep the raw body in the
  dead-letter queue with the reason, detail, time and delivery count.
* ``sweep()``: return expired leases to their queues, or dead-letter them with reason
  ``worker_lost`` once delivered ``max_deliveries`` times; make due delayed messages ready;
  return how many moved. Concurrent sweeps move each message once.
* ``revoke(ids, ttl)`` / ``revoked(ids)``: durable revocation flags with a TTL. With
  ``lease_checks_revoked``, each delivery also says whether its id was revoked when leased
  (looked up in the same atomic step), so the worker makes no extra call.
* ``stats(queues)``: ready, delayed, leased and dead counts per queue.
* ``dead_letters(limit, queue)`` (oldest first), ``replay_dead(ids)`` (back to the queue with
  a fresh count), ``purge_dead(ids)``; ``purge(queues)`` deletes ready and delayed messages
  (leased ones stay).
* ``take_departures(limit)`` / ``forget_departures(departures)``: the record of messages that
  left without a worker settling them - dead-lettered by ``sweep()`` (``worker_lost``) or
  deleted by ``purge()`` - written in the same atomic step that moved them, so a worker can
  do their bookkeeping (free unique keys, count batch members: ``conveyor.worker.
  departures``). ``take`` claims up to ``limit`` for :data:`DEPARTURE_CLAIM` seconds (a
  concurrent ``take`` skips them; an unforgotten one comes back after the claim);
  ``forget`` deletes them.
* ``scheduled(limit, queue)`` (soonest due first), ``run_scheduled(ids)`` (ready now, behind
  what is queued) and ``cancel_scheduled(ids)`` (deleted): delayed messages (countdown, ETA,
  retries) for the dashboard. Optional: what a broker cannot do raises NotImplementedError
  saying why (RabbitMQ lists without bodies, cancels by revocation and cannot run one early:
  :mod:`conveyor.brokers.amqp.scheduled`).
* ``priority_counts(queues)``: the counts of ``stats()`` split by priority, per state (of
  every known queue when ``queues`` is None, as ``stats()``); a state the broker cannot split
  (RabbitMQ's ready messages, large delayed/leased/dead sets on Redis) is ``None``, never a
  guess.
* ``time()``: the broker's clock, which judges due times and lease deadlines.
* ``close()`` (optional): release connections; a later call may reconnect.
* ``streams`` (optional): bounded append-only logs on the same server or file
  (:mod:`conveyor.streams`), which events and remote control use. The default raises
  :class:`NotImplementedError`; a broker without them still runs tasks.

Where a backend cannot give an item, the suite asserts the documented weaker one.
"""

from __future__ import annotations

import abc
import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar

import msgspec

from ..utils.redaction import redact_text

if TYPE_CHECKING:
    from ..kv import KeyValue
    from ..limits.store import LimitStore
    from ..streams import Streams

MIN_PRIORITY = 0
MAX_PRIORITY = 9
#: Seconds a broker remembers a published message id (``publish()`` of the same id adds
#: nothing meanwhile): 4x the waiting of the default publish retry policy (15 s), short enough
#: that the remembered ids of a busy Redis take little memory (about 100 bytes each).
PUBLISH_DEDUPE_WINDOW = 60.0
#: Seconds ``take_departures()`` claims a departure for (taken again after that unless
#: forgotten: the bookkeeping is done at least once even if its worker dies meanwhile).
DEPARTURE_CLAIM = 60.0
#: The reason of a departure removed by ``purge()`` (the sweep's is ``worker_lost``).
PURGED = "purged"


class DeadLetterReason(StrEnum):
    """Why a message was dead-lettered."""

    UNKNOWN_TASK = "unknown_task"
    UNDECODABLE = "undecodable"
    MALFORMED = "malformed"
    EXPIRED = "expired"
    WORKER_LOST = "worker_lost"
    REJECTED = "rejected"
    TIME_LIMIT = "time_limit"
    BAD_SIGNATURE = "bad_signature"


# Message and Delivery are made for every message sent and leased: frozen msgspec structs,
# whose constructor costs a tenth of a frozen dataclass's (~0.08 against ~0.85 µs).
class Message(msgspec.Struct, frozen=True):
    """A message to publish. ``countdown`` is seconds from now on the broker's clock; ``eta``
    an absolute POSIX time. If both are set, the later wins."""

    id: str
    queue: str
    body: bytes
    priority: int = 5
    countdown: float = 0.0
    eta: float | None = None


class Delivery(msgspec.Struct, frozen=True):
    """A leased message. ``receipt`` is the broker's handle for ack/extend/release."""

    id: str
    queue: str
    body: bytes
    priority: int
    receipt: str
    delivery_count: int
    #: Whether the message's id was revoked when it was leased. Only meaningful from a broker
    #: whose ``lease_checks_revoked`` is true; otherwise always False.
    revoked: bool = False


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message in the dead-letter queue."""

    id: str
    queue: str
    body: bytes
    reason: str
    detail: str
    dead_at: float
    delivery_count: int = 0


@dataclass(frozen=True, slots=True)
class Departure:
    """A message that left the broker without a worker settling it: dead-lettered by the
    sweep (``reason`` ``worker_lost``) or purged (:data:`PURGED`). ``receipt`` is the
    broker's handle for :meth:`Broker.forget_departures`."""

    id: str
    queue: str
    body: bytes
    reason: str
    receipt: str


@dataclass(frozen=True, slots=True)
class Scheduled:
    """A delayed message (countdown, ETA or retry) waiting for ``due`` (broker clock)."""

    id: str
    queue: str
    body: bytes
    priority: int
    due: float


@dataclass(slots=True)
class QueueStats:
    """Message counts of one queue."""

    ready: int = 0
    delayed: int = 0
    leased: int = 0
    dead: int = 0


@dataclass(slots=True)
class PriorityCounts:
    """Messages of one queue per state and priority: each state maps priority -> count
    (only priorities with some), and adds up to that state's count in ``stats()``. ``None``:
    the broker cannot split that state by priority cheaply (its total is still in ``stats()``).
    """

    ready: dict[int, int] | None = field(default_factory=dict)
    delayed: dict[int, int] | None = field(default_factory=dict)
    leased: dict[int, int] | None = field(default_factory=dict)
    dead: dict[int, int] | None = field(default_factory=dict)

    def add(self, state: str, priority: int, count: int = 1) -> None:
        """Count ``count`` more messages of ``priority`` in ``state`` (one of the fields)."""
        counts: dict[int, int] | None = getattr(self, state)
        if counts is None:
            raise ValueError(f"{state} is not counted by priority here")
        if count:
            counts[priority] = counts.get(priority, 0) + count


#: The states of :class:`QueueStats` and :class:`PriorityCounts`, in display order.
STATES = ("ready", "delayed", "leased", "dead")


@dataclass(frozen=True, slots=True)
class BrokerOptions:
    """Delivery settings every broker honours (from the app's configuration)."""

    lease_timeout: float = 30.0
    max_deliveries: int = 4
    key_prefix: str = "conveyor"
    transport_options: dict[str, Any] = field(default_factory=dict)


class Broker(abc.ABC):
    """Abstract broker. Implementations must be safe to use from several threads."""

    #: URL schemes this class serves.
    schemes: ClassVar[tuple[str, ...]] = ()
    #: True when every lease sets ``Delivery.revoked`` (checked in the same atomic step as
    #: the lease); a worker then skips its own ``revoked()`` call.
    lease_checks_revoked: ClassVar[bool] = False
    #: True when delays are timed by the publishing process's clock (RabbitMQ's TTL queues):
    #: a worker's put-back holding a booked token then asks for its due time (``eta``),
    #: not a countdown that the time until it is published would make late.
    delays_by_local_clock: ClassVar[bool] = False
    #: True when the server returns a client's leased messages the moment its connection
    #: drops, charging each a delivery (RabbitMQ). A worker's supervisor would give back a
    #: dead child's prefetched messages uncharged too late (another client may hold them
    #: by then), so the child gives them back itself before a task that may end its process.
    leases_end_with_connection: ClassVar[bool] = False
    #: Small shared state on this broker's server or file (beat claims and progress, the
    #: worker registry), set by each implementation: ``app.kv``.
    kv: KeyValue
    #: Rate-limit buckets and concurrency slots shared by every worker (conveyor.limits);
    #: None where the broker cannot keep them atomically (docs/flow-control.md).
    limits: LimitStore | None = None

    def __init__(self, url: str, options: BrokerOptions | None = None) -> None:
        self.url = url
        self.options = options or BrokerOptions()

    # -- producing -----------------------------------------------------------------------
    @abc.abstractmethod
    def publish(self, messages: Sequence[Message]) -> None:
        """Add messages (ready now, or delayed until due) in one batch; an id published in
        the last :data:`PUBLISH_DEDUPE_WINDOW` seconds is skipped."""

    # -- consuming -----------------------------------------------------------------------
    @abc.abstractmethod
    def lease(self, queues: Sequence[str], limit: int, wait: float) -> list[Delivery]:
        """Lease up to ``limit`` ready messages from ``queues``.

        Higher priority first across the given queues, FIFO within one priority. Waits up to
        ``wait`` seconds for the first message (0 = do not wait); returns ``[]`` on timeout.
        Due delayed messages are made ready first.
        """

    @abc.abstractmethod
    def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Remove finished messages. Acking an unknown or already-acked receipt is a no-op."""

    @abc.abstractmethod
    def extend(self, deliveries: Sequence[Delivery]) -> None:
        """Renew leases to ``now + lease_timeout`` (the worker heartbeat)."""

    @abc.abstractmethod
    def release(self, deliveries: Sequence[Delivery]) -> None:
        """Return leased messages to their queue now, without charging a delivery
        (cold shutdown)."""

    def give_back_unleased(self) -> None:  # noqa: B027 - no-op default; pushing brokers override
        """Return, uncharged, the messages this client holds that no lease handed out
        (pushed ahead of the leases, as RabbitMQ's consumers do), so that they do not come
        back charged if this process dies now; on return, every settlement this client made
        has reached the server (none is lost with the process). Nothing to do for a broker
        whose leases take messages one call at a time and whose settlements are synchronous
        (the default)."""

    def record_attempts(self, deliveries: Sequence[Delivery]) -> None:  # noqa: B027 - no-op default; RabbitMQ overrides
        """``deliveries`` (leased by this client) are about to run a task that may end the
        process. A broker whose server counts returns that were no failed run keeps their
        delivery counts itself from here (RabbitMQ: :mod:`conveyor.brokers.amqp.attempts`).
        Nothing to do where every counted return is a lease that ended unsettled (the
        default)."""

    @abc.abstractmethod
    def retry_later(self, delivery: Delivery, message: Message) -> None:
        """Atomically ack ``delivery`` and publish ``message`` (its retry, usually delayed).

        The new message starts with a fresh delivery count."""

    def retry_later_many(self, retries: Sequence[tuple[Delivery, Message]]) -> None:
        """:meth:`retry_later` for each ``(delivery, message)`` pair (a stale receipt's pair
        does nothing, the others go on). Brokers that can override it with one round trip."""
        for delivery, message in retries:
            self.retry_later(delivery, message)

    @abc.abstractmethod
    def dead_letter(self, delivery: Delivery, reason: str, detail: str = "") -> None:
        """Atomically ack ``delivery`` and keep its body in the dead-letter queue."""

    def dead_letter_many(self, letters: Sequence[tuple[Delivery, str, str]]) -> None:
        """:meth:`dead_letter` each ``(delivery, reason, detail)`` of ``letters``; brokers
        that can override this to do it in one round trip."""
        for delivery, reason, detail in letters:
            self.dead_letter(delivery, reason, detail)

    @abc.abstractmethod
    def sweep(self) -> int:
        """Return expired leases to their queues (or dead-letter them with ``worker_lost``
        once they reached ``max_deliveries``) and make due delayed messages ready.

        Returns how many messages it moved. Safe to call from several workers at once.
        """

    # -- revocation ----------------------------------------------------------------------
    @abc.abstractmethod
    def revoke(self, ids: Iterable[str], ttl: float) -> None:
        """Remember ``ids`` as revoked for ``ttl`` seconds."""

    @abc.abstractmethod
    def revoked(self, ids: Iterable[str]) -> set[str]:
        """Return which of ``ids`` are revoked."""

    # -- inspection and maintenance ------------------------------------------------------
    @abc.abstractmethod
    def stats(self, queues: Sequence[str] | None = None) -> dict[str, QueueStats]:
        """Counts per queue (all known queues when ``queues`` is None)."""

    def oldest_ready(self, queues: Sequence[str]) -> dict[str, list[bytes]]:
        """For each of ``queues`` with ready messages, the bodies of the ones that may have
        waited longest (for the oldest-message age gauge of ``conveyor metrics``): the first
        published of each priority's ready ones, and the first due of the delayed ones that are
        due. A reader decodes them (``created_at``, ``eta``). Brokers that cannot tell
        cheaply return ``{}`` (the default)."""
        return {}

    @abc.abstractmethod
    def dead_letters(self, limit: int = 100, queue: str | None = None) -> list[DeadLetter]:
        """Dead letters, oldest first."""

    @abc.abstractmethod
    def replay_dead(self, ids: Sequence[str] | None = None) -> int:
        """Move dead letters (all when ``ids`` is None) back to their queues; return count."""

    @abc.abstractmethod
    def purge_dead(self, ids: Sequence[str] | None = None) -> int:
        """Delete dead letters (all when ``ids`` is None); return count."""

    @abc.abstractmethod
    def purge(self, queues: Sequence[str]) -> int:
        """Delete ready and delayed messages of ``queues``; return count. Leased ones stay."""

    # -- departures (unique keys and batches of messages no worker settled) ----------------
    def take_departures(self, limit: int = 100) -> list[Departure]:
        """Claim up to ``limit`` recorded departures for :data:`DEPARTURE_CLAIM` seconds
        (in no promised order). A broker that records none returns ``[]`` (the default)."""
        return []

    def forget_departures(self, departures: Sequence[Departure]) -> None:  # noqa: B027
        """Delete departures whose bookkeeping is done; unknown ones are skipped."""

    # -- delayed messages (optional: the dashboard's Scheduled and Retries pages) -----------
    def scheduled(self, limit: int = 100, queue: str | None = None) -> list[Scheduled]:
        """Up to ``limit`` delayed messages (of ``queue``, or all), soonest due first."""
        raise NotImplementedError(f"{type(self).__name__} cannot list its delayed messages")

    def run_scheduled(self, ids: Sequence[str]) -> int:
        """Make the delayed messages ``ids`` ready now (behind what is queued); return count."""
        raise NotImplementedError(f"{type(self).__name__} cannot move its delayed messages")

    def cancel_scheduled(self, ids: Sequence[str]) -> int:
        """Delete the delayed messages ``ids``; return count."""
        raise NotImplementedError(f"{type(self).__name__} cannot delete its delayed messages")

    def priority_counts(self, queues: Sequence[str] | None = None) -> dict[str, PriorityCounts]:
        """For each of ``queues`` (empty ones too; every known queue when None, as
        ``stats()``), its messages per state and priority, split as ``stats()`` splits them;
        states the broker cannot split are ``None`` (the default: all of them, and no queue
        for None)."""
        return {queue: PriorityCounts(None, None, None, None) for queue in queues or ()}

    @abc.abstractmethod
    def time(self) -> float:
        """The broker's clock as a POSIX timestamp."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    @property
    def streams(self) -> Streams:
        """Bounded streams on this broker's server (events, remote control); optional."""
        raise NotImplementedError(
            f"{type(self).__name__} keeps no streams: events and remote control "
            "(conveyor events / inspect / control) need a broker that does (see conveyor.streams)"
        )


def queue_matches(pattern: str, name: str) -> bool:
    """Glob match used by routing (``"reports.*"``)."""
    return fnmatch.fnmatchcase(name, pattern)


def clamp_priority(priority: int) -> int:
    """Bring a priority into 0-9."""
    return MIN_PRIORITY if priority < MIN_PRIORITY else min(priority, MAX_PRIORITY)


def redact_url(url: str) -> str:
    """Hide the password in a URL (``redis://user:***@host``) for logs and errors. Textual, so
    it also covers several hosts (``redis+sentinel://:pw@h1,h2/...``), Celery's ``;``-joined
    sentinel URLs and malformed ports; when unsure it hides more, never less."""
    return redact_text(";".join(_redact_one(part) for part in url.split(";")))


def _redact_one(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    at = rest.rfind("@")
    if not sep or at < 0:
        return url
    user, colon, _ = rest[:at].partition(":")
    if not colon:
        return url
    return f"{scheme}://{user}:***@{rest[at + 1 :]}"
