"""The Conveyor app: configuration, the task registry, and sending tasks."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Coroutine, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

from . import states
from .brokers import create_broker
from .brokers.base import Broker, BrokerOptions, Message, queue_matches, redact_url
from .canvas import Signature, as_signature
from .config import Settings, settings_from
from .exceptions import ConfigurationError, NotRegistered
from .kv import KeyValue
from .message import Envelope, encode_arguments, encode_envelope
from .result import AsyncResult, GroupResult
from .results import create_result_store
from .results.base import ResultRecord, ResultStore
from .settlement import Settlement, open_settlement
from .task import Task, current_request, make_task_decorator, shared_tasks

if TYPE_CHECKING:
    from .worker.consumer import Worker

P = ParamSpec("P")
R = TypeVar("R")
logger = logging.getLogger("conveyor")

_apps: list[weakref.ref[Conveyor]] = []
_default: weakref.ref[Conveyor] | None = None
_apps_lock = threading.Lock()

#: Options accepted by ``apply_async`` / ``send_task``.
CALL_OPTIONS = frozenset(
    {
        "countdown",
        "eta",
        "expires",
        "queue",
        "routing_key",
        "priority",
        "task_id",
        "headers",
        "link",
        "link_error",
        "ignore_result",
        "time_limit",
        "soft_time_limit",
        "retries",
        "parent_id",
        "root_id",
        "group_id",
        "group_index",
        "group_size",
        "chord",
        "acks_late",
        "on_commit",
        "shadow",
        "serializer",
        "exchange",
    }
)


def registered_apps() -> list[Conveyor]:
    """Apps alive in this process, oldest first."""
    with _apps_lock:
        return [app for ref in _apps if (app := ref()) is not None]


def default_app() -> Conveyor:
    """The app shared tasks and bare ``AsyncResult(id)`` use: the last one created
    (or the one given ``set_as_default=True`` most recently)."""
    app = _default() if _default is not None else None
    if app is None:
        raise ConfigurationError(
            "no Conveyor app exists yet: create one with Conveyor('proj') before using "
            "shared tasks or AsyncResult without app="
        )
    return app


class Signal:
    """A minimal signal: ``@app.on_after_configure.connect`` then ``send(sender=app)``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._receivers: list[Callable[..., Any]] = []

    def connect(self, receiver: Callable[..., Any] | None = None, **_: Any) -> Any:
        def register(fn: Callable[..., Any]) -> Callable[..., Any]:
            if fn not in self._receivers:
                self._receivers.append(fn)
            return fn

        return register(receiver) if receiver is not None else register

    def disconnect(self, receiver: Callable[..., Any]) -> None:
        if receiver in self._receivers:
            self._receivers.remove(receiver)

    def send(self, sender: Any, **kwargs: Any) -> None:
        for receiver in list(self._receivers):
            receiver(sender=sender, **kwargs)


#: Alias used in annotations inside Conveyor, whose AsyncResult method shadows the class.
TaskResult = AsyncResult


#: Sent at the end of ``Conveyor.__init__`` (sender: the new app), so integrations such as
#: ``conveyor.contrib.django`` can configure apps created after they loaded.
app_created = Signal("app_created")


