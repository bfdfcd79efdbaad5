"""``task_annotations``: Celery's way to set task options from configuration.

Each annotation is one of (as in Celery):

* a mapping ``{task name: {option: value}}``, where the name ``"*"`` means every task;
* an object (or a class, instantiated once) with ``annotate(task) -> dict | None``;
* a dotted path (``"proj.annotations:RateLimits"``) to such an object or class;
* in Conveyor also a plain function ``(task) -> dict | None``.

For each task, the first annotation that returns options for its name applies, then the
first ``"*"`` entry (so, as in Celery, ``"*"`` wins over a per-name entry for the same option).
Options are the ``@app.task`` options (``rate_limit``, ``time_limit``, ``queue``, ...) and
the task's hooks (``on_failure``, ``on_success``, ``on_retry``, ``before_start``,
``after_return``: functions taking ``self`` first). Annotations are applied when a task is
registered and again when a worker or beat finalizes the app.
"""

from __future__ import annotations

import importlib
import types
from collections.abc import Callable, Mapping
from typing import Protocol, runtime_checkable

from .exceptions import ConfigurationError
from .task import Task, rate_per_second

__all__ = ["Annotation", "annotate_task", "check_annotations"]

#: Task options an annotation may set (``name``, ``bind`` and ``base`` change what the task
#: is, not how it runs: set them on the decorator).
OPTIONS = frozenset(
    {
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
        "concurrency_limit",
        "throws",
        "typing",
    }
)
HOOKS = frozenset({"before_start", "on_success", "on_failure", "on_retry", "after_return"})
_TUPLES = ("autoretry_for", "dont_autoretry_for", "throws")

type TaskOptions = Mapping[str, object]


@runtime_checkable
class _Annotator(Protocol):
    def annotate(self, task: Task[..., object]) -> TaskOptions | None: ...


class Annotation:
    """One checked entry of ``task_annotations``."""

    __slots__ = ("_annotate", "_by_name", "source")

    def __init__(self, source: object) -> None:
        self.source = source
        self._by_name: dict[str, TaskOptions] | None = None
        self._annotate: Callable[[Task[..., object]], TaskOptions | None] | None = None
        if isinstance(source, Mapping):
            self._by_name = {}
            for name, options in source.items():
                if not isinstance(options, Mapping):
                    raise ConfigurationError(
                        f"task_annotations[{name!r}] must be a mapping of task options, "
                        f"got {options!r}"
                    )
                check_options(f"task_annotations[{name!r}]", options)
                self._by_name[str(name)] = dict(options)
        elif isinstance(source, type) and hasattr(source, "annotate"):
            self._annotate = source().annotate
        elif isinstance(source, _Annotator):
            self._annotate = source.annotate
        elif callable(source):
            self._annotate = source
        else:
            raise ConfigurationError(
                "task_annotations entries must be mappings {task name: options}, objects or "
                f"classes with annotate(task), or functions of the task; got {source!r}"
            )

    def for_task(self, task: Task[..., object]) -> TaskOptions | None:
        if self._by_name is not None:
            return self._by_name.get(task.name)
        assert self._annotate is not None
        options = self._annotate(task)
        if options is not None:
            if not isinstance(options, Mapping):
                raise ConfigurationError(
                    f"annotation {self.source!r} returned {options!r} for {task.name}: "
                    "return a mapping of task options or None"
                )
            check_options(f"annotation {self.source!r} for {task.name}", options)
        return options

    def for_any(self) -> TaskOptions | None:
        return self._by_name.get("*") if self._by_name is not None else None


def check_annotations(name: str, value: object) -> tuple[Annotation, ...]:
    """Check ``task_annotations``: one annotation or a list or tuple of them."""
    if value is None:
        return ()
    items = value if isinstance(value, list | tuple) else [value]
    return tuple(_load(name, item) for item in items)


def _load(name: str, item: object) -> Annotation:
    if isinstance(item, Annotation):
        return item
    if isinstance(item, str):
        obj = _by_path(name, item)
        item = obj() if isinstance(obj, type) else obj
    return Annotation(item)


def _by_path(name: str, path: str) -> object:
    """``"pkg.module:Name"`` or ``"pkg.module.Name"``, imported."""
    module_name, _, attr = path.rpartition(":") if ":" in path else path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigurationError(f"{name}: cannot load {path!r}: {exc}") from None


def check_options(where: str, options: Mapping[str, object]) -> None:
    """An error for an option an annotation cannot set, naming the closest one."""
    for key, value in options.items():
        if key in OPTIONS or key in HOOKS:
            _check_value(f"{where}: {key}", key, value)
            continue
        if isinstance(key, str) and key.startswith("@"):
            raise ConfigurationError(
                f"{where}: {key!r}: Celery's '@method' annotations wrap task methods; in "
                "Conveyor use middleware (conveyor.Middleware) or a base= Task class"
            )
        if key in {"name", "bind", "base", "retry_kwargs"}:
            raise ConfigurationError(f"{where}: {key!r} cannot be annotated: set it on @app.task")
        import difflib  # only for a suggestion: not loaded at start-up

        close = difflib.get_close_matches(str(key), [*OPTIONS, *HOOKS], n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigurationError(f"{where}: unknown task option {key!r}{hint}")


def _check_value(where: str, key: str, value: object) -> None:
    if value is None:
        return
    if key in HOOKS and not callable(value):
        raise ConfigurationError(f"{where} must be a function taking the task first")
    bad_priority = not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 9
    if key == "priority" and bad_priority:
        raise ConfigurationError(f"{where} must be 0-9 (9 first), got {value!r}")
    bad_limit = not isinstance(value, int) or isinstance(value, bool) or value < 1
    if key == "concurrency_limit" and bad_limit:
        raise ConfigurationError(f"{where} must be an integer >= 1, got {value!r}")
    if key == "rate_limit":
        try:
            rate_per_second(str(value))
        except ValueError as exc:
            raise ConfigurationError(f"{where}: {exc}") from None


def annotate_task(task: Task[..., object], annotations: tuple[Annotation, ...]) -> None:
    """Set the options ``annotations`` give ``task`` (Celery's order: its name, then ``*``)."""
    if not annotations:
        return
    found: list[TaskOptions] = []
    for annotation in annotations:
        options = annotation.for_task(task)
        if options is not None:
            found.append(options)
            break
    for annotation in annotations:
        options = annotation.for_any()
        if options is not None:
            found.append(options)
            break
    for options in found:
        _apply(task, options)


def _apply(task: Task[..., object], options: TaskOptions) -> None:
    for key, value in options.items():
        if key in HOOKS and callable(value):  # checked when the options were read
            setattr(task, key, types.MethodType(value, task))
            continue
        if key in _TUPLES:
            value = tuple(value) if isinstance(value, list | tuple) else (value,)
        setattr(task, key, value)
