"""The Broker interface: what every broker (memory, SQLite, Redis, ...) provides.

A broker moves opaque message bodies; it knows nothing of tasks. Its promises (see the design):

* **Leases.** ``lease()`` hands out messages for ``lease_timeout`` seconds. ``ack()`` removes
  them; ``extend()`` renews the lease (worker heartbeat); a lease that runs out returns the
  message to its queue at the next ``sweep()``.
* **Delivery counts.** Each lease increments the message's delivery count (1 on the first
  delivery). When a lease runs out on a message already delivered ``max_deliveries`` times, the
  sweep dead-letters it with reason ``worker_lost`` instead of returning it.
* **Delayed messages** (``countdown``/``eta``) wait inside the broker, judged on the broker's
  clock (``time()``), and become ready at ``sweep()`` or ``lease()`` once due.
* **Priorities** 0-9 within a queue, **9 served first**, FIFO within one priority.
* **Dead letters** keep the raw body with a reason and detail; they can be listed, replayed
  (back to their queue with a fresh delivery count) and purged.
* **Revocations** are stored with a TTL and survive restarts. A broker whose
  ``lease_checks_revoked`` is true also reports, on each delivery, whether its id was revoked
  when it was leased (looked up in the same atomic step), so a worker needs no extra call.
* **Results before acks.** ``ack_recorded()`` and ``ack_and_lease()`` store result records
  before they ack: a crash in between leads to a redelivery, never to a lost result.
"""

from __future__ import annotations

import abc
import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:
    from ..kv import KeyValue
    from ..results.base import ResultRecord, ResultStore

MIN_PRIORITY = 0
MAX_PRIORITY = 9


class DeadLetterReason(StrEnum):
    """Why a message was dead-lettered."""

    UNKNOWN_TASK = "unknown_task"
    UNDECODABLE = "undecodable"
    MALFORMED = "malformed"
    EXPIRED = "expired"
    WORKER_LOST = "worker_lost"
    REJECTED = "rejected"
    TIME_LIMIT = "time_limit"


@dataclass(frozen=True, slots=True)
class Message:
    """A message to publish. ``countdown`` is seconds from now on the broker's clock; ``eta``
    an absolute POSIX time. If both are set, the later wins."""

    id: str
    queue: str
    body: bytes
    priority: int = 5
    countdown: float = 0.0
    eta: float | None = None


@dataclass(frozen=True, slots=True)
class Delivery:
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


@dataclass(slots=True)
class QueueStats:
    """Message counts of one queue."""

    ready: int = 0
    delayed: int = 0
    leased: int = 0
    dead: int = 0


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
    #: True when ``lease()`` and ``ack_and_lease()`` set ``Delivery.revoked`` (checked in the
    #: same atomic step as the lease); a worker then skips its own ``revoked()`` call.
    lease_checks_revoked: ClassVar[bool] = False
    #: Small shared state on this broker's server or file (beat claims and progress, the
    #: worker registry), set by each implementation: ``app.kv``.
    kv: KeyValue

    def __init__(self, url: str, options: BrokerOptions | None = None) -> None:
        self.url = url
        self.options = options or BrokerOptions()

    # -- producing -----------------------------------------------------------------------
    @abc.abstractmethod
    def publish(self, messages: Sequence[Message]) -> None:
        """Add messages (ready now, or delayed until due) in one batch."""

    def publish_recorded(
        self, messages: Sequence[Message], results: ResultStore, records: Sequence[ResultRecord]
    ) -> None:
        """Record QUEUED states, then publish. Brokers sharing a server with the result store
        override this to do both in one round trip."""
        if records:
            results.store(records)
        self.publish(messages)

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

    def ack_recorded(
        self,
        deliveries: Sequence[Delivery],
        results: ResultStore,
        records: Sequence[ResultRecord],
    ) -> None:
        """Store ``records``, then ack ``deliveries`` (a finished batch).

        The records are stored before any ack takes effect (at-least-once: a failure in
        between leaves the messages leased, so they are redelivered; never acked without their
        result). Brokers sharing a server or file with the result store override this to do
        both in one round trip."""
        if records:
            results.store(records)
        if deliveries:
            self.ack(deliveries)

    def ack_and_lease(
        self,
        deliveries: Sequence[Delivery],
        results: ResultStore,
        records: Sequence[ResultRecord],
        queues: Sequence[str],
        limit: int,
        wait: float,
    ) -> list[Delivery]:
        """:meth:`ack_recorded` then :meth:`lease` (a worker settling finished tasks and
        taking the next ones); brokers override it to need fewer round trips.

        The records are stored and the acks take effect before the lease waits for a message,
        so an idle queue never delays them. If this raises, any part may have happened: ack
        and store again (both are idempotent)."""
        self.ack_recorded(deliveries, results, records)
        return self.lease(queues, limit, wait)

    @abc.abstractmethod
    def extend(self, deliveries: Sequence[Delivery]) -> None:
        """Renew leases to ``now + lease_timeout`` (the worker heartbeat)."""

    @abc.abstractmethod
    def release(self, deliveries: Sequence[Delivery]) -> None:
        """Return leased messages to their queue now, without charging a delivery
        (cold shutdown)."""

    @abc.abstractmethod
    def retry_later(self, delivery: Delivery, message: Message) -> None:
        """Atomically ack ``delivery`` and publish ``message`` (its retry, usually delayed).

        The new message starts with a fresh delivery count."""

    @abc.abstractmethod
    def dead_letter(self, delivery: Delivery, reason: str, detail: str = "") -> None:
        """Atomically ack ``delivery`` and keep its body in the dead-letter queue."""

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

    @abc.abstractmethod
    def time(self) -> float:
        """The broker's clock as a POSIX timestamp."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


def queue_matches(pattern: str, name: str) -> bool:
    """Glob match used by routing (``"reports.*"``)."""
    return fnmatch.fnmatchcase(name, pattern)


def clamp_priority(priority: int) -> int:
    """Bring a priority into 0-9."""
    return MIN_PRIORITY if priority < MIN_PRIORITY else min(priority, MAX_PRIORITY)


def redact_url(url: str) -> str:
    """Hide the password in a URL (``redis://user:***@host``) for logs and errors."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        host = parts.hostname or ""
        port = parts.port
    except ValueError:  # e.g. a port that is not a number
        return "<unparsable url>"
    if port is not None:
        host = f"{host}:{port}"
    netloc = f"{parts.username or ''}:***@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
