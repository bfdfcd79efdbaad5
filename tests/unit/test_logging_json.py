"""Logging: the JSON formatter (one object per line), the task logger's fields, redaction in
every format, and ``conveyor worker --log-format json`` in a real process."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor import Conveyor, Task
from conveyor.loading import setup_logging
from conveyor.testing import TestWorker, make_test_app
from conveyor.utils.log import JsonFormatter, RedactingFormatter, get_task_logger
from conveyor.utils.redaction import REDACTED, redact_arguments

ROOT = Path(__file__).resolve().parents[2]


class Lines(logging.Handler):
    def __init__(self, formatter: logging.Formatter) -> None:
        super().__init__()
        self.setFormatter(formatter)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def captured() -> Iterator[tuple[Lines, Lines]]:
    json_lines, text_lines = Lines(JsonFormatter()), Lines(RedactingFormatter())
    logger = logging.getLogger("tests.tasklog")
    logger.addHandler(json_lines)
    logger.addHandler(text_lines)
    logger.setLevel(logging.INFO)
    yield json_lines, text_lines
    logger.removeHandler(json_lines)
    logger.removeHandler(text_lines)


def test_task_logger_records_carry_the_running_task(captured: tuple[Lines, Lines]) -> None:
    json_lines, text_lines = captured
    logger = get_task_logger("tests.tasklog")
    app = make_test_app("logs")

    @app.task(name="logs.work", bind=True)
    def work(self: Task[[], None]) -> None:
        logger.info("working on %s", "it")
        if self.request.retries == 0:
            raise self.retry(countdown=0)

    result = work.apply_async(queue="jobs")
    logger.info("outside")
    worker = TestWorker(app, queues=["jobs"])
    try:
        worker.run_until_idle()
    finally:
        worker.stop(timeout=10)
        app.close()
    records = [json.loads(line) for line in json_lines.lines]
    assert records[0]["message"] == "outside" and "task_id" not in records[0]
    inside = records[1:]
    assert [(r["task_id"], r["task_name"], r["queue"], r["retries"]) for r in inside] == [
        (result.id, "logs.work", "jobs", 0),
        (result.id, "logs.work", "jobs", 1),
    ]
    assert inside[0]["message"] == "working on it" and inside[0]["level"] == "INFO"
    assert inside[0]["logger"] == "tests.tasklog" and inside[0]["time"].endswith("+00:00")
    assert text_lines.lines[0].endswith("tests.tasklog: outside")
    assert text_lines.lines[1].endswith(f"logs.work[{result.id}]: working on it")


def test_json_lines_hide_passwords_in_messages_tracebacks_and_extras(
    captured: tuple[Lines, Lines],
) -> None:
    json_lines, text_lines = captured
    logger = logging.getLogger("tests.tasklog")
    try:
        raise ConnectionError("cannot reach redis://user:hunter2@db:6379/0")
    except ConnectionError:
        logger.exception(
            "broker amqp://guest:s3cret@mq// down",
            extra={"target": {"password": "pw1", "host": "db"}, "attempt": 3},
        )
    line = json_lines.lines[0]
    assert "\n" not in line  # one object per line, traceback included
    record = json.loads(line)
    assert record["message"] == "broker amqp://guest:***@mq// down"
    assert "hunter2" not in record["exception"] and "user:***@db" in record["exception"]
    assert record["target"] == {"password": REDACTED, "host": "db"} and record["attempt"] == 3
    for text in (line, text_lines.lines[0]):
        assert "hunter2" not in text and "s3cret" not in text and "pw1" not in text


def test_redact_arguments_by_name_and_all() -> None:
    args, kwargs = redact_arguments(
        ["redis://:pw@h/0", {"api_key": "k", "n": 1}],
        {"user": "ann", "password": "x", "auth_token": "t", "nested": {"secret": "s"}},
    )
    assert args == ["redis://:***@h/0", {"api_key": REDACTED, "n": 1}]
    assert kwargs == {
        "user": "ann",
        "password": REDACTED,
        "auth_token": REDACTED,
        "nested": {"secret": REDACTED},
    }
    assert redact_arguments([1, 2], {"a": 3}, all_values=True) == (
        [REDACTED, REDACTED],
        {"a": REDACTED},
    )


def test_unknown_log_format_is_refused() -> None:
    with pytest.raises(Exception, match="unknown log format 'xml'"):
        setup_logging("info", log_format="xml")


def test_worker_log_format_json_prints_only_json_lines(tmp_path: Path) -> None:
    broker = f"sqlite:///{tmp_path}/b.db"
    env = {**os.environ, "CONVEYOR_BROKER_URL": broker, "PYTHONPATH": str(ROOT)}
    env.pop("CONVEYOR_APP", None)
    client = Conveyor("workerapp", broker=broker)
    result = client.send_task("workerapp.add", (2, 3))
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "conveyor",
                "worker",
                "-A",
                "tests.integration.workerapp",
                "--pool",
                "solo",
                "--log-format",
                "json",
                "-n",
                "json@test",
            ],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            assert result.get(timeout=30) == 5
        finally:
            worker.terminate()
            worker.wait(20)
            client.close()
    lines = log.read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert records[0]["message"].startswith("conveyor ") and "workerapp.add" in records[0]["tasks"]
    done = [r for r in records if "succeeded" in r["message"]]
    assert done and done[0]["task_id"] == result.id and done[0]["task_name"] == "workerapp.add"
