"""Admission of a leased task under its limits, in the worker (:class:`FlowGate`).

Before a task runs, the worker asks the gate. The gate holds a concurrency slot for it (if
the task has ``concurrency_limit``), then books a token of each rate limit that applies (the
task's, keyed by its rate key if it has one, and its queue's). A task that must wait is put
back into the broker, delayed - never holding a worker slot, never charged a retry or a
delivery (the worker's put-back is an uncharged ``retry_later``):

* waiting for a token that is booked (due within the bucket's horizon): delayed exactly until
  it is due, with the booking noted in its headers, so it runs then without competing again
  (a booking used more than :data:`BOOKING_GRACE` late has lapsed: it books again);
* waiting for a bucket booked beyond its horizon: delayed until the horizon frees up, plus a
  random part (from a quarter of the horizon, doubling up to twice it), to look again;
* waiting for a concurrency slot: delayed with a growing backoff (50 ms doubling to 2 s,
  randomised), to look again.

Slots held by running tasks are renewed by the worker's heartbeat and given back when the
task ends; a worker that dies stops renewing, and its slots lapse with its leases
(``broker_lease_timeout``). On a broker without a limit store (RabbitMQ with a Django result
store), rate limits fall back to per-worker limiters and concurrency limits are refused at
worker start.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ..exceptions import ConfigurationError, ConveyorError
from ..message import Envelope
from .options import (
    BOOKED_HEADER,
    CONCURRENCY_KEY_HEADER,
    RATE_KEY_HEADER,
    RATE_WAITS_HEADER,
    WAITS_HEADER,
)
from .rates import Rate, parse_rate
from .store import LimitStore

if TYPE_CHECKING:
    from ..app import Conveyor
    from ..task import Task
    from ..worker.ratelimit import RateLimiter

logger = logging.getLogger("conveyor.worker")

#: Longest wait (s) between two looks of a task waiting for a concurrency slot.
SLOT_BACKOFF_MAX = 2.0
SLOT_BACKOFF_BASE = 0.05
#: Seconds after its due time a booked token may still be used: more than brokers take to
#: deliver a due message (SQLite polls, Redis wakes on its 100 ms tick). A put-back that
#: reached the broker much later (a worker busy starting up) would otherwise run together
#: with the tokens booked after it: a burst. Later than this, it books a new token (the old
#: one lapses unused). Workers' clocks must agree to well within it (NTP).
BOOKING_GRACE = 0.25
#: Seconds a limited task waits when the limit store could not be reached.
STORE_DOWN_WAIT = 1.0
#: Most horizons a task waits before it looks again at a bucket booked beyond its horizon.
RATE_BACKOFF_MAX = 2.0
#: Most buckets a worker process remembers as booked beyond their horizon.
REFUSED_KEPT = 4096


def refuse_concurrency_limits(app: Conveyor) -> None:
    """Raise :class:`ConfigurationError` if ``app`` has tasks with ``concurrency_limit``: for
    a broker that keeps no limits (a supervisor calls it with RabbitMQ before it forks, so a
    worker refuses to start instead of restarting children that cannot run)."""
    limited = [t.name for t in app.tasks.values() if t.concurrency_limit is not None]
    if limited:
        raise ConfigurationError(
            f"concurrency_limit ({', '.join(sorted(limited))}) needs a broker that keeps "
            "limits (Redis, SQLite, PostgreSQL); RabbitMQ keeps none (docs/flow-control.md)"
        )


def bucket_size(rate: Rate) -> int:
    """The most starts a bucket of ``rate`` lets through above the rate in any window (issue
    18's "bucket size"): its ``burst`` (1), plus the tokens of :data:`BOOKING_GRACE` - a
    booking may be used that late while the tokens booked after it are used on time. So in
    any 1-s window at most ``per_second + bucket_size`` start: 50 + 14 for ``"50/s"``."""
    return rate.burst + math.ceil(rate.per_second * BOOKING_GRACE)


def horizon(rate: Rate) -> float:
    """How far ahead (s) a bucket books tokens: 5 s, or 10 tokens for slow rates."""
    return max(5.0, 10.0 * rate.interval)


class FlowGate:
    """Rate and concurrency limits of one worker process's tasks, over ``store`` (the
    broker's ``limits``; None: per-worker rate limits through ``RateLimiter``s)."""

    def __init__(self, app: Conveyor, store: LimitStore | None) -> None:
        self.app = app
        self.store = store
        self.slot_ttl = float(app.conf.broker_lease_timeout)
        self._lock = threading.Lock()
        self._held: dict[str, list[str]] = {}
        self._rates: dict[str, Rate] = {}
        #: Buckets the store found booked beyond their horizon: key -> (interval, monotonic
        #: time until which a take is refused). Messages of a backlog then go back to wait
        #: without a store round trip each.
        self._refused: dict[str, tuple[float, float]] = {}
        queues = app.conf.task_queues or ()
        self._queue_rates = {q.name: parse_rate(q.rate_limit) for q in queues if q.rate_limit}
        if store is None:
            refuse_concurrency_limits(app)

    # -- admission -----------------------------------------------------------------------
    def admit(
        self, task: Task[..., object], envelope: Envelope, local: RateLimiter
    ) -> float | None:
        """None: ``task`` may run now (its slot is held until :meth:`finished`). A number:
        put the message back for that many seconds (``envelope.headers`` updated for it).
        While the limit store cannot be reached, tasks with limits wait (fail closed)."""
        if not task.rate_limit and task.concurrency_limit is None and not self._queue_rates:
            return None
        try:
            return self._admit(task, envelope, local)
        except ConveyorError as exc:
            logger.error("limits of %s[%s] unreadable, it waits: %s", task.name, envelope.id, exc)
            return STORE_DOWN_WAIT

    def _admit(
        self, task: Task[..., object], envelope: Envelope, local: RateLimiter
    ) -> float | None:
        headers = envelope.headers
        booking = headers.pop(BOOKED_HEADER, None)
        now = time.time()
        booked_keys = _booked(booking, now)
        if booking is not None and not booked_keys and logger.isEnabledFor(logging.DEBUG):
            # how issue 18's starvation on RabbitMQ was measured: bookings that came back late
            due = booking.get("due") if isinstance(booking, dict) else None
            late = f"{now - due:.3f} s late" if isinstance(due, int | float) else "unreadable"
            logger.debug(
                "%s[%s]: its booking lapsed (%s): books again", task.name, envelope.id, late
            )
        slot = self._slot_key(task, headers)
        store = self.store
        if slot is not None and store is not None and task.concurrency_limit is not None:
            if not store.acquire(slot, task.concurrency_limit, envelope.id, self.slot_ttl):
                return self._slot_backoff(headers)
            headers.pop(WAITS_HEADER, None)
        try:
            wait = self._book(task, envelope, booked_keys, local)
        except BaseException:
            self._give_back(slot, envelope.id)
            raise
        if wait is not None:
            self._give_back(slot, envelope.id)
            return wait
        if slot is not None:
            with self._lock:
                self._held.setdefault(envelope.id, []).append(slot)
        return None

    def _book(
        self, task: Task[..., object], envelope: Envelope, booked: set[str], local: RateLimiter
    ) -> float | None:
        after = 0.0
        newly: list[str] = []
        for key, rate in self._limits(task, envelope):
            if key in booked:
                continue
            if self.store is None:  # per-worker fallback: no booking ahead
                # the task-wide limit by the task's name: the slot of the worker's shared
                # limiter (keyed and queue limits are then per process)
                name = task.name if key == f"task:{task.name}" else key
                wait = local.wait(name, rate.per_second, time.time())
                if wait > 0:
                    return wait
                continue
            refused = self._refused_for(key, rate)
            if refused is not None:
                return refused + self._rate_backoff(envelope.headers) * horizon(rate)
            grant = self.store.take(key, rate.interval, rate.tolerance, after, horizon(rate))
            if not grant.granted:
                self._note_refused(key, rate, grant.wait)
                return grant.wait + self._rate_backoff(envelope.headers) * horizon(rate)
            after = grant.wait
            newly.append(key)
        envelope.headers.pop(RATE_WAITS_HEADER, None)
        if after > 0:
            due = time.time() + after
            envelope.headers[BOOKED_HEADER] = {"due": due, "keys": [*booked, *newly]}
            return after
        return None

    def _refused_for(self, key: str, rate: Rate) -> float | None:
        """Seconds a take on ``key`` is still known to be refused (None: ask the store).
        Other processes' takes only book further ahead, so a refusal holds until the horizon
        frees up - at the same rate (a rate changed at run time asks the store again)."""
        with self._lock:
            noted = self._refused.get(key)
        if noted is None or noted[0] != rate.interval:
            return None
        left = noted[1] - time.monotonic()
        return left if left > 0 else None

    def _note_refused(self, key: str, rate: Rate, wait: float) -> None:
        now = time.monotonic()
        with self._lock:
            if len(self._refused) >= REFUSED_KEPT:  # many keyed buckets: forget lapsed ones
                self._refused = {k: v for k, v in self._refused.items() if v[1] > now}
            if len(self._refused) < REFUSED_KEPT:
                self._refused[key] = (rate.interval, now + wait)

    def _limits(self, task: Task[..., object], envelope: Envelope) -> Iterator[tuple[str, Rate]]:
        if task.rate_limit:
            rate = self._rate(task.rate_limit)
            rate_key = envelope.headers.get(RATE_KEY_HEADER)
            if isinstance(rate_key, str):
                yield f"task:{task.name}:{rate_key}", rate
            else:
                yield f"task:{task.name}", rate
        queue_rate = self._queue_rates.get(envelope.queue)
        if queue_rate is not None:
            yield f"queue:{envelope.queue}", queue_rate

    def _rate(self, text: str) -> Rate:
        rate = self._rates.get(text)
        if rate is None:  # rate_limit may change at run time (remote control)
            rate = self._rates[text] = parse_rate(text)
        return rate

    @staticmethod
    def _slot_key(task: Task[..., object], headers: dict[str, object]) -> str | None:
        if task.concurrency_limit is None:
            return None
        key = headers.get(CONCURRENCY_KEY_HEADER)
        return f"task:{task.name}:{key}" if isinstance(key, str) else f"task:{task.name}"

    @staticmethod
    def _rate_backoff(headers: dict[str, object]) -> float:
        """Horizons to wait before looking again at a bucket booked beyond its horizon: a
        random half to whole quarter of one, doubling (up to 2) each time the message found
        it full, so a big backlog returns less and less often while the bucket is busy."""
        waits = headers.get(RATE_WAITS_HEADER)
        count = waits if isinstance(waits, int) and not isinstance(waits, bool) else 0
        headers[RATE_WAITS_HEADER] = count + 1
        return random.uniform(0.5, 1.0) * min(0.25 * 2.0**count, RATE_BACKOFF_MAX)

    @staticmethod
    def _slot_backoff(headers: dict[str, object]) -> float:
        waits = headers.get(WAITS_HEADER)
        count = waits if isinstance(waits, int) and not isinstance(waits, bool) else 0
        headers[WAITS_HEADER] = count + 1
        delay = min(SLOT_BACKOFF_MAX, SLOT_BACKOFF_BASE * 2.0 ** min(count, 16))
        return delay * random.uniform(0.5, 1.0)

    # -- while running and after ---------------------------------------------------------
    def finished(self, task_id: str) -> None:
        """The task ``task_id`` ended: give its slots back (never raises)."""
        with self._lock:
            slots = self._held.pop(task_id, None)
        for slot in slots or ():
            self._give_back(slot, task_id)

    def renew(self) -> None:
        """Extend the slots of the running tasks (called by the heartbeat)."""
        with self._lock:
            held = [(slot, task_id) for task_id, slots in self._held.items() for slot in slots]
        if held and self.store is not None:
            self.store.renew(held, self.slot_ttl)

    def held(self) -> dict[str, list[str]]:
        """Task id -> slot keys it holds (inspection and tests)."""
        with self._lock:
            return {k: list(v) for k, v in self._held.items()}

    def _give_back(self, slot: str | None, task_id: str) -> None:
        if slot is None or self.store is None:
            return
        try:
            self.store.release(slot, task_id)
        except Exception as exc:  # it lapses at its deadline
            logger.warning("could not give back the concurrency slot of %s: %s", task_id, exc)


def _booked(value: object, now: float) -> set[str]:
    """The buckets a message's booking header holds a token of, if it is not stale."""
    if not isinstance(value, dict):
        return set()
    due, keys = value.get("due"), value.get("keys")
    if not isinstance(due, int | float) or not isinstance(keys, list):
        return set()
    if now > due + BOOKING_GRACE:
        return set()
    return {key for key in keys if isinstance(key, str)}


def booked_due(headers: dict[str, object]) -> float | None:
    """The due time (this process's clock) of the token a message's headers book, if any."""
    booking = headers.get(BOOKED_HEADER)
    due = booking.get("due") if isinstance(booking, dict) else None
    return float(due) if isinstance(due, int | float) else None
