"""What the PostgreSQL broker adds to the conformance suite: migrations (versioned, several
processes at once, a schema of one's own, ``conveyor migrate``), clear errors for a wrong
URL, database or permission, dead-lettered malformed rows, table settings, and waking
consumers without polling (LISTEN/NOTIFY) or with polling only (``listen=false``)."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator

import psycopg
import pytest

from conveyor import _postgres
from conveyor.brokers import BrokerOptions, create_broker
from conveyor.brokers.base import Message
from conveyor.brokers.postgres import PostgresBroker
from conveyor.brokers.postgres.schema import MIGRATIONS
from conveyor.exceptions import BrokerError, ConfigurationError, ResultStoreError
from conveyor.results import create_result_store
from tests.conformance.support import run_together, start
from tests.helpers import closing_all
from tests.pg_server import PostgresServer

pytestmark = pytest.mark.postgres


def new_schema() -> str:
    return f"s{uuid.uuid4().hex[:12]}"


@pytest.fixture
def make(postgres_server: PostgresServer) -> Iterator[Callable[..., PostgresBroker]]:
    def build(url: str | None = None, **transport: object) -> PostgresBroker:
        options = BrokerOptions(
            key_prefix=f"pb{uuid.uuid4().hex[:8]}", transport_options=dict(transport)
        )
        broker = create_broker(url or postgres_server.url(), options)
        assert isinstance(broker, PostgresBroker)
        return broker

    yield from closing_all(build)


def message(queue: str = "q", **fields: object) -> Message:
    return Message(id=uuid.uuid4().hex, queue=queue, body=b"{}", **fields)  # type: ignore[arg-type]


# -- schema ----------------------------------------------------------------------------------
def test_tables_live_in_the_configured_schema_with_autovacuum_settings(
    make: Callable[..., PostgresBroker], postgres_server: PostgresServer
) -> None:
    schema = new_schema()
    broker = make(f"{postgres_server.url()}?schema={schema}")
    broker.publish([message()])
    tables = postgres_server.sql(
        f"SELECT relname, array_to_string(reloptions, ',') FROM pg_class c "
        f"JOIN pg_namespace n ON n.oid = c.relnamespace WHERE nspname = '{schema}' "
        "AND relkind = 'r' ORDER BY 1"
    ).splitlines()
    names = [line.split("|")[0] for line in tables]
    assert "conveyor_messages" in names and "conveyor_meta" in names
    messages = next(line for line in tables if line.startswith("conveyor_messages|"))
    assert "autovacuum_vacuum_scale_factor=0.01" in messages
    assert postgres_server.sql(f"SELECT version FROM {schema}.conveyor_meta") == str(
        len(MIGRATIONS)
    )
    assert broker.stats(["q"])["q"].ready == 1


def test_many_processes_starting_at_once_migrate_once(postgres_server: PostgresServer) -> None:
    schema = new_schema()
    url = f"{postgres_server.url()}?schema={schema}"
    code = (
        "import sys; from conveyor.brokers import BrokerOptions, create_broker; "
        "b = create_broker(sys.argv[1], BrokerOptions()); print(b.stats()); b.close()"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, url], stderr=subprocess.PIPE)
        for _ in range(4)
    ]
    errors = [p.communicate(timeout=60)[1].decode() for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, errors
    assert postgres_server.sql(f"SELECT count(*) FROM {schema}.conveyor_meta") == "1"


def test_migrate_false_names_conveyor_migrate_which_creates_the_tables(
    make: Callable[..., PostgresBroker], postgres_server: PostgresServer
) -> None:
    url = f"{postgres_server.url()}?schema={new_schema()}&migrate=false"
    with pytest.raises(BrokerError, match="conveyor migrate"):
        make(url).publish([message()])
    done = subprocess.run(
        [sys.executable, "-m", "conveyor", "migrate", "--url", url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert f"version {len(MIGRATIONS)}" in done.stdout
    make(url).publish([message()])


def test_a_newer_schema_is_refused(
    make: Callable[..., PostgresBroker], postgres_server: PostgresServer
) -> None:
    schema = new_schema()
    make(f"{postgres_server.url()}?schema={schema}").publish([message()])
    postgres_server.sql(f"UPDATE {schema}.conveyor_meta SET version = 99")
    _postgres._CHECKED.clear()  # as in a new process: each checks the version once
    with pytest.raises(BrokerError, match="newer Conveyor"):
        make(f"{postgres_server.url()}?schema={schema}").publish([message()])


# -- clear errors ----------------------------------------------------------------------------
def test_missing_database_says_create_it(
    make: Callable[..., PostgresBroker], postgres_server: PostgresServer
) -> None:
    with pytest.raises(BrokerError, match=r'database "nope" does not exist.*createdb'):
        make(postgres_server.url(database="nope")).publish([message()])


def test_unreachable_server_says_so_and_hides_the_password() -> None:
    url = "postgresql://app:secret@127.0.0.1:1/db"
    broker = create_broker(url, BrokerOptions())
    with pytest.raises(BrokerError, match="cannot be reached") as caught:
        broker.publish([message()])
    assert "secret" not in str(caught.value)
    assert "app:***@" in str(caught.value)


def test_missing_permission_names_the_grant_and_migrate(
    make: Callable[..., PostgresBroker], postgres_server: PostgresServer
) -> None:
    role = f"r{uuid.uuid4().hex[:8]}"
    postgres_server.sql(f"CREATE ROLE {role} LOGIN")
    postgres_server.sql(f"REVOKE CREATE ON SCHEMA public FROM {role}")
    schema = new_schema()
    url = f"{postgres_server.url(user=role)}?schema={schema}"
    with pytest.raises(BrokerError, match=r"permission denied.*GRANT.*conveyor migrate"):
        make(url).publish([message()])
    # Created by an owner, then granted: the role works.
    make(f"{postgres_server.url()}?schema={schema}").publish([message()])
    postgres_server.sql(
        f"GRANT USAGE ON SCHEMA {schema} TO {role}; "
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {role}; "
        f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA {schema} TO {role}"
    )
    assert make(url).stats(["q"]) is not None


def test_bad_urls_are_configuration_errors(postgres_server: PostgresServer) -> None:
    with pytest.raises(ConfigurationError, match="schema name"):
        create_broker(f"{postgres_server.url()}?schema=Robert'); DROP", BrokerOptions())
    with pytest.raises(ConfigurationError, match="listen"):
        create_broker(f"{postgres_server.url()}?listen=maybe", BrokerOptions())
    store = create_result_store(postgres_server.url(database="nope"), expires=1, key_prefix="x")
    with pytest.raises(ResultStoreError, match="does not exist"):
        store.get("id")


# -- bad rows --------------------------------------------------------------------------------
def test_a_malformed_row_is_dead_lettered_with_its_reason(
    make: Callable[..., PostgresBroker], postgres_server: PostgresServer
) -> None:
    broker = make()
    good = message()
    broker.publish([good])
    postgres_server.sql(
        "INSERT INTO conveyor.conveyor_messages (ns, id, queue, priority, body, state) "
        f"VALUES ('{broker.ns}', 'bad', 'q', 42, '\\x00ff', 0)"
    )
    leased = broker.lease(["q"], 10, 0)
    assert [d.id for d in leased] == [good.id]
    [dead] = broker.dead_letters()
    assert (dead.id, dead.reason) == ("bad", "malformed")
    assert "priority 42" in dead.detail


# -- waking consumers ------------------------------------------------------------------------
def test_an_idle_consumer_wakes_on_notify_not_on_its_poll(
    make: Callable[..., PostgresBroker],
) -> None:
    consumer, producer = make(poll_interval=30), None
    producer = make()
    producer.ns = consumer.ns
    consumer.lease(["q"], 1, 0.05)  # starts listening
    waiting = start(consumer.lease, ["q"], 1, 20.0)
    time.sleep(0.3)  # the consumer is blocked in lease() before the publish (scenario)
    sent = time.monotonic()
    producer.publish([message()])
    assert len(waiting.outcome(10)) == 1
    assert waiting.finished_at - sent < 2.0  # far below the 30 s poll


def test_without_listen_consumers_poll(make: Callable[..., PostgresBroker]) -> None:
    consumer = make(listen=False, poll_interval=0.2)
    producer = make()
    producer.ns = consumer.ns
    waiting = start(consumer.lease, ["q"], 1, 20.0)
    time.sleep(0.3)  # the consumer is blocked in lease() before the publish (scenario)
    sent = time.monotonic()
    producer.publish([message()])
    assert len(waiting.outcome(10)) == 1
    assert waiting.finished_at - sent < 2.0


def test_concurrent_leases_skip_each_others_rows(make: Callable[..., PostgresBroker]) -> None:
    brokers = [make() for _ in range(4)]
    for other in brokers[1:]:
        other.ns = brokers[0].ns
    brokers[0].publish([message() for _ in range(200)])
    got = run_together([lambda b=b: b.lease(["q"], 50, 0) for b in brokers])
    ids = [d.id for batch in got for d in batch]
    assert len(ids) == len(set(ids)) == 200


def test_psycopg_connection_required_for_transactional_enqueue(
    postgres_server: PostgresServer,
) -> None:
    from conveyor import Conveyor

    app = Conveyor("t", broker="memory://")
    with pytest.raises(ConfigurationError, match="PostgreSQL broker"):
        app.send_task("x", connection=psycopg)
    app.close()


def test_an_id_twice_in_one_batch_is_published_once_in_its_first_place(
    make: Callable[..., PostgresBroker],
) -> None:
    broker = make()
    first, other = message(), message()
    again = Message(id=first.id, queue="q", body=b"again")
    broker.publish([first, other, again])
    leased = broker.lease(["q"], 10, 0)
    assert [(d.id, d.body) for d in leased] == [(first.id, b"{}"), (other.id, b"{}")]
