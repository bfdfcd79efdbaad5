"""Fixtures of the conformance suite: every broker, result store and key/value storage, built
the same way.

**A new backend joins the suite with one entry in** :data:`BACKENDS`: its name, a function
giving the URL of a fresh server or file for one test, whether it provides a broker and/or a
result store, and the marks its tests need (e.g. a server the suite starts). Every test of
``test_broker.py``, ``test_settlement.py``, ``test_result_store.py`` and ``test_kv.py`` then
runs against it (the key/value tests against the ``kv`` of its broker and of its result store).

Each test gets fresh objects with a unique ``key_prefix``: ``memory://`` in-process,
``sqlite:///<tmp_path>/conveyor.db`` in a file of its own, ``redis://`` on one redis-server per
session (started on first use), ``redis+cluster://`` on one three-primary Redis Cluster with
replicas per session (``tests/cluster_servers.py``).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from urllib.parse import quote

import pytest

from conveyor.brokers import BrokerOptions, create_broker
from conveyor.brokers.base import Broker
from conveyor.kv import KeyValue
from conveyor.results import create_result_store
from conveyor.results.base import ResultStore
from tests.cluster_servers import ClusterDeployment, running_cluster
from tests.helpers import closing_all, redis_fixture, result_stores
from tests.pg_server import PostgresServer
from tests.rabbit_server import RabbitServer
from tests.servers import RedisServer

from .support import LEASE_TIMEOUT, MAX_DELIVERIES


@dataclass(frozen=True)
class Backend:
    """One backend of the suite."""

    name: str
    #: The URL of a fresh server or file for one test (broker and result store share it).
    url: Callable[[pytest.FixtureRequest], str]
    broker: bool = True
    results: bool = True
    marks: tuple[pytest.MarkDecorator, ...] = ()


def _sqlite_url(request: pytest.FixtureRequest) -> str:
    return f"sqlite:///{request.getfixturevalue('tmp_path')}/conveyor.db"


def _redis_url(request: pytest.FixtureRequest) -> str:
    server: RedisServer = request.getfixturevalue("conformance_redis")
    return server.url


def _cluster_url(request: pytest.FixtureRequest) -> str:
    cluster: ClusterDeployment = request.getfixturevalue("conformance_cluster")
    return cluster.url


def _postgres_url(request: pytest.FixtureRequest) -> str:
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.url()


def _amqp_url(request: pytest.FixtureRequest) -> str:
    """RabbitMQ holds messages only: its ``kv`` (revocations, claims) lives in a SQLite file
    named by the ``kv_url`` parameter, as an app gives it its result store's URL."""
    server: RabbitServer = request.getfixturevalue("rabbit_server")
    kv = quote(f"sqlite:///{request.getfixturevalue('tmp_path')}/kv.db", safe="")
    return f"{server.url}?kv_url={kv}"


BACKENDS = [
    Backend("memory", lambda request: "memory://"),
    Backend("sqlite", _sqlite_url),
    Backend("redis", _redis_url, marks=(pytest.mark.redis,)),
    Backend("redis-cluster", _cluster_url, marks=(pytest.mark.redis,)),
    Backend("postgres", _postgres_url, marks=(pytest.mark.postgres,)),
    Backend("amqp", _amqp_url, results=False, marks=(pytest.mark.amqp,)),
]
_BY_NAME = {backend.name: backend for backend in BACKENDS}

#: Default ``expires`` of conformance result stores (long enough never to matter).
RESULT_EXPIRES = 600.0

BrokerFactory = Callable[..., Broker]
StoreFactory = Callable[..., ResultStore]
KeyValueFactory = Callable[..., KeyValue]

conformance_redis = redis_fixture(appendonly=False, scope="session")


@pytest.fixture(scope="session")
def conformance_cluster() -> Iterator[ClusterDeployment]:
    with running_cluster() as cluster:
        yield cluster


def _params(kind: str) -> list[object]:
    return [pytest.param(b.name, id=b.name, marks=b.marks) for b in BACKENDS if getattr(b, kind)]


def _url(backend: str, request: pytest.FixtureRequest) -> str:
    return _BY_NAME[backend].url(request)


@pytest.fixture
def key_prefix() -> str:
    return f"cf{uuid.uuid4().hex[:12]}"


# -- brokers -----------------------------------------------------------------------------
@pytest.fixture(params=_params("broker"))
def broker_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def broker_url(broker_backend: str, request: pytest.FixtureRequest) -> str:
    return _url(broker_backend, request)


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
@pytest.fixture(params=_params("results"))
def store_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store_url(store_backend: str, request: pytest.FixtureRequest) -> str:
    return _url(store_backend, request)


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


# -- key/value storage: the ``kv`` of every broker and every result store ---------------------
@pytest.fixture(
    params=[
        pytest.param((owner, b.name), id=f"{owner}-{b.name}", marks=b.marks)
        for owner in ("broker", "results")
        for b in BACKENDS
        if getattr(b, owner)
    ]
)
def kv_backend(request: pytest.FixtureRequest) -> tuple[str, str]:
    """(owner, backend): whose ``kv`` it is (a broker's or a result store's), on what."""
    owner, name = request.param
    return str(owner), str(name)


@pytest.fixture
def make_kv(
    kv_backend: tuple[str, str], key_prefix: str, request: pytest.FixtureRequest
) -> Iterator[KeyValueFactory]:
    """``make(prefix=None)``: the ``kv`` of a new broker or result store on the test's URL;
    its owner is closed after the test."""
    owner, backend = kv_backend
    url = _url(backend, request)
    owners: list[Broker | ResultStore] = []

    def make(prefix: str | None = None) -> KeyValue:
        prefix = key_prefix if prefix is None else prefix
        built: Broker | ResultStore
        if owner == "broker":
            built = create_broker(url, BrokerOptions(key_prefix=prefix))
        else:
            built = create_result_store(url, expires=RESULT_EXPIRES, key_prefix=prefix)
        owners.append(built)
        return built.kv

    yield make
    for built in owners:
        built.close()


@pytest.fixture
def kv(make_kv: KeyValueFactory) -> KeyValue:
    return make_kv()


@pytest.fixture
def kv_peer(kv: KeyValue, kv_backend: tuple[str, str], make_kv: KeyValueFactory) -> KeyValue:
    """A second client of the same storage; the same object for ``memory://``."""
    return kv if kv_backend[1] == "memory" else make_kv()
