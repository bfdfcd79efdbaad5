"""Celery's signals, with Celery's names and arguments, built on the middleware.

::

    from conveyor.signals import task_success

    @task_success.connect
    def count(sender, result, **kwargs):   # sender: the task
        ...

Signals are process-global; every app carries one :class:`SignalsMiddleware` that turns its
hooks into signals. A hook of that middleware is in the app's (and its workers')
:class:`~conveyor.middleware.Hooks` only while a receiver is connected to a signal it feeds,
so signals nobody listens to cost nothing: connecting the first receiver of a signal (or
disconnecting the last) rebuilds every live ``Hooks`` (:func:`conveyor.middleware.
refresh_hooks`).

A receiver that raises is logged (``conveyor.signals``) and the next one still runs; the
message is settled as if nothing had happened. Signals not fed by a hook
(``setup_logging``, ``beat_init``, ...) are sent by the code they describe. See
``docs/signals.md`` for each signal's arguments and the differences from Celery.
"""

from __future__ import annotations

import logging
import os
import threading
import traceback as traceback_module
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, overload

import msgspec

from . import states
from .brokers.base import DeadLetterReason
from .exceptions import MalformedMessage, Reject
from .message import decode_arguments
from .middleware import Middleware, WorkerInfo, refresh_hooks
from .request import Request

if TYPE_CHECKING:
    from .app import Conveyor
    from .message import Envelope
    from .task import Task
    from .worker.job import Job, Outcome

__all__ = [
    "ExceptionInfo",
    "Signal",
    "SignalsMiddleware",
    "after_setup_logger",
    "after_setup_task_logger",
    "after_task_publish",
    "beat_init",
    "before_task_publish",
    "setup_logging",
    "task_failure",
    "task_postrun",
    "task_prerun",
    "task_received",
    "task_rejected",
    "task_retry",
    "task_revoked",
    "task_success",
    "task_unknown",
    "worker_init",
    "worker_process_init",
    "worker_process_shutdown",
    "worker_ready",
    "worker_shutdown",
]

logger = logging.getLogger("conveyor.signals")

#: Conveyor has no exchanges: publish signals get this as ``exchange``.
NO_EXCHANGE = ""


@dataclass(frozen=True, slots=True)
class _Receiver:
    receiver: Callable[..., object]
    #: dispatch_uid, or the receiver itself: what makes a connection a duplicate
    key: object
    #: None (any sender), a string (compared by value) or an object (compared by identity)
    sender: object

    def accepts(self, sender: object) -> bool:
        wanted = self.sender
        if wanted is None or wanted is sender:
            return True
        return isinstance(wanted, str) and isinstance(sender, str) and wanted == sender


class Signal:
    """A signal: ``@signal.connect`` (or ``signal.connect(fn, sender=...)``), then
    ``signal.send(sender, **arguments)`` calls every receiver connected for any sender or
    for this one (strings compare by value, other senders by identity, as in Celery).

    Receivers are called as ``receiver(signal=signal, sender=sender, **arguments)``; one
    that raises is logged and the others still run. Receivers are held strongly: ``weak=``
    is accepted for Celery's sake and ignored. ``dispatch_uid`` makes a second connection
    with the same uid (and sender) a no-op, like connecting the same function twice.
    """

    def __init__(self, name: str = "", *, providing_args: object = None) -> None:
        self.name = name
        self._receivers: tuple[_Receiver, ...] = ()
        self._lock = threading.Lock()
        #: Called when the signal gets its first receiver or loses its last one.
        self.on_change: Callable[[], None] | None = None

    def __repr__(self) -> str:
        return f"<Signal {self.name or '?'}: {len(self._receivers)} receiver(s)>"

    @property
    def receivers(self) -> list[Callable[..., object]]:
        """The connected receivers, in connection order."""
        return [r.receiver for r in self._receivers]

    def has_receivers(self) -> bool:
        return bool(self._receivers)

    @overload
    def connect[F: Callable[..., object]](
        self,
        receiver: F,
        *,
        sender: object = None,
        weak: bool = True,
        dispatch_uid: object = None,
    ) -> F: ...
    @overload
    def connect[F: Callable[..., object]](
        self,
        receiver: None = None,
        *,
        sender: object = None,
        weak: bool = True,
        dispatch_uid: object = None,
    ) -> Callable[[F], F]: ...
    def connect[F: Callable[..., object]](
        self,
        receiver: F | None = None,
        *,
        sender: object = None,
        weak: bool = True,
        dispatch_uid: object = None,
    ) -> F | Callable[[F], F]:
        """Connect ``receiver`` (bare, or as ``@signal.connect`` / ``@signal.connect(sender=
        ...)``); returns it. Only calls from ``sender`` reach it when one is given."""

        def register(fn: F) -> F:
            key = fn if dispatch_uid is None else ("uid", dispatch_uid)
            entry = _Receiver(fn, key, sender)
            with self._lock:
                if any(r.key == key and r.sender is sender for r in self._receivers):
                    return fn
                first = not self._receivers
                self._receivers = (*self._receivers, entry)
            if first:
                self._changed()
            return fn

        return register(receiver) if receiver is not None else register

    def disconnect(
        self,
        receiver: Callable[..., object] | None = None,
        *,
        sender: object = None,
        weak: bool = True,
        dispatch_uid: object = None,
    ) -> bool:
        """Disconnect a receiver (by function or by ``dispatch_uid``, and sender); returns
        whether one was connected."""
        key = receiver if dispatch_uid is None else ("uid", dispatch_uid)
        with self._lock:
            kept = tuple(r for r in self._receivers if not (r.key == key and r.sender is sender))
            removed = len(kept) != len(self._receivers)
            self._receivers = kept
        if removed and not kept:
            self._changed()
        return removed

    def send(self, sender: object, **named: object) -> list[tuple[Callable[..., object], object]]:
        """Call the receivers for ``sender``; returns ``(receiver, response)`` pairs, the
        response of a receiver that raised being its exception (which is logged)."""
        receivers = self._receivers
        if not receivers:
            return []
        responses: list[tuple[Callable[..., object], object]] = []
        for entry in receivers:
            if not entry.accepts(sender):
                continue
            try:
                response = entry.receiver(signal=self, sender=sender, **named)
            except Exception as exc:
                logger.exception(
                    "receiver %s of signal %s raised (ignored)",
                    getattr(entry.receiver, "__qualname__", None) or repr(entry.receiver),
                    self.name,
                )
                response = exc
            responses.append((entry.receiver, response))
        return responses

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()


