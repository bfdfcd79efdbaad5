"""A ``django.tasks`` backend that runs tasks on Conveyor workers.

.. code-block:: python

    TASKS = {
        "default": {
            "BACKEND": "conveyor.contrib.django.backend.ConveyorBackend",
            "QUEUES": ["default", "emails"],
            "OPTIONS": {"max_retries": 3, "retry_backoff": True, "time_limit": 300},
        }
    }

``@task`` functions are sent as one generic Conveyor task (``conveyor.django_task``) carrying
the function's module path. The worker runs only objects that are ``django.tasks.Task``
instances, and imports a module for that only if it belongs to an installed app or to
``CONVEYOR_IMPORTS`` (a message can never make a worker import arbitrary code).

Priorities: Django's -100..100 map onto Conveyor's 0..9 bands (9 is served first), with
Django's default 0 on Conveyor's default 5 - see :func:`conveyor_priority`.
"""

from __future__ import annotations

import json
import math
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import import_module
from inspect import iscoroutinefunction
from traceback import format_exception
from typing import TYPE_CHECKING, TypedDict

from django.apps import apps
from django.conf import settings
from django.core.checks import CheckMessage
from django.tasks import Task, TaskResult, TaskResultStatus
from django.tasks.backends.base import BaseTaskBackend
from django.tasks.base import TaskError
from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist
from django.tasks.signals import task_enqueued
from django.utils import timezone
from django.utils.json import normalize_json
from django.utils.module_loading import import_string

from conveyor import states
from conveyor._state import default_app
from conveyor.exceptions import ConfigurationError
from conveyor.message import JSONValue, from_json_value

from .backend_checks import check_backend

if TYPE_CHECKING:
    from conveyor.app import Conveyor
    from conveyor.results.base import ResultRecord

#: Names of the Conveyor tasks that run django.tasks functions (sync and ``async def``).
RUN_TASK = "conveyor.django_task"
ARUN_TASK = "conveyor.django_task_async"
#: Result-store key of a django task's metadata (path, arguments, attempts, errors).
META_PREFIX = "django-task:"

#: Retry and limit options read from ``OPTIONS`` and from ``@task(...)`` keywords.
TASK_OPTIONS = (
    "max_retries",
    "autoretry_for",
    "retry_backoff",
    "retry_backoff_max",
    "retry_jitter",
    "default_retry_delay",
    "time_limit",
    "soft_time_limit",
    "expires",
)
_DEFAULTS: dict[str, object] = {
    "max_retries": 0,
    "autoretry_for": (Exception,),
    "retry_backoff": False,
    "retry_backoff_max": 600.0,
    "retry_jitter": True,
    "default_retry_delay": 180.0,
    "time_limit": None,
    "soft_time_limit": None,
    "expires": None,
}


def conveyor_priority(priority: int) -> int:
    """Map a django.tasks priority (-100..100, higher first) onto Conveyor's 0..9.

    ===========  ========
    Django       Conveyor
    ===========  ========
    76..100      9
    51..75       8
    26..50       7
    1..25        6
    0            5 (both defaults)
    -1..-20      4
    -21..-40     3
    -41..-60     2
    -61..-80     1
    -81..-100    0
    ===========  ========
    """
    if priority > 0:
        return 5 + math.ceil(min(priority, 100) / 25)
    if priority < 0:
        return 5 - math.ceil(min(-priority, 100) / 20)
    return 5


@dataclass(frozen=True, slots=True, kw_only=True)
class ConveyorTask(Task):  # type: ignore[misc]
    """``django.tasks.Task`` with Conveyor's options: ``@task(max_retries=3, time_limit=60)``.
    ``None`` means the backend's ``OPTIONS`` (then Conveyor's defaults)."""

    max_retries: int | None = None
    autoretry_for: tuple[type[BaseException], ...] | None = None
    retry_backoff: bool | float | None = None
    retry_backoff_max: float | None = None
    retry_jitter: bool | None = None
    default_retry_delay: float | None = None
    time_limit: float | None = None
    soft_time_limit: float | None = None
    expires: float | None = None


class ErrorMeta(TypedDict):
    """One failed attempt in a django task's metadata (``django.tasks.TaskError``'s fields)."""

    exception_class_path: str
    traceback: str


