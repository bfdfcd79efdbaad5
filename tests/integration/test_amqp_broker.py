"""RabbitMQ broker options and errors on the session's rabbitmq-server: classic queues with
priorities, a wrong URL, vhost or credentials as one clear error (password never shown)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from conveyor.brokers import BrokerOptions, create_broker
from conveyor.brokers.base import Message
from conveyor.exceptions import BrokerError, ConfigurationError
from tests.rabbit_server import RabbitServer

pytestmark = pytest.mark.amqp


def test_classic_queue_type_serves_priority_nine_first(
    rabbit_server: RabbitServer, tmp_path: Path
) -> None:
    options = BrokerOptions(
        key_prefix=f"cl{uuid.uuid4().hex[:8]}", transport_options={"queue_type": "classic"}
    )
    broker = create_broker(f"{rabbit_server.url}?kv_url=sqlite:///{tmp_path}/kv.db", options)
    try:
        sent = [Message(uuid.uuid4().hex, "default", b"", priority=p) for p in (0, 9, 5, 9, 1)]
        broker.publish(sent)
        got = broker.lease(["default"], 10, 0)
        assert [d.priority for d in got] == [9, 9, 5, 1, 0]
        assert [d.id for d in got[:2]] == [sent[1].id, sent[3].id]  # FIFO within a priority
        broker.ack(got)
    finally:
        broker.close()


def test_unknown_queue_type_is_a_configuration_error(tmp_path: Path) -> None:
    options = BrokerOptions(transport_options={"queue_type": "stream"})
    with pytest.raises(ConfigurationError, match="queue_type"):
        create_broker(f"amqp://localhost//?kv_url=sqlite:///{tmp_path}/kv.db", options)


def test_without_a_key_value_store_the_error_says_what_to_set() -> None:
    with pytest.raises(ConfigurationError, match="result_backend"):
        create_broker("amqp://localhost//", BrokerOptions())


@pytest.fixture
def kv_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/kv.db"


@pytest.mark.parametrize(
    ("change", "says"),
    [
        pytest.param(lambda u: u.replace("guest:guest", "guest:wrong"), "login refused", id="pw"),
        pytest.param(lambda u: u.replace("guest:guest", "nobody:x"), "login refused", id="user"),
        pytest.param(lambda u: u[: -len("//")] + "/missing", "vhost", id="vhost"),
        pytest.param(lambda u: u.rsplit(":", 1)[0] + ":1//", "cannot connect", id="port"),
    ],
)
def test_wrong_credentials_vhost_or_port_is_one_clear_error(
    rabbit_server: RabbitServer, kv_url: str, change: Callable[[str], str], says: str
) -> None:
    url = change(f"amqp://guest:guest@127.0.0.1:{rabbit_server.port}//")
    broker = create_broker(f"{url}?kv_url={kv_url}", BrokerOptions(key_prefix="bad"))
    with pytest.raises(BrokerError, match=says) as raised:
        broker.lease(["default"], 1, 0)
    assert "wrong" not in str(raised.value), "the password leaked into the error"
    broker.close()


@pytest.mark.parametrize(
    "url",
    [
        "amqp://guest:secret@127.0.0.1:notaport//",
        "amqp://guest:secret@127.0.0.1//?frobnicate=1",
    ],
)
def test_malformed_url_is_a_configuration_error(url: str, kv_url: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        create_broker(f"{url}&kv_url={kv_url}" if "?" in url else url, BrokerOptions())
    assert "secret" not in str(raised.value)