# -- the signals ------------------------------------------------------------------------------
# Publishing (sender: the task name)
before_task_publish = Signal("before_task_publish")
after_task_publish = Signal("after_task_publish")
# Running tasks (sender: the task, but task_received/task_unknown/task_rejected: the app)
task_received = Signal("task_received")
task_prerun = Signal("task_prerun")
task_postrun = Signal("task_postrun")
task_success = Signal("task_success")
task_failure = Signal("task_failure")
task_retry = Signal("task_retry")
task_revoked = Signal("task_revoked")
task_unknown = Signal("task_unknown")
task_rejected = Signal("task_rejected")
# Workers (sender: the worker)
worker_init = Signal("worker_init")
worker_ready = Signal("worker_ready")
worker_shutdown = Signal("worker_shutdown")
worker_process_init = Signal("worker_process_init")
worker_process_shutdown = Signal("worker_process_shutdown")
# Beat and logging (sent by conveyor.beat.scheduler and conveyor.loading)
beat_init = Signal("beat_init")
setup_logging = Signal("setup_logging")
after_setup_logger = Signal("after_setup_logger")
after_setup_task_logger = Signal("after_setup_task_logger")

#: The signals each middleware hook feeds: a hook of :class:`SignalsMiddleware` is called
#: only while one of its signals has a receiver.
HOOK_SIGNALS: dict[str, tuple[Signal, ...]] = {
    "before_publish": (before_task_publish,),
    "after_publish": (after_task_publish,),
    "worker_start": (worker_init, worker_ready),
    "worker_stop": (worker_shutdown,),
    "child_start": (worker_process_init,),
    "child_stop": (worker_process_shutdown,),
    "before_process": (task_received, task_prerun),
    "after_process": (task_postrun, task_success, task_failure),
    "on_retry": (task_retry,),
    "on_dead_letter": (task_unknown, task_rejected, task_revoked),
    "on_revoked": (task_revoked,),
}

for _signals in HOOK_SIGNALS.values():
    for _signal in _signals:
        _signal.on_change = refresh_hooks


class ExceptionInfo:
    """What Celery's ``einfo`` offers: ``exception``, ``type``, ``tb`` and ``traceback``
    (the formatted text, made when first read)."""

    __slots__ = ("_text", "exception", "tb", "type")

    def __init__(self, exception: BaseException) -> None:
        self.exception = exception
        self.type: type[BaseException] = type(exception)
        self.tb: TracebackType | None = exception.__traceback__
        self._text: str | None = None

    @property
    def traceback(self) -> str:
        if self._text is None:
            self._text = "".join(traceback_module.format_exception(self.exception))
        return self._text

    def __str__(self) -> str:
        return self.traceback

    def __repr__(self) -> str:
        return f"<ExceptionInfo: {self.exception!r}>"