class TaskMeta(TypedDict, total=False):
    """A django task's metadata in the result store (under :data:`META_PREFIX` + its id)."""

    path: str
    backend: str
    args: list[JSONValue]
    kwargs: dict[str, JSONValue]
    enqueued_at: float
    started_at: float
    last_attempted_at: float
    worker_ids: list[str]
    errors: list[ErrorMeta]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """A django task's retry options (see :meth:`ConveyorBackend.retry_policy`)."""

    max_retries: int
    autoretry_for: tuple[type[BaseException], ...]
    retry_backoff: bool | float
    retry_backoff_max: float
    retry_jitter: bool
    default_retry_delay: float


class ConveyorBackend(BaseTaskBackend):  # type: ignore[misc]
    """Runs ``django.tasks`` on Conveyor workers; results come from Conveyor's result store.

    ``OPTIONS``: ``"APP"`` (dotted path of the Conveyor app, default: the default app) and
    the retry/limit options of :data:`TASK_OPTIONS`.
    """

    task_class = ConveyorTask
    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    def __init__(self, alias: str, params: dict[str, object]) -> None:
        super().__init__(alias, params)
        unknown = set(self.options) - {"APP", *TASK_OPTIONS}
        if unknown:
            raise InvalidTask(
                f"unknown OPTIONS for task backend {alias!r}: {', '.join(sorted(unknown))}"
            )
        self._app: Conveyor | None = None

    @property
    def app(self) -> Conveyor:
        """The Conveyor app tasks are sent through: ``OPTIONS["APP"]``, else the default."""
        if self._app is not None:
            return self._app
        path = self.options.get("APP")
        if not path:
            return default_app()
        self._app = import_string(str(path).replace(":", "."))
        return self._app

    def option(self, task: Task, name: str) -> object:
        """A retry/limit option: the task's own, else ``OPTIONS``, else the default."""
        value: object = getattr(task, name, None)
        if value is None:
            value = self.options.get(name, _DEFAULTS[name])
        if name == "autoretry_for":
            value = tuple(
                import_string(item) if isinstance(item, str) else item
                for item in (value if isinstance(value, list | tuple) else (value,))
            )
        return value

    def retry_policy(self, task: Task) -> RetryPolicy:
        """The retry options of ``task`` (see :meth:`option`), checked."""
        autoretry_for = self.option(task, "autoretry_for")
        assert isinstance(autoretry_for, tuple)  # option() makes it one
        for kind in autoretry_for:
            if not (isinstance(kind, type) and issubclass(kind, BaseException)):
                raise ConfigurationError(f"autoretry_for must name exception types, got {kind!r}")
        backoff = self.option(task, "retry_backoff")
        if not isinstance(backoff, bool | int | float):
            raise ConfigurationError(f"retry_backoff must be a bool or a number, got {backoff!r}")
        return RetryPolicy(
            max_retries=int(_number(self.option(task, "max_retries") or 0, "max_retries")),
            autoretry_for=autoretry_for,
            retry_backoff=backoff,
            retry_backoff_max=_number(self.option(task, "retry_backoff_max"), "retry_backoff_max"),
            retry_jitter=bool(self.option(task, "retry_jitter")),
            default_retry_delay=_number(
                self.option(task, "default_retry_delay"), "default_retry_delay"
            ),
        )

    # -- enqueueing ------------------------------------------------------------------------
    def enqueue(
        self, task: Task, args: Sequence[object], kwargs: Mapping[str, object]
    ) -> TaskResult:
        self.validate_task(task)
        json_args: list[JSONValue] = normalize_json(list(args))
        json_kwargs: dict[str, JSONValue] = normalize_json(dict(kwargs))
        app = self.app
        task_id = str(uuid.uuid4())
        enqueued_at = timezone.now()
        meta: TaskMeta = {
            "path": task.module_path,
            "backend": self.alias,
            "args": json_args,
            "kwargs": json_kwargs,
            "enqueued_at": enqueued_at.timestamp(),
            "worker_ids": [],
            "errors": [],
        }
        options: dict[str, object] = {
            "task_id": task_id,
            "queue": task.queue_name,
            "priority": conveyor_priority(task.priority),
            "ignore_result": False,
            "on_commit": False,
            "shadow": task.module_path,  # logs name the function, not conveyor.django_task
        }
        if task.run_after is not None:
            options["eta"] = task.run_after
        for name in ("time_limit", "soft_time_limit", "expires"):
            value = self.option(task, name)
            if value is not None:
                options[name] = value
        name = ARUN_TASK if _is_async(task) else RUN_TASK
        body = [task.module_path, self.alias]

        # Stored at once, even when the send waits for the commit: get_result() and
        # refresh() work inside the transaction (READY). After a rollback it reads READY
        # until it expires, as an id never sent reads PENDING in Celery.
        app.results.kv.set_value(
            META_PREFIX + task_id, json.dumps(meta).encode(), app.conf.result_expires
        )

        def send() -> None:
            app.send_call(name, body, None, options)

        if (
            app.conf.task_enqueue_on_commit
            and not app.conf.task_always_eager
            and app.commit_hook is not None
            and app.in_transaction()
        ):
            app.commit_hook(send)
        else:
            send()
        result = self._result(task, task_id, json_args, json_kwargs, TaskResultStatus.READY, meta)
        object.__setattr__(result, "enqueued_at", enqueued_at)
        task_enqueued.send(type(self), task_result=result)
        return result

    # -- results ---------------------------------------------------------------------------
    def get_result(self, result_id: str) -> TaskResult:
        app = self.app
        raw = app.results.kv.get_value(META_PREFIX + str(result_id))
        if raw is None:
            raise TaskResultDoesNotExist(result_id)
        meta: TaskMeta = json.loads(raw)
        task = resolve_task(meta["path"], app)
        if meta.get("backend") and meta["backend"] != task.backend:
            task = task.using(backend=meta["backend"])
        record = app.results.get(str(result_id))
        return self._result(task, str(result_id), meta["args"], meta["kwargs"], None, meta, record)

    def _result(
        self,
        task: Task,
        task_id: str,
        args: list[JSONValue],
        kwargs: dict[str, JSONValue],
        status: TaskResultStatus | None,
        meta: TaskMeta,
        record: ResultRecord | None = None,
    ) -> TaskResult:
        state = record.state if record is not None else states.QUEUED
        errors = [TaskError(**error) for error in meta.get("errors", [])]
        if status is None:
            status = _STATUS.get(state, TaskResultStatus.READY)
        if status == TaskResultStatus.FAILED and (record is not None and not errors):
            errors.append(_error_of(record))
        worker_ids = list(meta.get("worker_ids", []))
        result = TaskResult(
            task=task,
            id=task_id,
            status=status,
            enqueued_at=_datetime(
                meta.get("enqueued_at") or (record.created_at if record else None)
            ),
            started_at=_datetime(meta.get("started_at") or (record.started_at if record else None)),
            finished_at=_datetime(record.date_done if record is not None else None),
            last_attempted_at=_datetime(meta.get("last_attempted_at")),
            args=args,
            kwargs=kwargs,
            backend=meta.get("backend") or self.alias,
            errors=errors,
            worker_ids=worker_ids,
        )
        if record is not None and state == states.SUCCESS:
            object.__setattr__(result, "_return_value", from_json_value(record.result))
        return result

    # -- checks ----------------------------------------------------------------------------
    def check(self, **kwargs: object) -> list[CheckMessage]:
        return check_backend(self)