class Conveyor:
    """A task queue application.

    ``Conveyor("proj")`` with nothing else uses an embedded SQLite file as broker and result
    store. Pass ``broker="redis://..."`` (and optionally ``result_backend=``) or any setting
    as a keyword, or configure later through ``app.conf`` / ``config_from_object``.
    """

    def __init__(
        self,
        main: str | None = None,
        broker: str | None = None,
        result_backend: str | None = None,
        *,
        include: Sequence[str] | None = None,
        set_as_default: bool = True,
        **settings: Any,
    ) -> None:
        global _default
        self.main = main
        self.conf = Settings(**settings)
        if broker is not None:
            self.conf.broker_url = broker
        if result_backend is not None:
            self.conf.result_backend = result_backend
        if include:
            self.conf.include = list(include)
        self.tasks: dict[str, Task[Any, Any]] = {}
        self.on_after_configure = Signal("on_after_configure")
        self.on_after_finalize = Signal("on_after_finalize")
        #: Set by conveyor.contrib.django: defers a callable until the transaction commits
        #: and tells whether a transaction is open.
        self.commit_hook: Callable[[Callable[[], None]], None] | None = None
        self.in_transaction: Callable[[], bool] = lambda: False
        #: Set by integrations whose schedules live elsewhere (conveyor.contrib.django keeps
        #: them in the database): ``runner(app, stop=None, *, name=None, max_interval=5.0)``.
        #: None means :func:`conveyor.beat.scheduler.run_beat`.
        self.beat_runner: Callable[..., None] | None = None
        self._broker: Broker | None = None
        self._results: ResultStore | None = None
        self._settlement: Settlement | None = None
        self._lock = threading.RLock()
        self._finalized = False
        self._autodiscover: list[
            tuple[Sequence[str] | Callable[[], Sequence[str]] | None, str]
        ] = []
        for task in shared_tasks():
            self.register(task, shared=True)
        with _apps_lock:
            _apps[:] = [ref for ref in _apps if ref() is not None]
            _apps.append(weakref.ref(self))
            if set_as_default:
                _default = weakref.ref(self)
        app_created.send(sender=self)

    def __repr__(self) -> str:
        return f"<Conveyor {self.main or '__main__'} broker={redact_url(self.broker_url)}>"

    def set_default(self) -> None:
        global _default
        with _apps_lock:
            _default = weakref.ref(self)

    # -- configuration -------------------------------------------------------------------
    def config_from_object(
        self, source: Any, namespace: str | None = None, *, silent: bool = False
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
        url = self.conf.broker_url
        if url:
            return str(url)
        return "sqlite://" if importlib.util.find_spec("conveyor.brokers.sqlite") else "memory://"

    @property
    def result_backend_url(self) -> str:
        return str(self.conf.result_backend or self.broker_url)

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
                    )
        return self._results

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
        """Close broker and result store connections."""
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

    def register(self, task: Task[Any, Any], *, shared: bool = False) -> None:
        if shared and task.name in self.tasks:
            return
        self.tasks[task.name] = task

    def get_task(self, name: str) -> Task[Any, Any]:
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
        self.on_after_configure.send(sender=self)
        self.on_after_finalize.send(sender=self)

    def add_periodic_task(
        self,
        schedule: Any,
        sig: Signature | Task[Any, Any],
        name: str | None = None,
        *,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> str:
        """Add a beat entry (Celery's signature). Returns the entry name."""
        signature_ = as_signature(sig)
        entry_name = name or f"{signature_.task}({', '.join(map(repr, signature_.args))})"
        entry: dict[str, Any] = {
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
    def route(self, name: str, task: Task[Any, Any] | None = None) -> str:
        """The queue for task ``name``: ``task_routes`` (exact name, then globs), the task's
        ``queue`` option, then ``task_default_queue``."""
        routes = self.conf.task_routes
        tables = routes if isinstance(routes, list) else [routes]
        for table in tables:
            if callable(table):
                found = table(name)
                if found:
                    return _queue_of(found)
                continue
            if name in table:
                return _queue_of(table[name])
            for pattern, target in table.items():
                if queue_matches(pattern, name):
                    return _queue_of(target)
        if task is not None and task.queue:
            return task.queue
        return str(self.conf.task_default_queue)

    def send_task(
        self,
        name: str,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        *,
        _task: Task[Any, Any] | None = None,
        _eager: bool = False,
        **options: Any,
    ) -> TaskResult[Any]:
        """Send a task by name (it need not be registered here). Returns its AsyncResult.

        Arguments are encoded now: a value that is not JSON raises SerializationError here,
        and nothing is sent."""
        task = _task or self.tasks.get(name)
        on_commit = options.pop("on_commit", None)
        envelope, message, record = self.prepare(name, args, kwargs, options, task)
        result: TaskResult[Any] = TaskResult(envelope.id, self, task_name=name)
        if _eager or self.conf.task_always_eager:
            from .worker.execution import run_eager

            run_eager(self, envelope, message.body)
            return result
        if on_commit is None and self.conf.task_enqueue_on_commit:
            on_commit = self.in_transaction()
        if on_commit:
            if self.commit_hook is None:
                raise ConfigurationError(
                    "on_commit=True needs a transaction hook: add 'conveyor.contrib.django' "
                    "to INSTALLED_APPS"
                )
            self.commit_hook(lambda: self._publish([message], [record] if record else []))
            return result
        self._publish([message], [record] if record else [])
        return result

    def send_many(self, signatures: Iterable[Signature | Task[Any, Any]]) -> list[TaskResult[Any]]:
        """Send many tasks in one broker round trip (the bulk API).

        Every message is encoded before anything is sent, so one bad argument sends none."""
        messages: list[Message] = []
        records: list[ResultRecord] = []
        results: list[TaskResult[Any]] = []
        for item in signatures:
            sig = as_signature(item, self)
            options = dict(sig.options)
            options.pop("on_commit", None)
            envelope, message, record = self.prepare(
                sig.task, sig.args, sig.kwargs, options, self.tasks.get(sig.task)
            )
            messages.append(message)
            if record is not None:
                records.append(record)
            results.append(TaskResult(envelope.id, self, task_name=sig.task))
        if self.conf.task_always_eager:
            from .worker.execution import run_eager

            for message in messages:
                from .message import decode_envelope

                run_eager(self, decode_envelope(message.body), message.body)
            return results
        if messages:
            self._publish(messages, records)
        return results

    def _publish(self, messages: Sequence[Message], records: Sequence[ResultRecord]) -> None:
        self.settlement.publish(messages, records)

    def prepare(
        self,
        name: str,
        args: Sequence[Any] | None,
        kwargs: dict[str, Any] | None,
        options: dict[str, Any],
        task: Task[Any, Any] | None = None,
    ) -> tuple[Envelope, Message, ResultRecord | None]:
        """Build and encode the envelope for one call (validates everything, sends nothing)."""
        unknown = set(options) - CALL_OPTIONS
        if unknown:
            raise ConfigurationError(f"unknown option(s) for {name}: {', '.join(sorted(unknown))}")
        if isinstance(args, str | bytes) or (args is not None and not isinstance(args, Sequence)):
            raise TypeError(f"args of {name} must be a list or tuple, got {type(args).__name__}")
        tagged_args, tagged_kwargs = encode_arguments(name, args, kwargs)
        conf = self.conf
        now = time.time()
        queue = options.get("queue") or options.get("routing_key") or self.route(name, task)
        priority = _pick(
            options.get("priority"), task.priority if task else None, conf.task_default_priority
        )
        if not isinstance(priority, int) or isinstance(priority, bool) or not 0 <= priority <= 9:
            raise ConfigurationError(f"priority must be an integer 0-9 (9 first), got {priority!r}")
        countdown = float(options.get("countdown") or 0.0)
        eta = _timestamp(options.get("eta"), "eta")
        if eta is None and countdown > 0:
            eta_info: float | None = now + countdown
        else:
            eta_info = eta
        expires_opt = options.get("expires", task.expires if task else None)
        expires = _expires_at(expires_opt, now)
        parent = current_request()
        task_id = str(options.get("task_id") or uuid.uuid4())
        parent_id = options.get("parent_id") or (parent.id if parent else None)
        root_id = (
            options.get("root_id") or (parent.root_id or parent.id if parent else None) or task_id
        )
        ignore_result = bool(
            _pick(
                options.get("ignore_result"),
                task.ignore_result if task else None,
                conf.task_ignore_result,
            )
        )
        acks_late = bool(
            _pick(options.get("acks_late"), task.acks_late if task else None, conf.task_acks_late)
        )
        headers = dict(options.get("headers") or {})
        envelope = Envelope(
            id=task_id,
            task=name,
            args=tagged_args,
            kwargs=tagged_kwargs,
            queue=queue,
            priority=priority,
            eta=eta_info,
            expires=expires,
            retries=int(options.get("retries") or 0),
            root_id=root_id,
            parent_id=parent_id,
            group_id=options.get("group_id"),
            group_index=options.get("group_index"),
            group_size=options.get("group_size"),
            chord=options.get("chord"),
            callbacks=[as_signature(s, self).to_dict() for s in _listify(options.get("link"))],
            errbacks=[as_signature(s, self).to_dict() for s in _listify(options.get("link_error"))],
            headers=_tagged_headers(name, headers),
            time_limit=_pick(
                options.get("time_limit"), task.time_limit if task else None, conf.task_time_limit
            ),
            soft_time_limit=_pick(
                options.get("soft_time_limit"),
                task.soft_time_limit if task else None,
                conf.task_soft_time_limit,
            ),
            ignore_result=ignore_result,
            acks_late=acks_late,
            created_at=now,
        )
        body = encode_envelope(envelope, conf.message_max_bytes)
        message = Message(envelope.id, queue, body, priority, countdown, eta)
        if parent is not None:
            parent.children.append(task_id)
        record = None
        if not ignore_result:
            record = ResultRecord(
                id=task_id,
                state=states.QUEUED,
                name=name,
                queue=queue,
                created_at=now,
                parent_id=parent_id,
                root_id=root_id,
                group_id=envelope.group_id,
                periodic_entry=headers.get("periodic_entry"),
            )
            if conf.result_extended:
                record.args = tagged_args
                record.kwargs = tagged_kwargs
        return envelope, message, record

    def signature(
        self,
        name: str,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> Signature:
        """A signature for task ``name`` (it need not be registered here)."""
        return Signature(name, args or (), kwargs or {}, options=options, app=self)

    # -- results and control -------------------------------------------------------------
    def AsyncResult(self, task_id: str, task_name: str | None = None) -> TaskResult[Any]:
        return TaskResult(task_id, self, task_name=task_name)

    def GroupResult(self, group_id: str, results: Sequence[TaskResult[Any]]) -> GroupResult:
        return GroupResult(group_id, results, self)

    def revoke(self, task_ids: str | Sequence[str], *, terminate: bool = False) -> None:
        """Revoke tasks: stored in the broker (survives restarts, reaches offline workers).
        A revoked task never starts; ``terminate=True`` also stops it if running."""
        ids = [task_ids] if isinstance(task_ids, str) else list(task_ids)
        ttl = float(self.conf.revoke_expires)
        self.broker.revoke(ids, ttl)
        if terminate:
            self.broker.revoke([f"terminate:{i}" for i in ids], ttl)

    def run_beat(self, stop: threading.Event | None = None, **options: Any) -> None:
        """Run beat until ``stop`` is set (with the integration's runner if one is set)."""
        if self.beat_runner is not None:
            self.beat_runner(self, stop, **options)
            return
        from .beat.scheduler import run_beat

        run_beat(self, stop, **options)

    def Worker(self, **options: Any) -> Worker:
        """An in-process worker (threads + an event loop); see ``conveyor.worker.consumer``."""
        from .worker.consumer import Worker

        return Worker(self, **options)


def _pick(*values: Any) -> Any:
    for value in values:
        if value is not None:
            return value
    return None


def _listify(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def _queue_of(target: Any) -> str:
    if isinstance(target, str):
        return target
    if isinstance(target, dict) and isinstance(target.get("queue"), str):
        return str(target["queue"])
    raise ConfigurationError(f"a route must name a queue or be {{'queue': name}}, got {target!r}")


def _timestamp(value: Any, what: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)  # naive datetimes are taken as UTC
        return float(value.timestamp())
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise ConfigurationError(f"{what} must be a datetime, got {value!r}")


def _expires_at(value: Any, now: float) -> float | None:
    if value is None:
        return None
    if isinstance(value, timedelta):
        return now + value.total_seconds()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return now + float(value)
    return _timestamp(value, "expires")


def _tagged_headers(name: str, headers: dict[str, Any]) -> dict[str, Any]:
    from .message import to_json_value

    return {str(k): to_json_value(v, f"header {k!r} of {name}") for k, v in headers.items()}


def _django_app_modules() -> list[str]:
    try:
        from django.apps import apps
    except ImportError:
        raise ConfigurationError(
            "autodiscover_tasks() without packages needs Django; pass the package names"
        ) from None
    return [config.name for config in apps.get_app_configs()]