class SignalsMiddleware(Middleware):
    """Sends the signals of one app's hooks (every app has one, first in its middleware).

    Its hooks are called only while a signal they feed has a receiver (:meth:`uses_hook`).
    """

    def __init__(self, app: Conveyor) -> None:
        self._app = weakref.ref(app)

    def uses_hook(self, hook: str) -> bool:
        return any(signal._receivers for signal in HOOK_SIGNALS.get(hook, ()))

    def _task(self, name: str) -> Task[..., object] | str:
        app = self._app()
        task = app.tasks.get(name) if app is not None else None
        return task if task is not None else name

    # -- publishing -----------------------------------------------------------------------
    def before_publish(self, app: Conveyor, envelope: Envelope) -> None:
        before_task_publish.send(
            sender=envelope.task,
            body=_body(envelope),
            exchange=NO_EXCHANGE,
            routing_key=envelope.queue,
            headers=envelope.headers,
            properties=_properties(envelope),
            declare=[],
            retry_policy=None,
        )

    def after_publish(self, app: Conveyor, envelope: Envelope) -> None:
        after_task_publish.send(
            sender=envelope.task,
            body=_body(envelope),
            exchange=NO_EXCHANGE,
            routing_key=envelope.queue,
            headers=envelope.headers,
        )

    # -- workers --------------------------------------------------------------------------
    def worker_start(self, worker: WorkerInfo) -> None:
        worker_init.send(sender=worker)
        worker_ready.send(sender=worker)

    def worker_stop(self, worker: WorkerInfo) -> None:
        worker_shutdown.send(sender=worker)

    def child_start(self, worker: WorkerInfo) -> None:
        worker_process_init.send(sender=worker)

    def child_stop(self, worker: WorkerInfo) -> None:
        exitcode = getattr(worker, "exit_code", 0)
        worker_process_shutdown.send(sender=worker, pid=os.getpid(), exitcode=exitcode)

    # -- tasks ----------------------------------------------------------------------------
    def before_process(self, job: Job) -> None:
        if task_received._receivers:
            task_received.send(sender=self._app(), request=job.request)
        if task_prerun._receivers:
            task_prerun.send(
                sender=job.task,
                task_id=job.envelope.id,
                task=job.task,
                args=job.args,
                kwargs=job.kwargs,
            )

    def after_process(self, job: Job, outcome: Outcome) -> None:
        task, state = job.task, outcome.state
        if state == states.SUCCESS:
            task_success.send(sender=task, result=outcome.retval)
        elif (
            state == states.FAILURE
            and task_failure._receivers
            and outcome.error is not None
            and not isinstance(outcome.error, Reject)  # Celery sends none for a rejection
        ):
            error = outcome.error
            task_failure.send(
                sender=task,
                task_id=job.envelope.id,
                exception=error,
                args=job.args,
                kwargs=job.kwargs,
                traceback=error.__traceback__,
                einfo=ExceptionInfo(error),
            )
        if task_postrun._receivers:
            task_postrun.send(
                sender=task,
                task_id=job.envelope.id,
                task=task,
                args=job.args,
                kwargs=job.kwargs,
                retval=outcome.retval if state == states.SUCCESS else outcome.error,
                state=state,
            )

    def on_retry(self, job: Job, outcome: Outcome) -> None:
        error = outcome.error
        task_retry.send(
            sender=job.task,
            request=job.request,
            reason=error,
            einfo=ExceptionInfo(error) if error is not None else None,
        )

    def on_revoked(self, envelope: Envelope, outcome: Outcome) -> None:
        # A task revoked before it started has an outcome that names its envelope
        # (TaskRunner.revoked_outcome); one terminated while it ran has not.
        task_revoked.send(
            sender=self._task(envelope.task),
            request=_request(envelope),
            terminated=outcome.envelope is None,
            signum=None,
            expired=False,
        )

    def on_dead_letter(self, envelope: Envelope | None, outcome: Outcome) -> None:
        reason = outcome.reason
        app = self._app()
        if reason == DeadLetterReason.UNKNOWN_TASK and envelope is not None:
            task_unknown.send(
                sender=app,
                name=envelope.task,
                id=envelope.id,
                message=envelope,
                exc=outcome.error,
            )
        elif reason in (DeadLetterReason.UNDECODABLE, DeadLetterReason.MALFORMED):
            task_rejected.send(
                sender=app, message=envelope, exc=MalformedMessage(reason, outcome.detail)
            )
        elif reason == DeadLetterReason.EXPIRED and envelope is not None:
            task_revoked.send(
                sender=self._task(envelope.task),
                request=_request(envelope),
                terminated=False,
                signum=None,
                expired=True,
            )


def _body(envelope: Envelope) -> dict[str, object]:
    """The message as a dict (Celery's task protocol 1 body: ``id``, ``task``, ``args``,
    ``kwargs``, ``eta``, ``retries``, ...); a copy: changing it changes nothing sent."""
    return msgspec.structs.asdict(envelope)


def _properties(envelope: Envelope) -> dict[str, object]:
    return {"correlation_id": envelope.id, "priority": envelope.priority}


def _request(envelope: Envelope) -> Request:
    """A task's request, for a message that did not run (or whose run was cut short)."""
    try:
        args, kwargs = decode_arguments(envelope)
    except (ValueError, TypeError, AttributeError):
        args, kwargs = list(envelope.args), dict(envelope.kwargs)
    return Request.from_envelope(envelope, args, kwargs)
