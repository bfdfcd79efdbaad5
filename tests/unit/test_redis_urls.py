"""Redis Sentinel URLs, both spellings, and their errors."""

from __future__ import annotations

import pytest

from conveyor import Conveyor
from conveyor._redis_urls import SentinelTarget, is_sentinel_url, parse_sentinel_url
from conveyor.exceptions import BrokerError, ConfigurationError


@pytest.mark.parametrize(
    ("url", "options", "expected"),
    [
        (
            "redis+sentinel://h1:26379,h2:26380/mymaster/2",
            {},
            SentinelTarget((("h1", 26379), ("h2", 26380)), "mymaster", 2),
        ),
        (
            "redis+sentinel://user:p%40ss@h1,[::1]:5000/svc",
            {},
            SentinelTarget((("h1", 26379), ("::1", 5000)), "svc", 0, "user", "p@ss"),
        ),
        (
            "rediss+sentinel://:pw@h1:1/svc/0",
            {},
            SentinelTarget((("h1", 1),), "svc", 0, None, "pw", ssl=True),
        ),
        (
            "sentinel://:pw@h1:26379;sentinel://h2:26381/3",
            {"master_name": "cluster1"},
            SentinelTarget((("h1", 26379), ("h2", 26381)), "cluster1", 3, None, "pw"),
        ),
    ],
)
def test_parse(url: str, options: dict[str, str], expected: SentinelTarget) -> None:
    assert is_sentinel_url(url)
    assert parse_sentinel_url(url, options) == expected


@pytest.mark.parametrize(
    ("url", "options", "message"),
    [
        ("redis+sentinel://h1:26379", {}, "names the primary's service"),
        ("sentinel://h1:26379", {}, "need transport option master_name"),
        ("redis+sentinel://h1:port/svc", {}, "port is not a number"),
        ("redis+sentinel://h1/svc/zero", {}, "is not a number"),
        ("sentinel://h1;redis://h2", {"master_name": "m"}, "starts with sentinel://"),
    ],
)
def test_errors_name_the_fix(url: str, options: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        parse_sentinel_url(url, options)


def test_plain_redis_urls_are_not_sentinel_urls() -> None:
    assert not is_sentinel_url("redis://localhost:6379/0")
    assert not is_sentinel_url("sqlite:///x.db")


def test_the_app_refuses_a_sentinel_url_without_a_service_when_connecting() -> None:
    app = Conveyor("t", broker="sentinel://127.0.0.1:1")
    with pytest.raises(ConfigurationError, match="master_name"):
        _ = app.broker
    app.close()


def test_result_store_gets_master_name_from_the_broker_options() -> None:
    app = Conveyor(
        "t",
        broker="sentinel://127.0.0.1:1",
        broker_transport_options={"master_name": "svc"},
    )
    try:
        pool = app.results.client.connection_pool  # type: ignore[attr-defined]
        assert pool.service_name == "svc"
    finally:
        app.close()


def test_sentinels_that_do_not_answer_are_one_clear_error() -> None:
    app = Conveyor("t", broker="redis+sentinel://127.0.0.1:1,127.0.0.1:2/mymaster/0")
    try:
        with pytest.raises(BrokerError) as caught:
            app.broker.stats(["default"])
    finally:
        app.close()
    message = str(caught.value)
    assert "redis+sentinel://127.0.0.1:1,127.0.0.1:2/mymaster/0" in message
    assert "No master found for 'mymaster'" in message and "service name" in message
    assert "ConnectionPool" not in message  # not redis-py's repr of its client