_STATUS = {
    states.PENDING: TaskResultStatus.READY,
    states.QUEUED: TaskResultStatus.READY,
    states.RETRY: TaskResultStatus.READY,
    states.STARTED: TaskResultStatus.RUNNING,
    states.SUCCESS: TaskResultStatus.SUCCESSFUL,
    states.FAILURE: TaskResultStatus.FAILED,
    states.REVOKED: TaskResultStatus.FAILED,
    states.EXPIRED: TaskResultStatus.FAILED,
}


def _is_async(task: Task) -> bool:
    return iscoroutinefunction(task.func)


def _number(value: object, name: str) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise ConfigurationError(f"{name} must be a number, got {value!r}")


def _datetime(timestamp: float | None) -> datetime | None:
    if not timestamp:
        return None
    moment = datetime.fromtimestamp(timestamp, UTC)
    return moment if settings.USE_TZ else timezone.make_naive(moment)


def exception_path(type_name: str) -> str:
    """Conveyor stores built-in exception names bare (``ValueError``); Django wants an
    importable path (``builtins.ValueError``)."""
    return type_name if "." in type_name else f"builtins.{type_name}"


def _error_of(record: ResultRecord) -> TaskError:
    if record.state == states.REVOKED:
        path = "conveyor.exceptions.TaskRevokedError"
    elif record.state == states.EXPIRED:
        path = "conveyor.exceptions.TaskExpiredError"
    else:
        info = record.result if isinstance(record.result, dict) else {}
        path = exception_path(str(info.get("type") or "Exception"))
    return TaskError(exception_class_path=path, traceback=record.traceback or "")


