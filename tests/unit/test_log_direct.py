"""The per-task log line written without a LogRecord: the same text as through logging, and
only where the logging setup is the default one."""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor import Conveyor
from conveyor.testing import TestWorker
from conveyor.utils.log import LOG_FORMAT, JsonFormatter, RedactingFormatter
from conveyor.utils.log_direct import DirectLine

STAMP = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ")


@contextlib.contextmanager
def worker_logging(path: Path, formatter: logging.Formatter | None = None) -> Iterator[None]:
    """The root logger as ``conveyor worker`` sets it up (a file handler with the redacting
    text format, level info) for the body of the block: pytest's own handlers set aside."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(formatter or RedactingFormatter(LOG_FORMAT))
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    try:
        yield
    finally:
        handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_direct_line_is_the_line_logging_prints(tmp_path: Path) -> None:
    logger = logging.getLogger("conveyor.test.direct")
    direct = DirectLine(logger)
    secret = "redis://:hunter2@localhost/0"
    with worker_logging(tmp_path / "log"):
        handler = direct.handler()
        assert handler is not None
        direct.write(handler, "%s[%s] succeeded in %.3fs: %.200r", "t.x", "i-1", 0.0012, secret)
        logger.info("%s[%s] succeeded in %.3fs: %.200r", "t.x", "i-1", 0.0012, secret)
    first, second = lines(tmp_path / "log")
    assert STAMP.match(first) and STAMP.match(second)
    assert STAMP.sub("", first) == STAMP.sub("", second)
    assert "hunter2" not in first
    assert first.endswith(
        "conveyor.test.direct: t.x[i-1] succeeded in 0.001s: 'redis://:***@localhost/0'"
    )


@pytest.mark.parametrize(
    "change",
    ["handler filter", "second handler", "json", "logger handler", "level", "no propagate"],
)
def test_any_other_setup_goes_through_logging(tmp_path: Path, change: str) -> None:
    logger = logging.getLogger("conveyor.test.other")
    formatter = JsonFormatter() if change == "json" else None
    with worker_logging(tmp_path / "log", formatter):
        root = logging.getLogger()
        assert (DirectLine(logger).handler() is None) is (change == "json")
        [handler] = root.handlers
        if change == "handler filter":
            handler.addFilter(lambda record: True)
        elif change == "second handler":
            root.addHandler(logging.NullHandler())
        elif change == "logger handler":
            logger.addHandler(logging.NullHandler())
        elif change == "level":
            logger.setLevel(logging.WARNING)
        elif change == "no propagate":
            logger.propagate = False
        try:
            assert DirectLine(logger).handler() is None
        finally:
            logger.handlers.clear()
            logger.setLevel(logging.NOTSET)
            logger.propagate = True


def test_worker_writes_the_success_line_directly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = Conveyor("t", broker="memory://")

    @app.task(name="logged.ok")
    def ok(x: int) -> int:
        return x * 2

    records: list[logging.LogRecord] = []
    try:
        result = ok.delay(21)
        with worker_logging(tmp_path / "log"):
            # Records reach no handler: only lines written directly reach the file.
            monkeypatch.setattr(logging.Logger, "handle", lambda _, record: records.append(record))
            with TestWorker(app) as worker:
                worker.run_until_idle(10)
            monkeypatch.undo()
    finally:
        app.close()
    [line] = [line for line in lines(tmp_path / "log") if result.id in line]
    assert re.fullmatch(
        rf"\[[^]]+ INFO/MainProcess\] conveyor\.worker\.tasks: "
        rf"logged\.ok\[{result.id}\] succeeded in \d+\.\d{{3}}s: 42",
        line,
    )
    assert not [r for r in records if result.id in r.getMessage()]
