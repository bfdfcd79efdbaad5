"""The PostgreSQL broker behind PgBouncer in transaction mode (docs/postgres.md, "PgBouncer"):
workers with ``?listen=false&prepare=false`` drain through it, and transactional enqueue on a
connection that goes through it commits or rolls back with the application's writes.

The pool has 3 server connections for many clients, so consecutive statements of one client
land on different server sessions: any session state Conveyor relied on (a prepared statement,
a session advisory lock, a SET, a LISTEN) would break these tests."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from conveyor import Conveyor, states
from conveyor.exceptions import BrokerError
from conveyor.testing import TestWorker
from tests.integration.test_worker_processes import Harness, wait_for
from tests.integration.workerapp import runs
from tests.pg_server import PostgresServer
from tests.pgbouncer_server import PgBouncer

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def bouncer(postgres_server: PostgresServer) -> Iterator[PgBouncer]:
    server = PgBouncer(postgres_server, pool_size=3)
    server.start()
    yield server
    print(server.log())  # shown when a test failed
    server.cleanup()


def pooled_url(bouncer: PgBouncer) -> str:
    return bouncer.url(listen="false", prepare="false")


def test_workers_drain_through_pgbouncer(bouncer: PgBouncer, tmp_path: Path) -> None:
    prefix = f"pb{uuid.uuid4().hex[:10]}"
    harness = Harness(
        pooled_url(bouncer),
        {"broker_transport_options": {"key_prefix": prefix, "poll_interval": 0.1}},
        tmp_path,
    )
    try:
        harness.worker("-c", "2", "--threads", "4")
        path = harness.file("drain")
        sent = [harness.send("record", str(path)) for _ in range(300)]
        wait_for(lambda: len(runs(path)) >= 300, 90, "300 tasks run through PgBouncer")
        for result in sent:
            harness.wait_state(result.id, states.SUCCESS, 30)
        assert len(runs(path)) == 300  # each once
        # Idle workers poll (no LISTEN behind the pooler): a task sent now is still picked up.
        late = harness.send("add", 2, 3)
        assert late.get(timeout=30) == 5
        assert "Traceback" not in harness.output()
    finally:
        print(harness.output())
        harness.close()


@pytest.fixture
def app(bouncer: PgBouncer) -> Iterator[Conveyor]:
    url = pooled_url(bouncer)
    app = Conveyor(
        "bounced",
        broker=url,
        result_backend=url,
        broker_transport_options={"key_prefix": f"pt{uuid.uuid4().hex[:10]}"},
    )
    ran: list[str] = []

    @app.task(name="bounced.signup")
    def signup(email: str) -> str:
        ran.append(email)
        return email

    app.ran = ran  # type: ignore[attr-defined]
    yield app
    app.close()


@pytest.fixture
def conn(
    bouncer: PgBouncer, postgres_server: PostgresServer
) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    postgres_server.sql("CREATE TABLE IF NOT EXISTS bounced_users (email text PRIMARY KEY)")
    # The application's own connection goes through PgBouncer too (psycopg without prepared
    # statements, as PgBouncer 1.18 requires in transaction mode).
    with psycopg.connect(bouncer.url(), autocommit=True, prepare_threshold=None) as connection:
        yield connection


def test_transactional_enqueue_through_pgbouncer(
    app: Conveyor,
    conn: psycopg.Connection,  # type: ignore[type-arg]
    postgres_server: PostgresServer,
) -> None:
    signup = app.tasks["bounced.signup"]
    kept, dropped = f"{uuid.uuid4().hex}@a.example", f"{uuid.uuid4().hex}@b.example"

    def failed_sign_up() -> None:
        with conn.transaction():
            conn.execute("INSERT INTO bounced_users VALUES (%s)", (dropped,))
            signup.apply_async((dropped,), connection=conn)
            raise RuntimeError("the sign-up failed")

    with pytest.raises(RuntimeError):
        failed_sign_up()
    with conn.transaction():
        conn.execute("INSERT INTO bounced_users VALUES (%s)", (kept,))
        result = signup.apply_async((kept,), connection=conn)

    with TestWorker(app) as worker:
        worker.run_until_idle()
    assert app.ran == [kept]  # type: ignore[attr-defined]
    assert result.get(timeout=10) == kept
    users = postgres_server.sql("SELECT email FROM bounced_users ORDER BY email").split()
    assert kept in users and dropped not in users


def test_prepared_statements_behind_pgbouncer_get_an_error_naming_the_fix(
    bouncer: PgBouncer,
) -> None:
    """Without ?prepare=false, PgBouncer 1.18 in transaction mode mixes up psycopg's prepared
    statements across clients: the error says what to add to the URL."""
    url = bouncer.url(listen="false")
    apps = [
        Conveyor(
            "prepared",
            broker=url,
            result_backend=url,
            broker_transport_options={"key_prefix": f"pp{uuid.uuid4().hex[:10]}"},
        )
        for _ in range(4)
    ]

    def publish() -> None:
        for _ in range(50):  # psycopg prepares a statement from its 5th use
            for app in apps:
                app.send_task("prepared.nothing")

    try:
        with pytest.raises(BrokerError, match=r"add \?prepare=false to the URL"):
            publish()
    finally:
        for app in apps:
            app.close()
