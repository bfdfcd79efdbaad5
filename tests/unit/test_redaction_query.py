"""Passwords outside a URL's user part are hidden too (issue 13, item 6: secrets redacted in
logs and URLs): a ``?password=`` query parameter (libpq accepts one) and a URL percent-encoded
inside a query value (RabbitMQ's ``?kv_url=``), in ``redact_url`` and in every log line."""

from __future__ import annotations

import logging

import pytest

from conveyor.brokers.base import redact_url
from conveyor.utils.log import RedactingFormatter
from conveyor.utils.redaction import redact_text


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u@h/db?password=s3cret", "postgresql://u@h/db?password=***"),
        (
            "postgresql://u@h/db?sslmode=require&PASSWORD=s3cret&schema=q",
            "postgresql://u@h/db?sslmode=require&PASSWORD=***&schema=q",
        ),
        (
            "amqp://guest:guest@h:5672//?kv_url=redis%3A%2F%2F%3As3cret%40kv%3A6379%2F0",
            "amqp://guest:***@h:5672//?kv_url=redis%3A%2F%2F%3A***%40kv%3A6379%2F0",
        ),
        (
            "amqp://h//?kv_url=postgresql%3a%2f%2fuser%3as3cret%40db%2fconveyor&heartbeat=10",
            "amqp://h//?kv_url=postgresql%3a%2f%2fuser%3A***%40db%2fconveyor&heartbeat=10",
        ),
        (
            "amqp://h//?kv_url=sqlite%3A%2F%2F%2Ftmp%2Fkv.db",
            "amqp://h//?kv_url=sqlite%3A%2F%2F%2Ftmp%2Fkv.db",
        ),
        ("redis://:s3cret@host/0", "redis://:***@host/0"),
        ("postgresql://u@h/db?passive=1", "postgresql://u@h/db?passive=1"),
    ],
)
def test_query_passwords_are_hidden(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert "s3cret" not in redact_text(f"publish to {url} failed")


def test_log_lines_hide_query_passwords() -> None:
    record = logging.LogRecord(
        "conveyor",
        logging.ERROR,
        __file__,
        1,
        "publish to %s failed",
        ("postgresql://u@h/db?password=s3cret",),
        None,
    )
    assert "s3cret" not in RedactingFormatter().format(record)
