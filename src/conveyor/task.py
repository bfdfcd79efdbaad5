"""Tasks: the ``Task`` class, ``shared_task``, the request context and the retry policy."""

from __future__ import annotations

import asyncio
import inspect
import random
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, cast, overload

from . import _state, states
from ._state import current_request as current_request
from .canvas import Signature, chunks, xmap, xstarmap
from .exceptions import ConfigurationError, MaxRetriesExceededError, Retry
from .limits import options as limit_options
from .limits.options import KeyFunction
from .limits.rates import parse_rate
from .message import to_json_value
from .request import Request as Request
from .result import AsyncResult
from .results.base import ResultRecord
from .transactional import send_on
from .unique.spec import check_task_options

if TYPE_CHECKING:
    from .app import Conveyor

P = ParamSpec("P")
R = TypeVar("R", covariant=True)


#: Where the worker sets the running task's request (see :func:`current_request`).
_current_request = _state.request_var


def retry_delay(
    retries: int,
    *,
    backoff: bool | float,
    backoff_max: float,
    jitter: bool,
    default_delay: float,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait before retry number ``retries + 1`` (``retries`` done so far).

    Without backoff: ``default_delay``. With backoff: ``base * 2**retries`` capped at
    ``backoff_max`` (base is 1 s for ``True``, else the given number), and with jitter a
    uniformly random value in ``[0, that]`` ("full jitter"), so a fleet of failing tasks
    does not retry in lockstep.
    """
    if backoff is False or backoff is None:
        return float(default_delay)
    base = 1.0 if backoff is True else float(backoff)
    delay = min(base * (2**retries), backoff_max)
    if jitter:
        delay = rng.uniform(0, delay) if rng is not None else random.uniform(0, delay)
    return max(0.0, float(delay))


def rate_per_second(rate_limit: str) -> float:
    """Parse Celery's ``rate_limit`` ("10/s", "100/m", "1000/h", or a number per second)."""
    try:
        return parse_rate(rate_limit).per_second
    except ConfigurationError as exc:
        raise ValueError(str(exc)) from None


class Task(Generic[P, R]):
    """A function registered with an app. Call it to run inline; ``delay()`` to queue it.

    Subclass it to add hooks (``before_start``, ``on_success``, ``on_failure``, ``on_retry``,
    ``after_return``) and pass the subclass as ``base=`` to ``@app.task``.
    """

    name: str = ""
    bind: bool = False
    max_retries: int | None = 3
    default_retry_delay: float = 180.0
    autoretry_for: tuple[type[BaseException], ...] = ()
    dont_autoretry_for: tuple[type[BaseException], ...] = ()
    retry_backoff: bool | float = False
    retry_backoff_max: float = 600.0
    retry_jitter: bool = True
    acks_late: bool | None = None
    ignore_result: bool | None = None
    time_limit: float | None = None
    soft_time_limit: float | None = None
    queue: str | None = None
    priority: int | None = None
    expires: float | datetime | None = None
    rate_limit: str | None = None
    unique_for: float | None = None  # unique tasks: conveyor.unique, docs/flow-control.md
    unique_mode: str = "until_finished"
    unique_key: Callable[..., str] | None = None
    #: Flow control (conveyor.limits): per-key rate limits, cluster-wide concurrency.
    rate_limit_key: KeyFunction | None = None
    concurrency_limit: int | None = None
    concurrency_key: KeyFunction | None = None
    throws: tuple[type[BaseException], ...] = ()
    typing: bool = True

    _OPTIONS = frozenset(
        {
            "name",
            "bind",
            "max_retries",
            "default_retry_delay",
            "autoretry_for",
            "dont_autoretry_for",
            "retry_backoff",
            "retry_backoff_max",
            "retry_jitter",
            "acks_late",
            "ignore_result",
            "time_limit",
            "soft_time_limit",
            "queue",
            "priority",
            "expires",
            "rate_limit",
            "unique_for",
            "unique_mode",
            "unique_key",
            "throws",
            "typing",
            "retry_kwargs",
            *limit_options.TASK_OPTIONS,
        }
    )

    def __init__(
        self, fn: Callable[..., object], app: Conveyor | None = None, **options: object
    ) -> None:
        unknown = set(options) - self._OPTIONS
        if unknown:
            raise ConfigurationError(f"unknown task option(s): {', '.join(sorted(unknown))}")
        self.retry_kwargs = _retry_kwargs(options.pop("retry_kwargs", None))
        for key, value in options.items():
            setattr(self, key, value)
        if self.priority is not None and not 0 <= self.priority <= 9:
            raise ConfigurationError(f"priority must be 0-9, got {self.priority}")
        check_task_options(self.unique_for, self.unique_mode, self.unique_key, fn.__name__)
        self.fn = fn
        name = options.get("name")
        self.name = name if isinstance(name, str) and name else default_name(fn, app)
        limit_options.check_task(self)
        self.is_async = inspect.iscoroutinefunction(fn)
        self.throws = tuple(self.throws)
        self.autoretry_for = tuple(self.autoretry_for)
        self.dont_autoretry_for = tuple(self.dont_autoretry_for)
        self._app = app
        self.__doc__ = fn.__doc__
        self.__name__ = fn.__name__
        self.__module__ = fn.__module__
        self.__qualname__ = fn.__qualname__
        self.__wrapped__ = fn
        self._signature: inspect.Signature | None = None
        #: Call shapes (positional count, keyword names) that bound to ``fn`` (see
        #: :meth:`check_arguments`).
        self._shapes: set[tuple[int, tuple[str, ...]]] = set()

    def __repr__(self) -> str:
        return f"<@task {self.name}>"

    # -- the app -------------------------------------------------------------------------
    @property
    def app(self) -> Conveyor:
        """The app this task belongs to; shared tasks bind to the default app at first use."""
        if self._app is None:
            self._app = _state.default_app()
            self._app.register(self)
        return self._app

    def bind_app(self, app: Conveyor) -> None:
        self._app = app

    # -- running -------------------------------------------------------------------------
    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the function inline (no broker, no result)."""
        # The function returns R (an async one: a coroutine that returns R).
        if self.bind:
            return cast(R, self.fn(self, *args, **kwargs))
        return cast(R, self.fn(*args, **kwargs))

    def run(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self(*args, **kwargs)

    @property
    def request(self) -> Request:
        """The current request (inside a running task); a blank one otherwise."""
        request = _current_request.get()
        if request is None or request.task != self.name:
            return request or Request(id="", task=self.name)
        return request

    # -- sending -------------------------------------------------------------------------
    def delay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]:
        """Queue the task with these arguments; returns at once."""
        return self.apply_async(args, kwargs)

    def apply_async(
        self,
        args: Sequence[object] | None = None,
        kwargs: Mapping[str, object] | None = None,
        **options: object,
    ) -> AsyncResult[R]:
        """Queue the task. Options: ``countdown``, ``eta``, ``expires``, ``queue``,
        ``priority``, ``task_id``, ``headers``, ``link``, ``link_error``, ``ignore_result``,
        ``time_limit``, ``soft_time_limit``, ``on_commit``, ``rate_key``, ``concurrency_key``."""
        # The result of this task's call holds what the task returns (R).
        return cast(AsyncResult[R], self.app.send_call(self.name, args, kwargs, options, task=self))

    async def adelay(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]:
        """``delay()`` for async code (the broker call runs in a worker thread)."""
        return await asyncio.to_thread(self.apply_async, args, kwargs)

    async def aapply_async(
        self,
        args: Sequence[object] | None = None,
        kwargs: Mapping[str, object] | None = None,
        **options: object,
    ) -> AsyncResult[R]:
        """``apply_async()`` for async code; ``connection=`` a psycopg ``AsyncConnection``
        enqueues inside its transaction, on it (see :mod:`conveyor.transactional`)."""
        if options.get("connection") is not None and not self.app.conf.task_always_eager:
            return cast(
                AsyncResult[R], await send_on(self.app, self.name, args, kwargs, options, self)
            )
        return await asyncio.to_thread(lambda: self.apply_async(args, kwargs, **options))

    def delay_on_commit(self, *args: P.args, **kwargs: P.kwargs) -> AsyncResult[R]:
        """Queue the task when the current database transaction commits (Django).

        Unlike Celery, this returns the AsyncResult (its id is known at once)."""
        return self.apply_async(args, kwargs, on_commit=True)

    def apply(
        self,
        args: Sequence[object] | None = None,
        kwargs: Mapping[str, object] | None = None,
        **options: object,
    ) -> AsyncResult[R]:
        """Run the task here and now, through the same path as a worker (results stored)."""
        result = self.app.send_call(self.name, args, kwargs, options, task=self, eager=True)
        return cast(AsyncResult[R], result)  # the result of this task's call holds an R

    def AsyncResult(self, task_id: str) -> AsyncResult[R]:
        return AsyncResult(task_id, self.app, task_name=self.name)

    # -- signatures (see conveyor.canvas) ------------------------------------------------
    def s(self, *args: object, **kwargs: object) -> Signature:
        return Signature(self.name, args, kwargs, app=self._app)

    def si(self, *args: object, **kwargs: object) -> Signature:
        return Signature(self.name, args, kwargs, immutable=True, app=self._app)

    def signature(
        self,
        args: Sequence[object] | None = None,
        kwargs: Mapping[str, object] | None = None,
        **options: object,
    ) -> Signature:
        return Signature(self.name, args or (), kwargs or {}, options=options, app=self._app)

    subtask = signature

    def map(self, it: Iterable[object]) -> xmap:
        """One task calling this task for each item of ``it``; returns a list."""
        return xmap(self.s(), it)

    def starmap(self, it: Iterable[Sequence[object]]) -> xstarmap:
        """One task calling this task with each args tuple of ``it``; returns a list."""
        return xstarmap(self.s(), it)

    def chunks(self, it: Iterable[Sequence[object]], n: int) -> chunks:
        """A group of ``starmap`` tasks over parts of ``n`` args tuples each."""
        return chunks(self.s(), it, n)

    # -- inside a running task -----------------------------------------------------------
    def retry(
        self,
        exc: BaseException | None = None,
        countdown: float | None = None,
        eta: datetime | None = None,
        max_retries: int | None = None,
        throw: bool = True,
        **options: object,
    ) -> Retry:
        """Ask for this task to run again later. Use as ``raise self.retry(exc=exc)``.

        When retries are used up, raises ``exc`` (or MaxRetriesExceededError if none given).
        The delay is ``countdown`` if given, else the task's policy (``retry_backoff``...).
        """
        request = self.request
        if request.is_eager and not request.id:
            raise RuntimeError("retry() can only be called from a running task")
        limit = self.max_retries if max_retries is None else max_retries
        if limit is not None and request.retries >= limit:
            if exc is not None:
                raise exc
            raise MaxRetriesExceededError(
                f"task {self.name}[{request.id}] exceeded max_retries={limit}"
            )
        if eta is not None:
            when = max(0.0, eta.timestamp() - datetime.now(eta.tzinfo).timestamp())
        elif countdown is not None:
            when = float(countdown)
        else:
            when = self.retry_delay(request.retries)
        signal = Retry(f"Retry in {when:.3g}s" + (f": {exc!r}" if exc else ""), exc=exc, when=when)
        if throw:
            raise signal
        return signal

    def retry_delay(self, retries: int) -> float:
        """The policy's delay before retry number ``retries + 1``."""
        return retry_delay(
            retries,
            backoff=self.retry_backoff,
            backoff_max=self.retry_backoff_max,
            jitter=self.retry_jitter,
            default_delay=self.default_retry_delay,
        )

    def update_state(
        self, task_id: str | None = None, state: str | None = None, meta: object = None
    ) -> None:
        """Record a custom state (e.g. ``PROGRESS``) and meta, visible to ``AsyncResult``."""
        request = self.request
        target = task_id or request.id
        if not target:
            raise RuntimeError("update_state() needs a task id outside a running task")
        record = ResultRecord(
            id=target,
            state=state or states.STARTED,
            result=to_json_value(meta, "meta"),
            name=self.name,
            retries=request.retries,
            worker=request.hostname,
            queue=request.queue,
        )
        if target == request.id and request.before_state_update is not None:
            request.before_state_update()
        self.app.results.store([record])

    # -- hooks (override in a base class) ------------------------------------------------
    # Their arguments are typed Any on purpose: an override annotates its own (narrower)
    # types, which a base typed with ``object`` would reject as a Liskov violation.
    def before_start(self, task_id: str, args: Sequence[Any], kwargs: dict[str, Any]) -> None:
        """Called before the task runs."""

    def on_success(
        self, retval: Any, task_id: str, args: Sequence[Any], kwargs: dict[str, Any]
    ) -> None:
        """Called after the task succeeded."""

    def on_failure(
        self,
        exc: BaseException,
        task_id: str,
        args: Sequence[Any],
        kwargs: dict[str, Any],
        einfo: str,
    ) -> None:
        """Called after the task failed for good."""

    def on_retry(
        self,
        exc: BaseException,
        task_id: str,
        args: Sequence[Any],
        kwargs: dict[str, Any],
        einfo: str,
    ) -> None:
        """Called when the task is handed back for a retry."""

    def after_return(
        self,
        status: str,
        retval: Any,
        task_id: str,
        args: Sequence[Any],
        kwargs: dict[str, Any],
        einfo: str | None,
    ) -> None:
        """Called after every run, whatever the outcome."""

    # -- helpers for the worker ----------------------------------------------------------
    def should_autoretry(self, exc: BaseException) -> bool:
        if not self.autoretry_for or isinstance(exc, self.dont_autoretry_for):
            return False
        return isinstance(exc, self.autoretry_for)

    def call_with_request(self, args: Sequence[object], kwargs: Mapping[str, object]) -> object:
        """Run the task body for the worker and eager mode: through ``__call__`` when a
        subclass overrides it (Celery's rule: its override runs once per execution, with
        ``self.request`` set), else the function directly."""
        if type(self).__call__ is not Task.__call__:
            call: Callable[..., object] = self
            return call(*args, **kwargs)
        if self.bind:
            return self.fn(self, *args, **kwargs)
        return self.fn(*args, **kwargs)

    def check_arguments(self, args: Sequence[object], kwargs: Mapping[str, object]) -> None:
        """Raise TypeError if the function cannot take ``args`` / ``kwargs`` (``typing=True``,
        the default, checks every call before it is sent, as Celery does)."""
        if not self.typing:
            return
        # Binding depends on the number of positional arguments and the keyword names only,
        # never on the values: a shape that bound once binds again.
        shape = (len(args), tuple(kwargs) if kwargs else ())
        if shape in self._shapes:
            return
        if self._signature is None:
            try:
                self._signature = inspect.signature(self.fn)
            except (TypeError, ValueError):  # a builtin or C function: nothing to check
                self.typing = False
                return
        bound = (self,) if self.bind else ()
        try:
            self._signature.bind(*bound, *args, **kwargs)
        except TypeError as exc:
            shown = self._signature.replace(
                parameters=[
                    p.replace(annotation=p.empty) for p in self._signature.parameters.values()
                ],
                return_annotation=inspect.Signature.empty,
            )
            raise TypeError(f"{self.name}{shown}: {exc}") from None
        if len(self._shapes) < 64:
            self._shapes.add(shape)

    def shadow_name(
        self, args: Sequence[object], kwargs: Mapping[str, object], options: Mapping[str, object]
    ) -> str | None:
        """The name logs show for this call instead of the task's (Celery's hook; the
        ``shadow=`` call option wins). None: the task's own name."""
        return None

    def autoretry_delay(self, retries: int) -> float:
        """The delay of an automatic retry (``autoretry_for``): the backoff policy when
        ``retry_backoff`` is set, else ``retry_kwargs["countdown"]``, else
        ``default_retry_delay`` (Celery's order)."""
        countdown = self.retry_kwargs.get("countdown")
        no_backoff = self.retry_backoff is False or self.retry_backoff is None
        if no_backoff and countdown is not None:
            return float(countdown)
        return self.retry_delay(retries)

    @property
    def autoretry_max_retries(self) -> int | None:
        """``retry_kwargs["max_retries"]`` if given, else ``max_retries``."""
        if "max_retries" in self.retry_kwargs:
            limit = self.retry_kwargs["max_retries"]
            return None if limit is None else int(limit)
        return self.max_retries


def default_name(fn: Callable[..., object], app: Conveyor | None) -> str:
    """``module.qualname``; a function defined in a script run as ``__main__`` is named
    after the app instead (``app.main``, Celery's rule), as a worker importing the script
    by its module name would name it."""
    module = fn.__module__
    if module == "__main__" and app is not None and app.main:
        module = app.main
    return f"{module}.{fn.__qualname__}"


def _retry_kwargs(value: object) -> dict[str, float | None]:
    """Check Celery's ``retry_kwargs`` task option (the arguments autoretries pass to
    ``retry()``): ``countdown`` and ``max_retries`` are honoured, other keys refused."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"retry_kwargs must be a mapping, got {value!r}")
    checked: dict[str, float | None] = {}
    for key, item in value.items():
        if key not in ("countdown", "max_retries"):
            raise ConfigurationError(
                f"retry_kwargs key {key!r} is not supported: use 'countdown' and 'max_retries' "
                "(or retry_backoff / retry_backoff_max / retry_jitter for a backoff)"
            )
        if key == "max_retries" and item is None:
            checked[key] = None
            continue
        if isinstance(item, bool) or not isinstance(item, int | float) or item < 0:
            raise ConfigurationError(f"retry_kwargs[{key!r}] must be a number >= 0, got {item!r}")
        checked[key] = item
    return checked


# -- decorators ---------------------------------------------------------------------------

_shared_tasks: list[Task[..., object]] = []


def shared_tasks() -> list[Task[..., object]]:
    """Tasks defined with ``@shared_task`` so far (every app registers them)."""
    return list(_shared_tasks)


@overload
def shared_task(fn: Callable[P, Coroutine[Any, Any, R]], /) -> Task[P, R]: ...
@overload
def shared_task(fn: Callable[P, R], /) -> Task[P, R]: ...
@overload
def shared_task(
    *, bind: bool = ..., base: type[Task[Any, Any]] | None = ..., **options: Any
) -> Callable[[Callable[..., Any]], Task[Any, Any]]: ...
def shared_task(fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:
    """Define a task not tied to one app: it binds to the default app at first use.

    Defining or importing it opens no connection.
    """

    def decorate(func: Callable[..., object]) -> Task[..., object]:
        base = _task_class(options.pop("base", None))
        task = base(func, None, **options)
        _shared_tasks.append(task)
        for app in _state.registered_apps():
            app.register(task, shared=True)
        return task

    return decorate(fn) if fn is not None else decorate


def make_task_decorator(
    app: Conveyor, fn: Callable[..., object] | None, options: Mapping[str, object]
) -> Task[..., object] | Callable[[Callable[..., object]], Task[..., object]]:
    def decorate(func: Callable[..., object]) -> Task[..., object]:
        opts = dict(options)
        base = _task_class(opts.pop("base", None))
        task = base(func, app, **opts)
        app.register(task)
        return task

    return decorate(fn) if fn is not None else decorate


def _task_class(base: object) -> type[Task[..., object]]:
    """The ``base=`` option of a task decorator: a Task subclass (default: Task)."""
    if base is None:
        return Task
    if isinstance(base, type) and issubclass(base, Task):
        return base
    raise ConfigurationError(f"base= must be a subclass of conveyor.Task, got {base!r}")
