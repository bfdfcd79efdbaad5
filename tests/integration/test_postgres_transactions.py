"""Transactional enqueue with psycopg: ``apply_async(connection=conn)`` inside
``conn.transaction()`` commits or rolls back with the application's own writes."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest

from conveyor import Conveyor, states
from conveyor.exceptions import ConfigurationError
from conveyor.testing import TestWorker
from tests.pg_server import PostgresServer

pytestmark = pytest.mark.postgres


@pytest.fixture
def app(postgres_server: PostgresServer) -> Iterator[Conveyor]:
    url = postgres_server.url()
    app = Conveyor(
        "txn",
        broker=url,
        result_backend=url,
        broker_transport_options={"key_prefix": f"tx{uuid.uuid4().hex[:10]}"},
    )
    runs: list[str] = []

    @app.task(name="txn.signup")
    def signup(email: str) -> str:
        runs.append(email)
        return email

    app.runs = runs  # type: ignore[attr-defined]
    postgres_server.sql("CREATE TABLE IF NOT EXISTS users (email text PRIMARY KEY)")
    yield app
    app.close()


@pytest.fixture
def conn(postgres_server: PostgresServer) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    with psycopg.connect(postgres_server.url(), autocommit=True) as connection:
        yield connection


def ready(app: Conveyor) -> int:
    return sum(s.ready for s in app.broker.stats().values())


def test_rollback_means_the_task_never_runs(app: Conveyor, conn: psycopg.Connection) -> None:  # type: ignore[type-arg]
    email = f"{uuid.uuid4().hex}@example.com"
    sent = []

    def sign_up() -> None:
        with conn.transaction():
            conn.execute("INSERT INTO users VALUES (%s)", (email,))
            sent.append(app.tasks["txn.signup"].apply_async((email,), connection=conn))
            raise RuntimeError("the sign-up failed")

    with pytest.raises(RuntimeError):
        sign_up()
    [result] = sent
    assert ready(app) == 0
    with TestWorker(app) as worker:
        worker.run_until_idle()
    assert app.runs == []  # type: ignore[attr-defined]
    assert result.state == states.PENDING  # not even a QUEUED record survived


def test_commit_means_it_runs_once_and_workers_never_see_it_before(
    app: Conveyor,
    conn: psycopg.Connection,  # type: ignore[type-arg]
) -> None:
    email = f"{uuid.uuid4().hex}@example.com"
    with conn.transaction():
        conn.execute("INSERT INTO users VALUES (%s)", (email,))
        result = app.tasks["txn.signup"].apply_async((email,), connection=conn)
        # Another client (a worker) sees nothing while the transaction is open.
        assert app.broker.lease(["celery", "default"], 10, 0.2) == []
        assert ready(app) == 0
    assert ready(app) == 1
    with TestWorker(app) as worker:
        worker.run_until_idle()
    assert app.runs == [email]  # type: ignore[attr-defined]
    assert result.get(timeout=10) == email


def test_in_autocommit_mode_it_is_sent_at_once(app: Conveyor, conn: psycopg.Connection) -> None:  # type: ignore[type-arg]
    app.tasks["txn.signup"].apply_async(("a@example.com",), connection=conn)
    assert ready(app) == 1


def test_a_client_side_binding_connection_works(
    app: Conveyor, postgres_server: PostgresServer
) -> None:
    # Django's psycopg 3 backend binds parameters on the client (ClientCursor) by default.
    with psycopg.connect(
        postgres_server.url(), autocommit=True, cursor_factory=psycopg.ClientCursor
    ) as client_side:
        app.tasks["txn.signup"].apply_async(("c@example.com",), connection=client_side)
        app.send_many([app.tasks["txn.signup"].s("d@example.com")])
    assert ready(app) == 2


def test_a_connection_of_another_kind_is_refused(app: Conveyor) -> None:
    with pytest.raises(ConfigurationError, match="psycopg"):
        app.tasks["txn.signup"].apply_async(("x",), connection=object())


def test_a_connection_to_another_database_is_refused(
    app: Conveyor, postgres_server: PostgresServer
) -> None:
    other = psycopg.connect(postgres_server.url(database="postgres"))
    with other, pytest.raises(ConfigurationError, match="the broker's database"):
        app.tasks["txn.signup"].apply_async(("x",), connection=other)
