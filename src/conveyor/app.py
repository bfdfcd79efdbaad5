"""The Conveyor app: configuration, the task registry, and sending tasks."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
import threading
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, Unpack, overload

from . import _state, sending
from ._sqlite import DEFAULT_FILENAME
from ._state import default_app as default_app
from ._state import registered_apps as registered_apps
from .annotations import annotate_task
from .brokers import AMQP_SCHEMES, create_broker, scheme_of
from .brokers.base import Broker, BrokerOptions, Message, redact_url
from .call_settings import Calls, CallSettings
from .canvas import Signature, as_signature, register_builtin_tasks
from .canvas.batch import BatchMiddleware
from .celery_names import constructor_keywords
from .config import Settings, settings_from
from .control import Control
from .events import Events
from .events.middleware import EventsMiddleware
from .exceptions import ConfigurationError, NotRegistered
from .kv import KeyValue
from .message import Envelope
from .middleware import Hooks, Middleware
from .result import AsyncResult, GroupResult
from .results import create_result_store
from .results.base import ResultRecord, ResultStore
from .routing import route
from .settlement import Settlement, open_settlement
from .signals import Signal as Signal
from .signals import SignalsMiddleware
from .task import Task, make_task_decorator, shared_tasks
from .unique.middleware import UniqueMiddleware
from .worker import Worker, WorkerOptions

if TYPE_CHECKING:
    from .beat.scheduler import BeatRunner, BeatRunOptions

P = ParamSpec("P")
R = TypeVar("R")
logger = logging.getLogger("conveyor")


#: Alias used in annotations inside Conveyor, whose AsyncResult method shadows the class.
TaskResult = AsyncResult


#: Sent at the end of ``Conveyor.__init__`` (sender: the new app), so integrations such as
#: ``conveyor.contrib.django`` can configure apps created after they loaded.
app_created = Signal("app_created")


_OWN_DIRECTORY = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _creator_directory() -> str | None:
    """The directory of the innermost calling module outside Conveyor that is a file."""
    frame = sys._getframe(2)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not filename.startswith(("<", _OWN_DIRECTORY)):
            return os.path.dirname(os.path.abspath(filename))
        frame = frame.f_back  # type: ignore[assignment]  # None ends the loop
    return None


class Conveyor:
    """A task queue application.

    ``Conveyor("proj")`` with nothing else uses an embedded SQLite file as broker and result
    store. Pass ``broker="redis://..."`` (and optionally ``result_backend=``, or Celery's
    ``backend=``) or any setting as a keyword, or configure later through ``app.conf`` /
    ``config_from_object``. ``config_source=`` (with ``namespace=``) loads settings first, as
    ``config_from_object`` would; keywords override them. Celery's other constructor keywords
    are refused with the reason (:data:`conveyor.celery_settings.CONSTRUCTOR_KEYWORDS`).
    """

    def __init__(
        self,
        main: str | None = None,
        broker: str | None = None,
        result_backend: str | None = None,
        *,
        backend: str | None = None,
        include: Sequence[str] | None = None,
        config_source: object = None,
        namespace: str | None = None,
        middleware: Iterable[Middleware] = (),
        set_as_default: bool = True,
        **settings: object,
    ) -> None:
        self.main = main
        #: Where a bare ``sqlite://`` URL (the default broker) puts its file: the directory
        #: of the module that created the app, so every process of the project, started
        #: from any directory, finds the same file (the current directory if there is none).
        self.directory = _creator_directory()
        if backend is not None:
            if result_backend is not None:
                raise ConfigurationError("pass result_backend= or Celery's backend=, not both")
            result_backend = backend
        if namespace is not None and config_source is None:
            raise ConfigurationError(
                "Conveyor(namespace=...) applies to config_source= only: pass namespace= to "
                "app.config_from_object(...)"
            )
        self.conf = Settings()
        if config_source is not None:
            self.conf.update(settings_from(config_source, namespace))
        self.conf.update(constructor_keywords(settings))
        if broker is not None:
            self.conf.broker_url = broker
        if result_backend is not None:
            self.conf.result_backend = result_backend
        if include:
            self.conf.include = list(include)
        self.tasks: dict[str, Task[..., object]] = {}
        #: The settings calls read, kept while they stay (see conveyor.call_settings.call_settings).
        self.call_settings: CallSettings | None = None
        #: Read and follow events; the writer of this process (conveyor.events).
        self.events = Events(self)
        #: Inspect and control workers (conveyor.control), as Celery's app.control.
        self.control = Control(self)
        #: The signals middleware first (its hooks are called only while a signal they
        #: feed has a receiver: see conveyor.signals), the events middleware, then the app's.
        self.middleware: list[Middleware] = [
            SignalsMiddleware(self),
            EventsMiddleware(self, self.events.writer),
            UniqueMiddleware(self),
            BatchMiddleware(self),
            *middleware,
        ]
        #: The middleware's hooks, ready to call (rebuilt by :meth:`add_middleware`).
        self.hooks = Hooks(self.middleware)
        self.on_after_configure = Signal("on_after_configure")
        self.on_after_finalize = Signal("on_after_finalize")
        #: Set by conveyor.contrib.django: defers a callable until the transaction commits
        #: and tells whether a transaction is open.
        self.commit_hook: Callable[[Callable[[], None]], None] | None = None
        self.in_transaction: Callable[[], bool] = lambda: False
        #: Set by conveyor.contrib.django: the driver connection of the enclosing atomic
        #: block (None outside one). A task sent inside it is enqueued in that transaction
        #: when the broker lives in the same database (transactional enqueue).
        self.transaction_connection: Callable[[], object | None] = lambda: None
        #: Set by integrations whose schedules live elsewhere (conveyor.contrib.django keeps
        #: them in the database): ``runner(app, stop=None, *, name=None, max_interval=5.0)``.
        #: None means :func:`conveyor.beat.scheduler.run_beat`.
        self.beat_runner: BeatRunner | None = None
        #: Set by integrations that run functions of their own through one generic task
        #: (conveyor.contrib.django: ``django.tasks`` functions): each lists the names of
        #: those functions, for :meth:`task_names`.
        self.task_listers: list[Callable[[], Iterable[str]]] = []
        self._broker: Broker | None = None
        self._results: ResultStore | None = None
        self._settlement: Settlement | None = None
        self._lock = threading.RLock()
        self._finalized = False
        self._autodiscover: list[
            tuple[Sequence[str] | Callable[[], Sequence[str]] | None, str]
        ] = []
        register_builtin_tasks(self)
        for task in shared_tasks():
            self.register(task, shared=True)
        _state.add_app(self, default=set_as_default)
        app_created.send(sender=self)

    def __repr__(self) -> str:
        return f"<Conveyor {self.main or '__main__'} broker={redact_url(self.broker_url)}>"

    def set_default(self) -> None:
        _state.set_default_app(self)

    def add_middleware(self, middleware: Middleware) -> None:
        """Add ``middleware`` after the existing ones. Workers started before this call
        do not see it: add middleware when the app is built."""
        self.middleware.append(middleware)
        self.hooks = Hooks(self.middleware)

    # -- configuration -------------------------------------------------------------------
    def config_from_object(
        self, source: object, namespace: str | None = None, *, silent: bool = False
    ) -> None:
        """Load settings from a module, object, mapping or dotted path (``"proj.settings"``,
        ``"django.conf:settings"``). ``namespace="CONVEYOR"`` reads ``CONVEYOR_BROKER_URL``..."""
        try:
            self.conf.update(settings_from(source, namespace))
        except ConfigurationError:
            if not silent:
                raise

    @property
    def broker_url(self) -> str:
        """The broker's URL; by default an SQLite file (see :attr:`directory`)."""
        url = self.conf.broker_url
        if url:
            return self._located(str(url))
        if importlib.util.find_spec("conveyor.brokers.sqlite"):
            return self._located("sqlite://")
        return "memory://"

    @property
    def result_backend_url(self) -> str:
        url = self.conf.result_backend
        if url:
            return self._located(str(url))
        if scheme_of(self.broker_url) in AMQP_SCHEMES:
            return self._located("sqlite://")  # RabbitMQ stores no results: a local file
        return self.broker_url

    def _located(self, url: str) -> str:
        """``url`` with a bare ``sqlite://`` (no file named) made absolute: the default file
        in :attr:`directory`."""
        head, sep, query = url.partition("?")
        if head not in ("sqlite://", "sqlite:///"):
            return url
        path = os.path.join(self.directory or os.getcwd(), DEFAULT_FILENAME)
        return f"sqlite:///{path}{sep}{query}"

    @property
    def key_prefix(self) -> str:
        return str(self.conf.broker_transport_options.get("key_prefix") or "conveyor")

    @property
    def broker(self) -> Broker:
        """The broker, connected on first use."""
        if self._broker is None:
            with self._lock:
                if self._broker is None:
                    conf = self.conf
                    options = BrokerOptions(
                        lease_timeout=conf.broker_lease_timeout,
                        max_deliveries=conf.task_max_deliveries,
                        key_prefix=self.key_prefix,
                        transport_options=dict(conf.broker_transport_options),
                    )
                    if scheme_of(self.broker_url) in AMQP_SCHEMES:
                        # RabbitMQ keeps no key/value data: the broker's kv is the results'
                        options.transport_options.setdefault("kv_url", self.result_backend_url)
                    self._broker = create_broker(self.broker_url, options)
        return self._broker

    @property
    def results(self) -> ResultStore:
        """The result store, connected on first use (shares the broker's memory store)."""
        if self._results is None:
            with self._lock:
                if self._results is None:
                    self._results = create_result_store(
                        self.result_backend_url,
                        expires=self.conf.result_expires,
                        key_prefix=self.key_prefix,
                        transport_options=self._result_transport_options(),
                    )
        return self._results

    def _result_transport_options(self) -> dict[str, Any]:
        """result_backend_transport_options; a store on the broker's URL (the default) shares
        the broker's, so a Sentinel ``master_name`` is given once."""
        own = dict(self.conf.result_backend_transport_options)
        if self.conf.result_backend is None or self.conf.result_backend == self.broker_url:
            return {**self.conf.broker_transport_options, **own}
        return own

    @property
    def kv(self) -> KeyValue:
        """Small shared state on the broker's server or file: beat claims and progress, the
        worker registry."""
        return self.broker.kv

    @property
    def settlement(self) -> Settlement:
        """Stores records and settles messages for :attr:`broker` and :attr:`results`
        (one round trip where both live on one server)."""
        if self._settlement is None:
            broker, results = self.broker, self.results
            with self._lock:
                if self._settlement is None:
                    self._settlement = open_settlement(broker, results)
        return self._settlement

    def close(self) -> None:
        """Write pending events, then close broker and result store connections (a flusher
        thread left running would open them again)."""
        self.events.writer.close()
        with self._lock:
            self._settlement = None
            if self._broker is not None:
                self._broker.close()
                self._broker = None
            if self._results is not None:
                self._results.close()
                self._results = None

    def __enter__(self) -> Conveyor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- tasks ---------------------------------------------------------------------------
    @overload
    def task(self, fn: Callable[P, Coroutine[Any, Any, R]], /) -> Task[P, R]: ...
    @overload
    def task(self, fn: Callable[P, R], /) -> Task[P, R]: ...
    @overload
    def task(self, /, **options: Any) -> Callable[[Callable[..., Any]], Task[Any, Any]]: ...
    def task(self, fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:
        """Register a function as a task: ``@app.task`` or ``@app.task(bind=True, ...)``."""
        return make_task_decorator(self, fn, options)

    def register(self, task: Task[..., object], *, shared: bool = False) -> None:
        if shared and task.name in self.tasks:
            return
        self.tasks[task.name] = task
        annotate_task(task, self.conf.task_annotations)

    def task_names(self) -> list[str]:
        """The tasks this app runs, sorted, for display (the worker's banner): its
        registered tasks but Conveyor's built-ins, and what integrations list."""
        names = {name for name in self.tasks if not name.startswith("conveyor.")}
        for lister in self.task_listers:
            names.update(lister())
        return sorted(names)

    def get_task(self, name: str) -> Task[..., object]:
        try:
            return self.tasks[name]
        except KeyError:
            raise NotRegistered(name) from None

    def autodiscover_tasks(
        self,
        packages: Sequence[str] | Callable[[], Sequence[str]] | None = None,
        related_name: str = "tasks",
        force: bool = False,
    ) -> None:
        """Import ``<package>.tasks`` for each package when the app is finalized (at once
        with ``force=True``). With no packages, Django's installed apps are used."""
        self._autodiscover.append((packages, related_name))
        if force or self._finalized:
            self._run_autodiscover()

    def _run_autodiscover(self) -> None:
        pending, self._autodiscover = self._autodiscover, []
        for packages, related_name in pending:
            names = packages() if callable(packages) else packages
            if names is None:
                names = _django_app_modules()
            for package in names:
                module = f"{package}.{related_name}"
                try:
                    importlib.import_module(module)
                except ModuleNotFoundError as exc:
                    if exc.name != module:
                        raise

    def finalize(self) -> None:
        """Import configured modules and autodiscovered tasks; fire ``on_after_configure``.
        Workers and beat call this once before they start; calling it again does nothing."""
        with self._lock:
            if self._finalized:
                return
            self._finalized = True
        for module in [*self.conf.imports, *self.conf.include]:
            importlib.import_module(module)
        self._run_autodiscover()
        for task in list(self.tasks.values()):  # annotations set after the tasks were made
            annotate_task(task, self.conf.task_annotations)
        self.on_after_configure.send(sender=self)
        self.on_after_finalize.send(sender=self)

    def add_periodic_task(
        self,
        schedule: object,
        sig: Signature | Task[..., object],
        name: str | None = None,
        *,
        args: Sequence[object] | None = None,
        kwargs: Mapping[str, object] | None = None,
        **options: object,
    ) -> str:
        """Add a beat entry (Celery's signature). Returns the entry name."""
        signature_ = as_signature(sig)
        entry_name = name or f"{signature_.task}({', '.join(map(repr, signature_.args))})"
        entry: dict[str, object] = {
            "task": signature_.task,
            "schedule": schedule,
            "args": tuple(args if args is not None else signature_.args),
            "kwargs": dict(kwargs if kwargs is not None else signature_.kwargs),
            "options": {**signature_.options, **options},
        }
        schedule_dict = dict(self.conf.beat_schedule)
        schedule_dict[entry_name] = entry
        self.conf.beat_schedule = schedule_dict
        return entry_name

    # -- sending -------------------------------------------------------------------------
    def route(self, name: str, task: Task[..., object] | None = None) -> str:
        """The queue for task ``name`` (see :func:`conveyor.routing.route`)."""
        return route(self.conf, name, task)

    def send_task(
        self,
        name: str,
        args: Sequence[object] | None = None,
        kwargs: Mapping[str, object] | None = None,
        **options: object,
    ) -> TaskResult[object]:
        """Send a task by name (it need not be registered here). Returns its AsyncResult.

        Arguments are encoded now: a value that is not JSON raises SerializationError here,
        and nothing is sent."""
        return self.send_call(name, args, kwargs, options)

    def send_call(
        self,
        name: str,
        args: Sequence[object] | None,
        kwargs: Mapping[str, object] | None,
        options: Mapping[str, object],
        *,
        task: Task[..., object] | None = None,
        eager: bool = False,
    ) -> TaskResult[object]:
        """What :meth:`send_task`, ``Task.apply_async`` / ``apply`` and signatures send
        through: call options as a mapping; ``task`` is the registered task if the caller has
        it, ``eager`` runs it here and now (``Task.apply``)."""
        return sending.send_call(self, name, args, kwargs, options, task=task, eager=eager)

    def send_many(
        self, signatures: Iterable[Signature | Task[..., object]]
    ) -> list[TaskResult[object]]:
        """Send many tasks in one broker round trip (the bulk API).

        Every message is encoded before anything is visible, so one bad argument sends none.
        A large batch on PostgreSQL is sent in chunks, inside one transaction, while the
        rest is encoded (see :mod:`conveyor.settlement.stream`); on Redis its chunks are
        written as they are packed, once all are encoded. Like a group's, its tasks
        are not deduplicated (``unique_for``): send unique calls with ``apply_async``.
        A list of 1,000 or more is built with Python's cyclic garbage collector paused
        (:func:`conveyor.calling.collection_paused`)."""
        return sending.send_many(self, signatures)

    def prepare(
        self,
        name: str,
        args: Sequence[object] | None,
        kwargs: Mapping[str, object] | None,
        options: Mapping[str, object],
        task: Task[..., object] | None = None,
    ) -> tuple[Envelope, Message, ResultRecord | None]:
        """Build and encode the envelope for one call (validates everything, sends nothing
        but the publish middleware sees it)."""
        return sending.prepare(self, Calls(self), name, args, kwargs, options, task)

    def signature(
        self,
        name: str,
        args: Sequence[object] | None = None,
        kwargs: Mapping[str, object] | None = None,
        **options: object,
    ) -> Signature:
        """A signature for task ``name`` (it need not be registered here)."""
        return Signature(name, args or (), kwargs or {}, options=options, app=self)

    # -- results and control -------------------------------------------------------------
    def AsyncResult(self, task_id: str, task_name: str | None = None) -> TaskResult[object]:
        return TaskResult(task_id, self, task_name=task_name)

    def GroupResult(self, group_id: str, results: Sequence[TaskResult[object]]) -> GroupResult:
        return GroupResult(group_id, results, self)

    def revoke(self, task_ids: str | Sequence[str], *, terminate: bool = False) -> None:
        """Revoke tasks: stored in the broker (survives restarts, reaches offline workers).
        A revoked task never starts; ``terminate=True`` also stops it if running."""
        ids = [task_ids] if isinstance(task_ids, str) else list(task_ids)
        ttl = float(self.conf.revoke_expires)
        self.broker.revoke(ids, ttl)
        if terminate:
            self.broker.revoke([f"terminate:{i}" for i in ids], ttl)

    def run_beat(
        self, stop: threading.Event | None = None, **options: Unpack[BeatRunOptions]
    ) -> None:
        """Run beat until ``stop`` is set (with the integration's runner if one is set)."""
        if self.beat_runner is not None:
            self.beat_runner(self, stop, **options)
            return
        from .beat.scheduler import run_beat  # beat's code loads only where beat runs

        run_beat(self, stop, **options)

    # -- the command line ------------------------------------------------------------------
    def start(self, argv: Sequence[str] | None = None) -> None:
        """Run the ``conveyor`` command line for this app (Celery's ``app.start()``):
        ``python myapp.py worker -l info`` with ``app.start()`` under ``__main__``.
        ``argv`` defaults to ``sys.argv`` (a leading script name is skipped)."""
        # Deferred: the command line imports this module.
        from .cli import main

        args = list(sys.argv if argv is None else argv)
        if args and (args[0] == sys.argv[0] or args[0].endswith(".py")):
            args = args[1:]
        main(args, app=self)

    def worker_main(self, argv: Sequence[str] | None = None) -> None:
        """Run ``conveyor worker`` for this app (Celery's ``app.worker_main()``):
        ``app.worker_main(["worker", "--loglevel=INFO"])``."""
        args = list(sys.argv if argv is None else argv)
        if "worker" not in args:
            raise ValueError(
                "the worker sub-command must be in argv (e.g. ['worker', '-l', 'info']); "
                "use app.start() for other commands"
            )
        self.start(args)

    def Worker(self, **options: Unpack[WorkerOptions]) -> Worker:
        """An in-process worker (threads + an event loop); see ``conveyor.worker.worker``."""
        return Worker(self, **options)


def _django_app_modules() -> list[str]:
    try:
        from django.apps import apps  # optional dependency: only this Django path needs it
    except ImportError:
        raise ConfigurationError(
            "autodiscover_tasks() without packages needs Django; pass the package names"
        ) from None
    return [config.name for config in apps.get_app_configs()]
