"""The worker's per-task log line written straight to the handler's stream when logging is
set up the default way, without a ``LogRecord``.

Through :mod:`logging` a line costs a ``LogRecord`` (caller lookup, process and thread
names), the handler's filters and the formatter's dictionary formatting: about a quarter of
a no-op task's CPU in the worker. When the only handler on the way is the stream or file
handler of :func:`conveyor.loading.setup_logging` with its default text format, the same line
(the same text, passwords redacted) is written directly. Any other setup - another handler
or formatter, filters, a record factory, ``caplog`` in tests, the JSON format - gets the line
through :mod:`logging` as before."""

from __future__ import annotations

import logging
import sys
import time
from typing import TextIO

from .log import LOG_FORMAT, RedactingFormatter
from .redaction import redact_text

__all__ = ["DirectLine"]

_STREAM_HANDLERS = (logging.StreamHandler, logging.FileHandler)


class DirectLine:
    """Writes ``logger``'s lines at one ``level`` directly where the setup allows it."""

    def __init__(self, logger: logging.Logger, level: int = logging.INFO) -> None:
        self.logger = logger
        self.level = level
        self._prefix = f" {logging.getLevelName(level)}/"
        self._suffix = f"] {logger.name}: "

    def handler(self) -> logging.StreamHandler[TextIO] | None:
        """The handler to write to directly, or None if the line must go through logging:
        checked on each line (a few attribute reads), as the setup can change any time."""
        logger = self.logger
        if (
            type(logger) is not logging.Logger
            or logging.getLogRecordFactory() is not logging.LogRecord
            or logging.root.manager.disable >= self.level
            or not logger.isEnabledFor(self.level)
        ):
            return None
        node: logging.Logger | None = logger
        while node is not None and node is not logging.root:
            if node.handlers or node.filters or not node.propagate:
                return None
            node = node.parent
        root = logging.root
        if root.filters or len(root.handlers) != 1:
            return None
        handler = root.handlers[0]
        formatter = handler.formatter
        if (
            type(handler) not in _STREAM_HANDLERS
            or handler.filters
            or handler.level > self.level
            or type(formatter) is not RedactingFormatter
            or formatter._fmt != LOG_FORMAT
            or formatter.datefmt is not None
        ):
            return None
        assert isinstance(handler, logging.StreamHandler)  # for the type checker
        if handler.stream is None:  # a FileHandler opened on first use
            return None
        return handler

    def write(self, handler: logging.StreamHandler[TextIO], msg: str, *args: object) -> None:
        """Write the line of ``msg % args`` to ``handler`` (from :meth:`handler`) as its
        formatter would."""
        formatter = handler.formatter
        assert isinstance(formatter, RedactingFormatter)
        now = time.time_ns()  # as LogRecord takes its time
        second, rest = divmod(now, 1_000_000_000)
        line = (
            f"[{formatter.time_text(second, rest // 1_000_000)}{self._prefix}"
            f"{_process_name()}{self._suffix}{msg % args}"
        )
        line = redact_text(line) + handler.terminator
        handler.acquire()
        try:
            handler.stream.write(line)
            handler.flush()
        except RecursionError:
            raise
        except Exception:
            record = self.logger.makeRecord(self.logger.name, self.level, "", 0, msg, args, None)
            handler.handleError(record)
        finally:
            handler.release()


def _process_name() -> str | None:
    """``LogRecord.processName``, computed the same way."""
    if not logging.logMultiprocessing:
        return None
    mp = sys.modules.get("multiprocessing")
    if mp is None:
        return "MainProcess"
    try:
        return str(mp.current_process().name)
    except Exception:
        return "MainProcess"
