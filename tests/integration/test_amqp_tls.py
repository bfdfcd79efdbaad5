"""``amqps://`` against the session's RabbitMQ node's TLS listener (a self-signed certificate,
trusted with ``?cafile=``): the whole path, publish to result, runs encrypted; an untrusted
certificate or a plain-AMQP client on the TLS port is one clear error."""

from __future__ import annotations

import ssl
import uuid
from pathlib import Path

import pytest

from conveyor import Conveyor
from conveyor.brokers import BrokerOptions, create_broker
from conveyor.brokers.amqp.connection import parse_url
from conveyor.brokers.base import Message
from conveyor.exceptions import BrokerError, ConfigurationError
from conveyor.publishing import is_connection_error
from conveyor.testing import TestWorker
from tests.rabbit_server import RabbitServer

pytestmark = pytest.mark.amqp


def test_tasks_run_over_amqps(rabbit_server: RabbitServer, tmp_path: Path) -> None:
    app = Conveyor(
        "tls",
        broker=rabbit_server.tls_url,
        result_backend=f"sqlite:///{tmp_path}/results.db",
        broker_transport_options={"key_prefix": f"tls{uuid.uuid4().hex[:8]}"},
    )

    @app.task(name="tls.add")
    def add(x: int, y: int) -> int:
        return x + y

    try:
        sent = [add.delay(i, i) for i in range(20)]
        with TestWorker(app) as worker:
            worker.run_until_idle()
        assert [result.get(timeout=10) for result in sent] == [2 * i for i in range(20)]
    finally:
        app.close()


def test_an_untrusted_certificate_is_one_clear_error(
    rabbit_server: RabbitServer, tmp_path: Path
) -> None:
    # Without ?cafile= the system's CAs are used, and they do not know the node's certificate.
    url = f"amqps://guest:secret@127.0.0.1:{rabbit_server.tls_port}//?kv_url=sqlite:///{tmp_path}/kv.db"
    broker = create_broker(url, BrokerOptions(key_prefix="untrusted"))
    try:
        with pytest.raises(BrokerError, match="certificate verify failed") as raised:
            broker.publish([Message(uuid.uuid4().hex, "default", b"{}")])
        assert "secret" not in str(raised.value), "the password leaked into the error"
        # Not a connection that may come back: a producer does not retry it.
        assert not is_connection_error(raised.value)
    finally:
        broker.close()


def test_the_server_certificate_is_checked_against_the_host() -> None:
    # py-amqp checks the certificate's names when it is given the host to expect.
    params = parse_url("amqps://guest@broker.internal//")
    assert params.tls is not None
    assert (params.tls["server_hostname"], params.tls["cert_reqs"]) == (
        "broker.internal",
        ssl.CERT_REQUIRED,
    )


def test_missing_tls_files_are_a_configuration_error(tmp_path: Path) -> None:
    url = f"amqps://guest:secret@127.0.0.1//?cafile={tmp_path}/none.pem&kv_url=sqlite:///{tmp_path}/kv.db"
    with pytest.raises(ConfigurationError, match="TLS files") as raised:
        create_broker(url, BrokerOptions())
    assert "secret" not in str(raised.value)


def test_plain_amqp_on_the_tls_port_is_one_clear_error(
    rabbit_server: RabbitServer, tmp_path: Path
) -> None:
    url = (
        f"amqp://guest:guest@127.0.0.1:{rabbit_server.tls_port}//?kv_url=sqlite:///{tmp_path}/kv.db"
    )
    broker = create_broker(url, BrokerOptions(key_prefix="plain"))
    try:
        with pytest.raises(BrokerError, match=r"127\.0\.0\.1"):
            broker.lease(["default"], 1, 0)
    finally:
        broker.close()
