"""Fixtures of the conformance suite: every broker and result store, built the same way.

Each test gets fresh objects with a unique ``key_prefix``: ``memory://`` in-process,
``sqlite:///<tmp_path>/...`` in a file of its own, ``redis://`` on one redis-server per session
(started on first use). Backends whose module does not exist yet are skipped with a reason.
"""

from __future__ import annotations

import importlib.util
import uuid
from collections.abc import Callable, Iterator

import pytest

from conveyor.brokers import BrokerOptions, create_broker
from conveyor.brokers.base import Broker
from conveyor.results.base import ResultStore
from tests.helpers import closing_all, redis_fixture, result_stores
from tests.servers import RedisServer

from .support import LEASE_TIMEOUT, MAX_DELIVERIES

BACKENDS = [
    pytest.param("memory", id="memory"),
    pytest.param("sqlite", id="sqlite"),
    pytest.param("redis", id="redis", marks=pytest.mark.redis),
]

#: Default ``expires`` of conformance result stores (long enough never to matter).
RESULT_EXPIRES = 600.0

BrokerFactory = Callable[..., Broker]
StoreFactory = Callable[..., ResultStore]


def _require(module: str) -> None:
    """Import a backend's module: a missing or broken module is an error, never a skip."""
    importlib.import_module(module)


conformance_redis = redis_fixture(appendonly=False, scope="session")


def _url(kind: str, backend: str, request: pytest.FixtureRequest) -> str:
    if backend == "memory":
        return "memory://"
    _require(f"conveyor.{kind}.{backend}")
    if backend == "sqlite":
        tmp_path = request.getfixturevalue("tmp_path")
        return f"sqlite:///{tmp_path}/{kind}.db"
    server: RedisServer = request.getfixturevalue("conformance_redis")
    return server.url


@pytest.fixture
def key_prefix() -> str:
    return f"cf{uuid.uuid4().hex[:12]}"


# -- brokers -----------------------------------------------------------------------------
@pytest.fixture(params=BACKENDS)
def broker_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def broker_url(broker_backend: str, request: pytest.FixtureRequest) -> str:
    return _url("brokers", broker_backend, request)


@pytest.fixture
def make_broker(broker_url: str, key_prefix: str) -> Iterator[BrokerFactory]:
    """Build a broker on the test's URL and prefix (overrides: BrokerOptions fields); every
    broker built is closed after the test."""

    def make(**overrides: object) -> Broker:
        options: dict[str, object] = {
            "lease_timeout": LEASE_TIMEOUT,
            "max_deliveries": MAX_DELIVERIES,
            "key_prefix": key_prefix,
        }
        options.update(overrides)
        return create_broker(broker_url, BrokerOptions(**options))  # type: ignore[arg-type]

    yield from closing_all(make)


@pytest.fixture
def broker(make_broker: BrokerFactory) -> Broker:
    return make_broker()


@pytest.fixture
def peer(broker: Broker, broker_backend: str, make_broker: BrokerFactory) -> Broker:
    """A second client of the same broker (another worker or producer). ``memory://`` state
    lives in one object, so there the peer is the broker itself."""
    return broker if broker_backend == "memory" else make_broker()


# -- result stores -----------------------------------------------------------------------
@pytest.fixture(params=BACKENDS)
def store_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store_url(store_backend: str, request: pytest.FixtureRequest) -> str:
    return _url("results", store_backend, request)


@pytest.fixture
def make_store(store_url: str, key_prefix: str) -> Iterator[StoreFactory]:
    yield from result_stores(store_url, key_prefix, RESULT_EXPIRES)


@pytest.fixture
def result_store(make_store: StoreFactory) -> ResultStore:
    return make_store()


@pytest.fixture
def store_peer(
    result_store: ResultStore, store_backend: str, make_store: StoreFactory
) -> ResultStore:
    """A second client of the same result store; the store itself for ``memory://``."""
    return result_store if store_backend == "memory" else make_store()
