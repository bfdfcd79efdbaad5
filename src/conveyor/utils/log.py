"""Logging: the redacting text and JSON formatters and ``get_task_logger`` (Celery's path).

Inside a task, ``get_task_logger(__name__)`` gives a logger whose records carry the running
task's ``task_id``, ``task_name``, ``queue`` and ``retries``: the text format shows them as
``name[id]``, the JSON format as fields. Both formats hide URL passwords everywhere, tracebacks
included (``conveyor worker --log-format json``)."""

from __future__ import annotations

import datetime as dt
import json
import logging
import time

from .._state import current_request
from .redaction import redact_text, redact_value

__all__ = [
    "LOG_FORMAT",
    "TASK_LOG_FORMAT",
    "JsonFormatter",
    "RedactingFormatter",
    "TaskContextFilter",
    "get_logger",
    "get_task_logger",
    "task_fields",
]

LOG_FORMAT = "[%(asctime)s %(levelname)s/%(processName)s] %(name)s: %(message)s"
#: The text format of records logged inside a task (Celery's ``worker_task_log_format``).
TASK_LOG_FORMAT = (
    "[%(asctime)s %(levelname)s/%(processName)s] %(task_name)s[%(task_id)s]: %(message)s"
)
#: The record attributes a task's records carry.
TASK_FIELDS = ("task_id", "task_name", "queue", "retries")


def task_fields() -> dict[str, object] | None:
    """The running task's id, name, queue and retries (None outside a task)."""
    request = current_request()
    if request is None:
        return None
    return {
        "task_id": request.id,
        "task_name": request.task,
        "queue": request.queue,
        "retries": request.retries,
    }


class TaskContextFilter(logging.Filter):
    """Sets ``task_id``, ``task_name``, ``queue`` and ``retries`` on each record logged
    inside a task (``None`` / ``"???"`` outside one, so formats can name them)."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = task_fields()
        if fields is None:
            for name in TASK_FIELDS:
                if not hasattr(record, name):
                    setattr(record, name, "???" if name in ("task_id", "task_name") else None)
        else:
            for name, value in fields.items():
                setattr(record, name, value)
            record._conveyor_task = True  # RedactingFormatter: the task line format
        return True


_filter = TaskContextFilter()


def get_logger(name: str) -> logging.Logger:
    """``logging.getLogger(name)`` (Celery's ``celery.utils.log.get_logger``)."""
    return logging.getLogger(name)


def get_task_logger(name: str) -> logging.Logger:
    """A logger for task modules whose records carry the running task's id, name, queue and
    retries (as in Celery: ``logger = get_task_logger(__name__)`` at module level)."""
    logger = logging.getLogger(name)
    if _filter not in logger.filters:
        logger.addFilter(_filter)
    return logger


class RedactingFormatter(logging.Formatter):
    """A text formatter that hides URL passwords in the whole line, tracebacks included, and
    shows a task's records as ``task_name[task_id]``.

    It formats the default timestamp once per second, not once per line: a worker logs a
    line per task, and ``localtime`` + ``strftime`` were a fifth of that line's cost."""

    _second: tuple[int, str] = (-1, "")

    def __init__(self, fmt: str = LOG_FORMAT, task_fmt: str | None = TASK_LOG_FORMAT) -> None:
        super().__init__(fmt)
        self._task = logging.Formatter(task_fmt) if task_fmt is not None else None
        if self._task is not None:
            self._task.formatTime = self.formatTime  # type: ignore[method-assign]  # share the cache

    def format(self, record: logging.LogRecord) -> str:
        if self._task is not None and getattr(record, "_conveyor_task", False):
            return redact_text(self._task.format(record))
        return redact_text(super().format(record))

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        return self.time_text(int(record.created // 1), int(record.msecs))

    def time_text(self, second: int, msecs: int) -> str:
        """The default ``asctime`` of a time given in whole seconds and milliseconds."""
        cached_second, text = self._second
        if cached_second != second:
            text = time.strftime(self.default_time_format, self.converter(second))
            self._second = (second, text)
        return f"{text},{msecs:03d}"


#: LogRecord attributes that are not "extra" fields.
_STANDARD = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time`` (ISO 8601, UTC), ``level``, ``logger``,
    ``process``, ``pid``, ``thread``, ``message``, ``exception`` (traceback text) when there is
    one, the running task's ``task_id``, ``task_name``, ``queue`` and ``retries`` inside a task,
    and any ``extra=`` fields (values under secret-looking keys such as ``password`` or
    ``token`` hidden). URL passwords are hidden in every string value."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, object] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "process": record.processName,
            "pid": record.process,
            "thread": record.threadName,
            "message": record.getMessage(),
        }
        fields = task_fields()
        if fields is not None:
            data.update(fields)
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in data and not key.startswith("_"):
                if key in TASK_FIELDS and value in ("???", None):
                    continue
                data[key] = redact_value(value)
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            data["exception"] = record.exc_text
        if record.stack_info:
            data["stack"] = self.formatStack(record.stack_info)
        return redact_text(json.dumps(data, default=repr, ensure_ascii=False))
