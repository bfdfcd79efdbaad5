"""The ResultStore and KeyValue conformance suites, run against the ORM store (``django://``)
and its ``kv``."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from conveyor.contrib.django.results import DjangoResultStore
from conveyor.kv import KeyValue
from conveyor.results import create_result_store
from conveyor.results.base import ResultRecord, ResultStore
from tests.conformance import test_kv as kv_conformance
from tests.conformance import test_result_store as conformance
from tests.helpers import result_stores

from .testproj.shop.models import Order

pytestmark = pytest.mark.django_db(transaction=True)

# Every conformance test, collected here with this module's fixtures.
for _suite in (conformance, kv_conformance):
    for _name in dir(_suite):
        if _name.startswith("test_"):
            globals()[_name] = getattr(_suite, _name)

StoreFactory = Callable[..., ResultStore]


@pytest.fixture
def store_backend() -> str:
    return "django"


@pytest.fixture
def key_prefix() -> str:
    import uuid

    return f"cf{uuid.uuid4().hex[:12]}"


@pytest.fixture
def make_store(key_prefix: str) -> Iterator[StoreFactory]:
    yield from result_stores("django://", key_prefix, 600.0)


@pytest.fixture
def result_store(make_store: StoreFactory) -> ResultStore:
    return make_store()


@pytest.fixture
def store_peer(make_store: StoreFactory) -> ResultStore:
    return make_store()


@pytest.fixture
def kv_backend() -> tuple[str, str]:
    return ("results", "django")


@pytest.fixture
def make_kv(make_store: StoreFactory) -> Callable[..., KeyValue]:
    def make(prefix: str | None = None) -> KeyValue:
        return make_store(prefix=prefix).kv

    return make


@pytest.fixture
def kv(make_kv: Callable[..., KeyValue]) -> KeyValue:
    return make_kv()


@pytest.fixture
def kv_peer(make_kv: Callable[..., KeyValue]) -> KeyValue:
    return make_kv()


# -- ORM specifics -------------------------------------------------------------------------
def test_url_picks_the_store_and_alias() -> None:
    store = create_result_store("django://", expires=None, key_prefix="p")
    assert isinstance(store, DjangoResultStore)
    assert store.alias == "default"
    assert DjangoResultStore("django://other").alias == "other"


def test_records_are_rows(result_store: ResultStore) -> None:
    from conveyor.contrib.django.models import TaskResult

    result_store.store(
        [ResultRecord(id="t1", state="SUCCESS", name="shop.add", result=3, worker="w1")]
    )
    row = TaskResult.objects.get(task_id="t1")
    assert (row.task_name, row.state, row.result, row.worker) == ("shop.add", "SUCCESS", 3, "w1")
    assert row.expires_at is not None and row.updated_at is not None


def test_a_record_stored_inside_a_rolled_back_transaction_is_gone(
    result_store: ResultStore,
) -> None:
    from django.db import transaction

    with transaction.atomic():
        Order.objects.create(item="x")
        result_store.store([ResultRecord(id="t2", state="QUEUED")])
        transaction.set_rollback(True)
    assert result_store.get("t2") is None


def test_broken_connection_is_replaced(result_store: ResultStore) -> None:
    from django.db import connection

    result_store.store([ResultRecord(id="t3", state="QUEUED")])
    connection.connection.close()  # the server went away
    with pytest.raises(Exception, match="closed"):
        result_store.get("t3")
    assert result_store.get("t3") is not None  # reconnected


def test_usable_from_a_running_event_loop(result_store: ResultStore) -> None:
    import asyncio

    async def inside_loop() -> ResultRecord | None:
        result_store.store([ResultRecord(id="t4", state="SUCCESS", result=1)])
        return result_store.get("t4")

    record = asyncio.run(inside_loop())
    assert record is not None and record.result == 1
