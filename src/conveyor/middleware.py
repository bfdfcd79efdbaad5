"""Middleware: hooks on both sides of the queue.

Subclass :class:`Middleware`, override the hooks you need, and add an instance to the app
(``Conveyor(middleware=[...])`` or ``app.add_middleware(...)``)::

    class Timing(Middleware):
        def before_process(self, job: Job) -> None:
            job.request.headers["started"] = time.perf_counter()

        def after_process(self, job: Job, outcome: Outcome) -> None:
            print(job.task.name, outcome.state, outcome.runtime)

Hooks run in the thread doing the work they describe: publish hooks in the caller's thread,
task hooks in the thread that runs the task, lifecycle hooks where the worker (or one of its
processes) starts and stops. A hook that raises is logged and otherwise ignored: it never
loses a message, never settles one twice and never changes an outcome. Hooks nobody overrides
are not called at all (:class:`Hooks` keeps, per hook, only the middleware that override it
and, through :meth:`Middleware.uses_hook`, want it called now).
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .app import Conveyor
    from .message import Envelope
    from .worker.job import Job, Outcome

logger = logging.getLogger("conveyor.middleware")


class WorkerInfo(Protocol):
    """What lifecycle hooks see of a worker (an in-process worker or one worker process)."""

    @property
    def app(self) -> Conveyor: ...
    @property
    def hostname(self) -> str: ...
    @property
    def queues(self) -> list[str]: ...
    @property
    def concurrency(self) -> int: ...


class Middleware:
    """Base class: every hook does nothing. Override the ones you need."""

    def uses_hook(self, hook: str) -> bool:
        """Whether :class:`Hooks` should call this middleware's ``hook`` (asked only for the
        hooks it overrides; always, by default). A middleware whose answer changes calls
        :func:`refresh_hooks` (the signals middleware: when a signal gets its first receiver
        or loses its last one)."""
        return True

    # -- producing ------------------------------------------------------------------------
    def before_publish(self, app: Conveyor, envelope: Envelope) -> None:
        """A task message is about to be encoded and sent. ``envelope.headers`` may be
        changed here (tracing context, tenant ids); its other fields are the call's."""

    def after_publish(self, app: Conveyor, envelope: Envelope) -> None:
        """The broker accepted the message (for ``on_commit`` sends: after the commit)."""

    # -- worker lifecycle ---------------------------------------------------------------------
    def worker_start(self, worker: WorkerInfo) -> None:
        """A worker started: ``conveyor worker`` (the supervisor, or ``--pool solo``), or an
        in-process worker such as ``conveyor.testing.TestWorker``."""

    def worker_stop(self, worker: WorkerInfo) -> None:
        """A worker finished its shutdown."""

    def child_start(self, worker: WorkerInfo) -> None:
        """A worker process (a child of the supervisor, or the ``--pool solo`` process) is
        about to consume. Open per-process resources here (database connections, clients)."""

    def child_stop(self, worker: WorkerInfo) -> None:
        """A worker process is about to exit."""

    # -- running tasks ------------------------------------------------------------------------
    def before_process(self, job: Job) -> None:
        """A task is about to run, in the thread (or event loop) that runs it."""

    def after_process(self, job: Job, outcome: Outcome) -> None:
        """A task ran (or was interrupted). ``outcome.state`` is SUCCESS, FAILURE, RETRY or
        REVOKED; ``outcome.error`` the exception, if any. Its records are not stored yet."""

    def on_retry(self, job: Job, outcome: Outcome) -> None:
        """A task asked for a retry (``self.retry()``, ``autoretry_for``); ``outcome.
        retry_message`` is the delayed message that will run it again."""

    def on_dead_letter(self, envelope: Envelope | None, outcome: Outcome) -> None:
        """A message goes to the dead-letter queue (``outcome.reason``, ``outcome.detail``):
        undecodable (``envelope`` is None then) or malformed arguments, unknown task,
        expired, rejected, or - called in the supervisor - killed for its hard time limit.
        Called before the message is moved."""

    def on_revoked(self, envelope: Envelope, outcome: Outcome) -> None:
        """A revoked task was not started, or was terminated while it ran."""

    def on_skip(self, envelope: Envelope, outcome: Outcome) -> None:
        """A message was settled without running its task for another reason than the ones
        above: a canvas step delivered again after it finished (or while another delivery
        runs it: put back to look again later), or a delivery put back by its task's
        ``rate_limit``. ``before_process``/``after_process`` are not called for it."""


#: The hooks :class:`Hooks` dispatches, in the order of :class:`Middleware`.
HOOK_NAMES = (
    "before_publish",
    "after_publish",
    "worker_start",
    "worker_stop",
    "child_start",
    "child_stop",
    "before_process",
    "after_process",
    "on_retry",
    "on_dead_letter",
    "on_revoked",
    "on_skip",
)


class Hooks:
    """The app's middleware, ready to call: for each hook a tuple of the bound methods that
    override it (empty when no middleware does, so callers can skip the call entirely).

    Each ``call_*`` method runs the hook of every middleware in order and logs (never
    raises) what a hook raises.
    """

    __slots__ = (*HOOK_NAMES, "_middleware", "__weakref__")

    def __init__(self, middleware: Iterable[Middleware] = ()) -> None:
        self._middleware = tuple(middleware)
        with _live_lock:
            _live.add(self)
            self.refresh()

    def refresh(self) -> None:
        """Recompute the hooks (from the same middleware): see :func:`refresh_hooks`."""
        for name in HOOK_NAMES:
            base = getattr(Middleware, name)
            bound = tuple(
                getattr(m, name)
                for m in self._middleware
                if getattr(type(m), name, base) is not base and m.uses_hook(name)
            )
            setattr(self, name, bound)

    before_publish: tuple[Callable[[Conveyor, Envelope], None], ...]
    after_publish: tuple[Callable[[Conveyor, Envelope], None], ...]
    worker_start: tuple[Callable[[WorkerInfo], None], ...]
    worker_stop: tuple[Callable[[WorkerInfo], None], ...]
    child_start: tuple[Callable[[WorkerInfo], None], ...]
    child_stop: tuple[Callable[[WorkerInfo], None], ...]
    before_process: tuple[Callable[[Job], None], ...]
    after_process: tuple[Callable[[Job, Outcome], None], ...]
    on_retry: tuple[Callable[[Job, Outcome], None], ...]
    on_dead_letter: tuple[Callable[[Envelope | None, Outcome], None], ...]
    on_revoked: tuple[Callable[[Envelope, Outcome], None], ...]
    on_skip: tuple[Callable[[Envelope, Outcome], None], ...]


#: Every Hooks alive in this process, for refresh_hooks().
_live: weakref.WeakSet[Hooks] = weakref.WeakSet()
_live_lock = threading.RLock()


def refresh_hooks() -> None:
    """Recompute every :class:`Hooks` in this process: a middleware's
    :meth:`~Middleware.uses_hook` answers changed. Each hook tuple is replaced in one
    assignment, so callers see the old tuple or the new one."""
    with _live_lock:
        for hooks in list(_live):
            hooks.refresh()


def call_each[*Ts](hooks: tuple[Callable[[*Ts], None], ...], *args: *Ts) -> None:
    """Call every hook in ``hooks`` with ``args``; log what one raises and go on."""
    for hook in hooks:
        try:
            hook(*args)
        except Exception:
            logger.exception("middleware hook %s raised (ignored)", _describe(hook))


def _describe(hook: Callable[..., None]) -> str:
    return getattr(hook, "__qualname__", None) or repr(hook)