def django_task_paths() -> list[str]:
    """The ``django.tasks`` functions run by a :class:`ConveyorBackend`, found in the
    modules of installed apps imported so far (a worker has imported its tasks modules),
    by ``module_path``."""
    packages = [
        config.name
        for config in apps.get_app_configs()
        if not config.name.startswith(("django.", "conveyor."))
    ]
    found: set[str] = set()
    for name, module in list(sys.modules.items()):
        if module is None or not any(name == p or name.startswith(p + ".") for p in packages):
            continue
        for value in list(vars(module).values()):
            if isinstance(value, Task) and value.module_path not in found:
                try:
                    conveyor_backend = isinstance(value.get_backend(), ConveyorBackend)
                except Exception:  # a misconfigured backend: the checks report it
                    conveyor_backend = False
                if conveyor_backend:
                    found.add(value.module_path)
    return sorted(found)


class UnknownTaskPath(ConfigurationError):
    """A message named something that is not an importable ``django.tasks`` task."""


def resolve_task(path: str, app: Conveyor | None = None) -> Task:
    """The ``django.tasks.Task`` at ``path`` (``"app.tasks.send_email"``).

    A module not imported yet is imported only if it belongs to an installed Django app or
    to the app's ``imports``/``include``; the object found must be a ``django.tasks.Task``
    whose ``module_path`` is ``path``. Anything else raises :class:`UnknownTaskPath`.
    """
    module_name, _, attr = str(path).rpartition(".")
    if not module_name or not attr.isidentifier():
        raise UnknownTaskPath(f"{path!r} is not the path of a django.tasks task")
    module = sys.modules.get(module_name)
    if module is None:
        if not _importable(module_name, app):
            raise UnknownTaskPath(
                f"refusing to import {module_name!r} for django task {path!r}: it is not in "
                "an installed app nor in CONVEYOR_IMPORTS"
            )
        try:
            module = import_module(module_name)
        except ImportError as exc:
            raise UnknownTaskPath(f"cannot import {module_name!r} for {path!r}: {exc}") from exc
    found = getattr(module, attr, None)
    if not isinstance(found, Task) or found.module_path != path:
        raise UnknownTaskPath(f"{path!r} is not a function decorated with django.tasks @task")
    return found


def _importable(module_name: str, app: Conveyor | None) -> bool:
    packages = [config.name for config in apps.get_app_configs()]
    if app is not None:
        packages += [*app.conf.imports, *app.conf.include]
    return any(module_name == p or module_name.startswith(p + ".") for p in packages)


def record_attempt(app: Conveyor, task_id: str, worker: str) -> TaskMeta:
    """Note the start of an attempt in the task's metadata; return the metadata."""
    meta = read_meta(app, task_id)
    now = time.time()
    meta.setdefault("started_at", now)
    meta["last_attempted_at"] = now
    meta.setdefault("worker_ids", []).append(worker)
    write_meta(app, task_id, meta)
    return meta


def record_error(app: Conveyor, task_id: str, meta: TaskMeta, exc: BaseException) -> None:
    kind = type(exc)
    meta.setdefault("errors", []).append(
        {
            "exception_class_path": f"{kind.__module__}.{kind.__qualname__}",
            "traceback": "".join(format_exception(exc)),
        }
    )
    write_meta(app, task_id, meta)


def read_meta(app: Conveyor, task_id: str) -> TaskMeta:
    raw = app.results.kv.get_value(META_PREFIX + task_id)
    if raw is None:
        return {}
    meta: TaskMeta = json.loads(raw)
    return meta


def write_meta(app: Conveyor, task_id: str, meta: TaskMeta) -> None:
    app.results.kv.set_value(
        META_PREFIX + task_id, json.dumps(meta).encode(), app.conf.result_expires
    )
