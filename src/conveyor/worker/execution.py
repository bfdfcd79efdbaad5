"""Running one task: decode, check, run, and decide what happens to its message.

The runner never talks to the broker; it returns an :class:`Outcome` (an :class:`Action` -
ack, retry later, or dead-letter - plus the result records to store and follow-up work such
as callbacks). :class:`conveyor.worker.settle.Settler` applies outcomes in batches: records
first, then follow-ups, then acks, so a crash at any point leads to a redelivery, never to a
lost result.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from msgspec.structs import replace

from .. import states
from .._exceptions_registry import exception_info, format_traceback
from ..brokers.base import MAX_PRIORITY, DeadLetterReason, Delivery, Message
from ..canvas import ONCE_HEADER, on_task_finished, once_guard
from ..canvas.batch import BATCH_HEADER
from ..canvas.signature import signature_problem
from ..exceptions import (
    MalformedMessage,
    NotRegistered,
    Reject,
    Retry,
    SerializationError,
    TaskRevokedError,
)
from ..limits.gate import FlowGate, booked_due
from ..limits.options import BOOKED_HEADER
from ..message import (
    TAG,
    Envelope,
    JSONValue,
    decode_arguments,
    decode_envelope,
    encode_envelope,
    to_json_value,
)
from ..request import Request
from ..result import AsyncResult, GroupResult
from ..results.base import ResultRecord
from ..signing import signer_for
from ..task import _current_request
from .deadlog import DeadLetterLog
from .job import Action, Job, Outcome
from .ratelimit import LocalRateLimiter, RateLimiter
from .records import RecordBuilder

if TYPE_CHECKING:
    from ..app import Conveyor

logger = logging.getLogger("conveyor.worker")


class TaskRunner:
    """Turns deliveries into outcomes for one app; shared by every thread of a worker."""

    def __init__(self, app: Conveyor, hostname: str) -> None:
        self.app = app
        self.hostname = hostname
        self.records = RecordBuilder(hostname, bool(app.conf.result_extended))
        self.log_tasks = bool(app.conf.worker_log_tasks)
        #: Bodies over this are dead-lettered undecoded: twice ``message_max_bytes``, so a
        #: message that grew a little on its way (a retry, headers) still runs.
        self.max_body_bytes = 2 * int(app.conf.message_max_bytes)
        #: Books the starts of rate-limited tasks; a worker of several processes replaces
        #: it with one they share (``SharedRateLimiter``).
        self.rate_limiter: RateLimiter = LocalRateLimiter()
        #: Rate and concurrency limits (set by the worker: None runs everything unlimited,
        #: as the supervisor does when it records a lost task).
        self.flow: FlowGate | None = None
        self.signer = signer_for(app.conf.message_signing_keys)
        self.max_deliveries = int(app.conf.task_max_deliveries)
        #: The log of the messages dead-lettered here: a line per burst, not per message.
        self.dead_letters = DeadLetterLog(logger)

    # -- before running ------------------------------------------------------------------
    def prepare(
        self, delivery: Delivery, revoked: set[str] | frozenset[str] = frozenset()
    ) -> Job | Outcome:
        """Decode and check a delivery: a Job to run, or the Outcome of not running it.
        Total: whatever the body holds, this returns (an unexpected error dead-letters the
        message as ``malformed``, logged with its traceback)."""
        count = delivery.delivery_count
        if not 1 <= count <= self.max_deliveries:
            # Brokers dead-letter a message at its last delivery; a count beyond that (or
            # below 1) was written into the broker by something else: never run it.
            over = count > self.max_deliveries
            reason = DeadLetterReason.WORKER_LOST if over else DeadLetterReason.MALFORMED
            detail = f"delivery count {count} is not within 1-{self.max_deliveries}"
            self.dead_letters.dead_lettered(delivery.id, delivery.queue, reason, detail)
            return Outcome(delivery, Action.DEAD, reason=reason, detail=detail)
        try:
            envelope = decode_envelope(delivery.body, self.max_body_bytes, self.signer)
        except MalformedMessage as exc:
            self.dead_letters.dead_lettered(delivery.id, delivery.queue, exc.reason, exc.detail)
            return Outcome(delivery, Action.DEAD, reason=exc.reason, detail=exc.detail)
        try:
            return self.prepare_envelope(envelope, delivery, revoked)
        except Exception as exc:
            logger.exception("dead-lettered message %s: it could not be prepared", delivery.id)
            return Outcome(
                delivery,
                Action.DEAD,
                reason=DeadLetterReason.MALFORMED,
                detail=f"could not be prepared: {type(exc).__name__}: {exc}",
                envelope=envelope,
            )

    def prepare_envelope(
        self,
        envelope: Envelope,
        delivery: Delivery | None,
        revoked: set[str] | frozenset[str] = frozenset(),
    ) -> Job | Outcome:
        prepared = self._prepare(envelope, delivery, revoked)
        if isinstance(prepared, Outcome):
            prepared.envelope = envelope
        return prepared

    def _prepare(
        self, envelope: Envelope, delivery: Delivery | None, revoked: set[str] | frozenset[str]
    ) -> Job | Outcome:
        now = time.time()
        task = self.app.tasks.get(envelope.task)
        if task is None:
            error = NotRegistered(envelope.task)
            detail = f"task {envelope.task!r} is not registered"
            reason = DeadLetterReason.UNKNOWN_TASK
            self._dead_lettered(envelope, delivery, reason, detail, logging.ERROR)
            return Outcome(
                delivery,
                Action.DEAD,
                [self.records.failure(envelope, error, None)],
                reason=reason,
                detail=detail,
                followups=self._then(envelope, states.FAILURE, exception_info(error)),
                state=states.FAILURE,
                error=error,
            )
        try:
            args, kwargs = decode_arguments(envelope)
        except (ValueError, TypeError, AttributeError, ArithmeticError) as exc:
            detail = f"bad arguments: {exc}"
            self._dead_lettered(envelope, delivery, DeadLetterReason.MALFORMED, detail)
            return Outcome(delivery, Action.DEAD, reason=DeadLetterReason.MALFORMED, detail=detail)
        problem = _followups_problem(self.app, envelope)
        if problem is not None:
            self._dead_lettered(envelope, delivery, DeadLetterReason.MALFORMED, problem)
            return Outcome(delivery, Action.DEAD, reason=DeadLetterReason.MALFORMED, detail=problem)
        if envelope.id in revoked:
            return self.revoked_outcome(envelope, delivery)
        if envelope.expires is not None and now >= envelope.expires:
            logger.info("%s[%s] expired: not run", envelope.task, envelope.id)
            return Outcome(
                delivery,
                Action.DEAD,
                [self.records.final(envelope, states.EXPIRED, None)],
                reason=DeadLetterReason.EXPIRED,
                detail=f"expired at {envelope.expires:.3f}",
                followups=self._then(envelope, states.EXPIRED, None),
                state=states.EXPIRED,
            )
        if delivery is not None and self.flow is not None:
            wait = self.flow.admit(task, envelope, self.rate_limiter)
            if wait is not None:  # back to the broker until its turn: not a retry, not charged
                body = encode_envelope(envelope, signer=self.signer)
                # Holding a booked token, it is served first once due (a backlog of the
                # queue would make it late: its token lapses). The task's priority is kept.
                booked = BOOKED_HEADER in envelope.headers
                priority = MAX_PRIORITY if booked else envelope.priority
                due = booked_due(envelope.headers)
                if due is not None and self.app.broker.delays_by_local_clock:
                    message = Message(envelope.id, envelope.queue, body, priority, eta=due)
                else:
                    message = Message(envelope.id, envelope.queue, body, priority, wait)
                return Outcome(
                    delivery, Action.RETRY, retry_message=message, state=states.QUEUED, skipped=True
                )
        request = Request.from_envelope(
            envelope,
            args,
            kwargs,
            hostname=self.hostname,
            delivery_count=delivery.delivery_count if delivery else 1,
            is_eager=delivery is None,
        )
        return Job(envelope, task, args, kwargs, request, delivery)

    def started_record(self, job: Job) -> ResultRecord | None:
        if job.delivery is not None and job.envelope.headers.get(ONCE_HEADER):
            job.once = once_guard(self.app, job.envelope)
            if job.once is not None:
                return None  # not run: keep the stored state as it is
        if job.envelope.ignore_result:
            return None
        job.started_at = time.time()
        return self.records.record(job.envelope, states.STARTED, None, started_at=job.started_at)

    def revoked_outcome(self, envelope: Envelope, delivery: Delivery | None) -> Outcome:
        """The outcome of a message whose task was revoked before it started: not run."""
        logger.info("%s[%s] revoked: not run", envelope.task, envelope.id)
        return Outcome(
            delivery,
            Action.ACK,
            [self.records.final(envelope, states.REVOKED, None)],
            followups=self._then(envelope, states.REVOKED, None),
            state=states.REVOKED,
            envelope=envelope,
        )

    # -- running -------------------------------------------------------------------------
    def run(self, job: Job) -> Outcome:
        """Run a sync task in this thread (async tasks: :meth:`arun`)."""
        if job.once is not None:
            return self._not_again(job)
        token = _current_request.set(job.request)
        started = time.perf_counter()
        try:
            job.task.before_start(job.envelope.id, job.args, job.kwargs)
            retval = job.task.call_with_request(job.args, job.kwargs)
        except Exception as exc:
            return self.finish(job, None, exc, time.perf_counter() - started)
        finally:
            _current_request.reset(token)
        return self.finish(job, retval, None, time.perf_counter() - started)

    async def arun(self, job: Job) -> Outcome:
        """Run an async task on the current event loop."""
        if job.once is not None:
            return self._not_again(job)
        token = _current_request.set(job.request)
        started = time.perf_counter()
        try:
            job.task.before_start(job.envelope.id, job.args, job.kwargs)
            pending = job.task.call_with_request(job.args, job.kwargs)
            retval = await pending if inspect.isawaitable(pending) else pending
        except asyncio.CancelledError as exc:
            reason = exc.args[0] if exc.args and isinstance(exc.args[0], BaseException) else None
            return self.finish(
                job, None, reason or TaskRevokedError("cancelled"), time.perf_counter() - started
            )
        except Exception as exc:
            return self.finish(job, None, exc, time.perf_counter() - started)
        finally:
            _current_request.reset(token)
        return self.finish(job, retval, None, time.perf_counter() - started)

    def finish(
        self, job: Job, retval: object, exc: BaseException | None, runtime: float
    ) -> Outcome:
        """Turn a return value or exception into an Outcome (runs task hooks). Every record
        it writes keeps the time the task started."""
        outcome = self._outcome(job, retval, exc, runtime)
        if job.started_at:
            for record in outcome.records:
                if record.started_at is None:
                    record.started_at = job.started_at
        return outcome

    def _outcome(
        self, job: Job, retval: object, exc: BaseException | None, runtime: float
    ) -> Outcome:
        """Turn a return value or exception into an Outcome (runs task hooks)."""
        envelope, task = job.envelope, job.task
        if exc is None:
            try:
                where = f"return value of {task.name}"
                if isinstance(retval, GroupResult | AsyncResult):
                    # Stored as its as_tuple() form (what Celery's JSON serializer stores),
                    # tagged so that AsyncResult.get() gives the handle back.
                    value: JSONValue = {TAG: "result", "v": to_json_value(retval.as_tuple(), where)}
                else:
                    value = to_json_value(retval, where)
            except SerializationError as error:
                exc = error
            else:
                return self._succeeded(job, retval, value, runtime)
        if isinstance(exc, Retry) or (
            task.should_autoretry(exc) and not self._retries_exhausted(job)
        ):
            return self._retried(job, exc, runtime)
        if isinstance(exc, Reject):
            self._log(logging.WARNING, "%s[%s] rejected: %s", job.label, envelope.id, exc)
            return Outcome(
                job.delivery,
                Action.DEAD,
                [self.records.failure(envelope, exc, format_traceback(exc))],
                reason=DeadLetterReason.REJECTED,
                detail=str(exc),
                followups=self._then(envelope, states.FAILURE, exception_info(exc)),
                state=states.FAILURE,
                error=exc,
            )
        if isinstance(exc, TaskRevokedError):
            self._log(logging.INFO, "%s[%s] terminated (revoked)", job.label, envelope.id)
            return Outcome(
                job.delivery,
                Action.ACK,
                [self.records.final(envelope, states.REVOKED, None)],
                followups=self._then(envelope, states.REVOKED, None),
                state=states.REVOKED,
            )
        return self._failed(job, exc, runtime)

    def _then(self, envelope: Envelope, state: str, info: object) -> list[Callable[[], None]]:
        """Canvas follow-ups of a finished task (callbacks, errbacks, chord join); none for
        a task that is not part of a workflow, so its outcome can be settled in one step."""
        if not _has_followups(envelope):
            return []
        return [lambda: on_task_finished(self.app, envelope, state, info)]

    def _not_again(self, job: Job) -> Outcome:
        """A canvas follow-up delivered again: if it finished, only re-send its follow-ups
        (a crash may have stopped them); if another delivery runs it, look again later."""
        assert job.delivery is not None
        if isinstance(job.once, ResultRecord):
            record = job.once
            self._log(
                logging.INFO, "%s[%s] already done: not run again", job.label, job.envelope.id
            )
            followups = self._then(job.envelope, record.state, record.result)
            return Outcome(
                job.delivery, Action.ACK, followups=followups, state=record.state, skipped=True
            )
        delay = float(job.once or 0.0)
        message = Message(
            job.envelope.id, job.envelope.queue, job.delivery.body, job.envelope.priority, delay
        )
        return Outcome(
            job.delivery, Action.RETRY, retry_message=message, state=states.RETRY, skipped=True
        )

    def _retries_exhausted(self, job: Job) -> bool:
        limit = job.task.autoretry_max_retries
        return limit is not None and job.envelope.retries >= limit

    def _succeeded(self, job: Job, retval: object, value: object, runtime: float) -> Outcome:
        envelope, task = job.envelope, job.task
        self._hook(task.on_success, retval, envelope.id, job.args, job.kwargs)
        self._hook(
            task.after_return, states.SUCCESS, retval, envelope.id, job.args, job.kwargs, None
        )
        records = []
        if not envelope.ignore_result:
            records.append(
                self.records.final(envelope, states.SUCCESS, value, children=job.request.children)
            )
        followups = self._then(envelope, states.SUCCESS, value)
        return Outcome(
            job.delivery,
            Action.ACK,
            records,
            followups=followups,
            state=states.SUCCESS,
            runtime=runtime,
            retval=retval,
        )

    def _retried(self, job: Job, exc: BaseException, runtime: float) -> Outcome:
        envelope, task = job.envelope, job.task
        if isinstance(exc, Retry):
            when, cause = exc.when, exc.exc or exc
        else:
            when, cause = task.autoretry_delay(envelope.retries), exc
        einfo = format_traceback(cause)
        self._hook(task.on_retry, cause, envelope.id, job.args, job.kwargs, einfo)
        retry_envelope = replace(envelope, retries=envelope.retries + 1, eta=time.time() + when)
        body = encode_envelope(retry_envelope, signer=self.signer)
        message = Message(envelope.id, envelope.queue, body, envelope.priority, countdown=when)
        records = []
        if not envelope.ignore_result:
            records.append(
                self.records.record(envelope, states.RETRY, exception_info(cause), traceback=einfo)
            )
        self._log(
            logging.INFO,
            "%s[%s] retry %d in %.3gs: %r",
            job.label,
            envelope.id,
            envelope.retries + 1,
            when,
            cause,
        )
        return Outcome(
            job.delivery,
            Action.RETRY,
            records,
            retry_message=message,
            state=states.RETRY,
            error=cause,
            runtime=runtime,
        )

    def _failed(self, job: Job, exc: BaseException, runtime: float) -> Outcome:
        envelope, task = job.envelope, job.task
        einfo = format_traceback(exc)
        self._hook(task.on_failure, exc, envelope.id, job.args, job.kwargs, einfo)
        self._hook(task.after_return, states.FAILURE, exc, envelope.id, job.args, job.kwargs, einfo)
        record = self.records.failure(envelope, exc, einfo)
        followups = self._then(envelope, states.FAILURE, record.result)
        return Outcome(
            job.delivery,
            Action.ACK,
            [record],
            followups=followups,
            state=states.FAILURE,
            error=exc,
            runtime=runtime,
        )

    # -- helpers -------------------------------------------------------------------------
    def _dead_lettered(
        self,
        envelope: Envelope,
        delivery: Delivery | None,
        reason: str,
        detail: str,
        level: int = logging.WARNING,
    ) -> None:
        if delivery is None:  # eager: the caller's own call, one at a time
            logger.log(level, "dead-lettered message %s (%s): %s", envelope.id, reason, detail)
        else:
            self.dead_letters.dead_lettered(envelope.id, delivery.queue, reason, detail, level)

    def _hook(self, hook: Callable[..., object], *args: object) -> None:
        try:
            hook(*args)
        except Exception:
            logger.exception("task hook %s raised", getattr(hook, "__qualname__", hook))

    def _log(self, level: int, msg: str, *args: object) -> None:
        if self.log_tasks and logger.isEnabledFor(level):
            logger.log(level, msg, *args)


def _followups_problem(app: Conveyor, envelope: Envelope) -> str | None:
    """Why the callbacks or errbacks of ``envelope`` could not be sent, or None (checked
    before the task runs: afterwards its follow-ups would fail on every redelivery)."""
    for kind, sigs in (("callback", envelope.callbacks), ("errback", envelope.errbacks)):
        for index, data in enumerate(sigs):
            problem = signature_problem(data, app)
            if problem is not None:
                return f"bad {kind} {index}: {problem}"
    return None


def _has_followups(envelope: Envelope) -> bool:
    """Whether :func:`conveyor.canvas.on_task_finished` has anything to do for ``envelope``
    (the same test it makes first)."""
    return bool(
        envelope.callbacks
        or envelope.errbacks
        or envelope.chord
        or BATCH_HEADER in envelope.headers
    )
