"""Publish retries: a producer's publish that meets a lost connection is tried again.

Celery retries a publish by default (``retry=True`` with a ``retry_policy``); so does
Conveyor, with the same option and setting names (``retry`` / ``retry_policy`` call options,
``task_publish_retry`` / ``task_publish_retry_policy`` settings) and the same schedule: the
n-th retry waits ``min(interval_start + n * interval_step, interval_max)`` seconds (n from 0),
for at most ``max_retries`` retries (``None``: until the publish goes through).

Only connection-type failures are retried (a refused connection, a reset, a socket timeout,
an SQLite file that stayed locked): a refused or invalid message fails at once. Retrying is
safe because brokers publish idempotently by message id (see ``Broker.publish``): a publish
whose reply was lost after the server applied it adds nothing when it is sent again.

The defaults (:data:`DEFAULT_POLICY`) differ from Celery's (3 retries 0.2 s apart: a
broker restart of a few seconds fails every call): 10 retries 0, 0.5, 1.0, 1.5 then 2 s apart,
at most 15 s of waiting in all, so an outage of a few seconds (a Redis restart or failover) is
ridden out while a broker that stays down still fails the call within a bounded time (plus
the time of each attempt itself, e.g. socket connect timeouts).
"""

from __future__ import annotations

import logging
import sqlite3
import ssl
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from functools import lru_cache
from typing import TYPE_CHECKING

from .exceptions import BrokerError, ConfigurationError, ResultStoreError
from .results.base import ResultRecord

if TYPE_CHECKING:
    from .config import Settings

logger = logging.getLogger("conveyor.publishing")

#: Errors of a failed publish: the broker's, or the result store's (QUEUED records go first).
PUBLISH_ERRORS = (BrokerError, ResultStoreError)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a failed publish is retried (Celery's ``retry_policy`` keys)."""

    #: Retries after the first attempt; None retries until the publish goes through.
    max_retries: int | None = 10
    #: Seconds before the first retry.
    interval_start: float = 0.0
    #: Seconds added for each further retry.
    interval_step: float = 0.5
    #: Longest wait between two retries.
    interval_max: float = 2.0

    def __post_init__(self) -> None:
        if self.max_retries is not None and (
            isinstance(self.max_retries, bool)
            or not isinstance(self.max_retries, int)
            or self.max_retries < 0
        ):
            raise ConfigurationError(
                f"retry_policy max_retries must be a non-negative integer or None, "
                f"got {self.max_retries!r}"
            )
        for name in ("interval_start", "interval_step", "interval_max"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ConfigurationError(
                    f"retry_policy {name} must be a non-negative number of seconds, got {value!r}"
                )

    @classmethod
    def from_mapping(
        cls, values: Mapping[str, object], base: RetryPolicy | None = None
    ) -> RetryPolicy:
        """A policy from Celery-style keys; missing keys come from ``base`` (or the
        defaults). An unknown key or a bad value raises ConfigurationError naming it."""
        if not isinstance(values, Mapping):
            raise ConfigurationError(f"retry_policy must be a mapping, got {type(values).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(str(k) for k in values if k not in known)
        if unknown:
            raise ConfigurationError(
                f"unknown retry_policy key(s): {', '.join(unknown)} "
                f"(known: {', '.join(sorted(known))})"
            )
        start = base or DEFAULT_POLICY
        merged: dict[str, object] = {f.name: getattr(start, f.name) for f in fields(cls)}
        merged.update({str(k): v for k, v in values.items()})
        return cls(**merged)  # type: ignore[arg-type]  # each field is checked in __post_init__

    def as_dict(self) -> dict[str, int | float | None]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def delays(self) -> Iterator[float]:
        """The waits before each retry, in order (endless when ``max_retries`` is None)."""
        n = 0
        while self.max_retries is None or n < self.max_retries:
            yield min(self.interval_start + n * self.interval_step, self.interval_max)
            n += 1

    @property
    def total_wait(self) -> float | None:
        """Seconds of waiting when every retry fails (None: no bound)."""
        return None if self.max_retries is None else sum(self.delays())


#: Conveyor's default policy (see the module docstring for why it is not Celery's).
DEFAULT_POLICY = RetryPolicy()


def check_policy_setting(name: str, value: object) -> dict[str, int | float | None]:
    """The check of the ``task_publish_retry_policy`` setting: Celery's keys, validated,
    missing ones filled in from :data:`DEFAULT_POLICY`."""
    if value is None:
        return DEFAULT_POLICY.as_dict()
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"{name} must be a mapping, got {type(value).__name__}")
    try:
        return RetryPolicy.from_mapping(value).as_dict()
    except ConfigurationError as exc:
        raise ConfigurationError(f"{name}: {exc}") from None


def is_connection_error(exc: BaseException) -> bool:
    """Whether ``exc`` (a broker or result store error) was caused by a lost or refused
    connection, a timeout, or a locked SQLite file: a failure that may pass on its own."""
    if not isinstance(exc, PUBLISH_ERRORS):
        return False
    # redis is optional: if it was never imported, no redis error can be in the chain.
    redis_errors = sys.modules.get("redis.exceptions")
    redis_types: tuple[type[BaseException], ...] = ()
    if redis_errors is not None:
        redis_types = (redis_errors.ConnectionError, redis_errors.TimeoutError)
    seen: set[int] = set()
    cause: BaseException | None = exc.__cause__ or exc.__context__
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, ssl.SSLCertVerificationError):
            return False  # an untrusted certificate stays untrusted: retrying cannot help
        if isinstance(cause, (OSError, *redis_types)):  # OSError: sockets, timeouts
            return True
        if isinstance(cause, sqlite3.OperationalError) and _sqlite_busy(cause):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def _sqlite_busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    return code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


def publish_with_retry(
    publish: Callable[[], None],
    policy: RetryPolicy | None,
    *,
    where: Callable[[], str],
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Call ``publish()``; while it fails with a connection error, wait and call it again as
    ``policy`` says (None: no retries). Returns the number of retries made; the last error is
    raised when the retries run out. ``where()`` names the broker in log lines (a redacted
    URL; asked only on a failure).
    """
    delays = iter(()) if policy is None else policy.delays()
    retries = 0
    while True:
        try:
            publish()
            return retries
        except PUBLISH_ERRORS as exc:
            if not is_connection_error(exc):
                raise
            delay = next(delays, None)
            if delay is None:
                raise
            retries += 1
            limit = "" if policy is None or policy.max_retries is None else f"/{policy.max_retries}"
            logger.warning(
                "publish to %s failed (%s); retry %d%s in %.2fs",
                where(),
                exc,
                retries,
                limit,
                delay,
            )
            sleep(delay)


def queued_once(
    publish: Callable[[Sequence[ResultRecord]], None],
    records: Sequence[ResultRecord],
    stored: Callable[[Sequence[str]], Sequence[ResultRecord | None]],
    *,
    retrying: bool = False,
) -> Callable[[], None]:
    """The call :func:`publish_with_retry` repeats: ``publish(records)`` stores the QUEUED
    ``records`` with the messages. A retry stores only the records still missing: the failed
    attempt may have landed, and its tasks may have finished since - QUEUED written again
    would hide their states for good (the messages themselves are deduplicated by id).
    ``retrying``: an earlier attempt failed already, so even the first call checks."""
    attempts = 1 if retrying else 0

    def attempt() -> None:
        nonlocal attempts
        attempts += 1
        if attempts == 1 or not records:
            publish(records)
            return
        found = stored([record.id for record in records])
        publish([record for record, old in zip(records, found, strict=True) if old is None])

    return attempt


def publish_policy(options: Mapping[str, object], conf: Settings) -> RetryPolicy | None:
    """How the publish of a call is retried: the ``retry`` / ``retry_policy`` call options
    over the ``task_publish_retry`` / ``task_publish_retry_policy`` settings (None: no
    retries). A bad option raises ConfigurationError here, naming the bad key."""
    retry = options.get("retry")
    if retry is None:
        retry = conf.task_publish_retry
    elif not isinstance(retry, bool):
        raise ConfigurationError(f"retry must be True or False, got {retry!r}")
    base = _configured_policy(tuple(conf.task_publish_retry_policy.items()))
    given = options.get("retry_policy")
    if given is not None:
        if not isinstance(given, Mapping):
            raise ConfigurationError(f"retry_policy must be a mapping, got {type(given).__name__}")
        policy = RetryPolicy.from_mapping(given, base)
    else:
        policy = base
    return policy if retry else None


@lru_cache(maxsize=16)
def _configured_policy(items: tuple[tuple[str, int | float | None], ...]) -> RetryPolicy:
    # The setting is checked when set; this saves building the policy on every call.
    return RetryPolicy.from_mapping(dict(items))
