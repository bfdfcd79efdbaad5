"""Transactional enqueue from async code: ``await task.aapply_async(args, connection=aconn)``
with a psycopg ``AsyncConnection`` writes on that connection, inside its transaction."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import psycopg
import pytest

from conveyor import Conveyor, states
from conveyor.exceptions import ConfigurationError
from conveyor.message import Envelope
from conveyor.middleware import Middleware
from conveyor.testing import TestWorker
from tests.pg_server import PostgresServer

pytestmark = pytest.mark.postgres

AConn = psycopg.AsyncConnection[Any]


@pytest.fixture
def app(postgres_server: PostgresServer) -> Iterator[Conveyor]:
    url = postgres_server.url()
    app = Conveyor(
        "atxn",
        broker=url,
        result_backend=url,
        broker_transport_options={"key_prefix": f"atx{uuid.uuid4().hex[:10]}"},
    )
    runs: list[str] = []

    @app.task(name="atxn.signup")
    def signup(email: str) -> str:
        runs.append(email)
        return email

    app.runs = runs  # type: ignore[attr-defined]
    postgres_server.sql("CREATE TABLE IF NOT EXISTS ausers (email text PRIMARY KEY)")
    yield app
    app.close()


def on_connection(url: str, body: Callable[[AConn], Coroutine[Any, Any, object]]) -> object:
    """Run ``body(aconn)`` on a fresh async connection (autocommit, as web apps use them)."""

    async def main() -> object:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as aconn:
            return await body(aconn)

    return asyncio.run(main())


def ready(app: Conveyor) -> int:
    return sum(s.ready for s in app.broker.stats().values())


def test_rollback_means_the_task_never_runs(app: Conveyor, postgres_server: PostgresServer) -> None:
    email = f"{uuid.uuid4().hex}@example.com"
    sent = []

    async def sign_up(aconn: AConn) -> None:
        async with aconn.transaction():
            await aconn.execute("INSERT INTO ausers VALUES (%s)", (email,))
            result = await app.tasks["atxn.signup"].aapply_async((email,), connection=aconn)
            sent.append(result)
            assert ready(app) == 0  # not visible to anyone else yet
            raise RuntimeError("the sign-up failed")

    with pytest.raises(RuntimeError):
        on_connection(postgres_server.url(), sign_up)
    [result] = sent
    assert ready(app) == 0
    with TestWorker(app) as worker:
        worker.run_until_idle()
    assert app.runs == []  # type: ignore[attr-defined]
    assert result.state == states.PENDING  # the QUEUED record rolled back too
    assert postgres_server.sql(f"SELECT count(*) FROM ausers WHERE email = '{email}'") == "0"


def test_commit_means_it_runs_once_and_workers_never_see_it_before(
    app: Conveyor, postgres_server: PostgresServer
) -> None:
    email = f"{uuid.uuid4().hex}@example.com"
    seen_inside: list[int] = []

    async def sign_up(aconn: AConn) -> object:
        async with aconn.transaction():
            await aconn.execute("INSERT INTO ausers VALUES (%s)", (email,))
            result = await app.tasks["atxn.signup"].aapply_async((email,), connection=aconn)
            # A worker leasing meanwhile (another connection) finds nothing.
            leased = await asyncio.to_thread(app.broker.lease, ["celery", "default"], 10, 0.2)
            seen_inside.append(len(leased))
            assert result.state == states.PENDING  # the QUEUED record is not committed yet
        return result

    result = on_connection(postgres_server.url(), sign_up)
    assert seen_inside == [0]
    assert ready(app) == 1
    with TestWorker(app) as worker:
        worker.run_until_idle()
    assert app.runs == [email]  # type: ignore[attr-defined]
    assert result.get(timeout=10) == email  # type: ignore[attr-defined]


def test_it_is_written_on_the_event_loop_not_in_a_thread(
    app: Conveyor, postgres_server: PostgresServer
) -> None:
    threads: list[int] = []

    class PublishThread(Middleware):
        def after_publish(self, app: Conveyor, envelope: Envelope) -> None:
            threads.append(threading.get_ident())

    app.add_middleware(PublishThread())

    async def send(aconn: AConn) -> int:
        async with aconn.transaction():
            for n in range(3):
                await app.tasks["atxn.signup"].aapply_async((f"n{n}",), connection=aconn)
        return threading.get_ident()

    loop_thread = on_connection(postgres_server.url(), send)
    assert threads == [loop_thread] * 3
    assert ready(app) == 3


def test_sync_apply_async_with_an_async_connection_names_aapply_async(
    app: Conveyor, postgres_server: PostgresServer
) -> None:
    async def misuse(aconn: AConn) -> None:
        with pytest.raises(ConfigurationError, match="aapply_async"):
            app.tasks["atxn.signup"].apply_async(("x",), connection=aconn)

    on_connection(postgres_server.url(), misuse)
    assert ready(app) == 0


def test_other_connections_are_refused(app: Conveyor, postgres_server: PostgresServer) -> None:
    task = app.tasks["atxn.signup"]

    async def misuse() -> None:
        with pytest.raises(ConfigurationError, match=r"psycopg\.AsyncConnection"):
            await task.aapply_async(("x",), connection=object())
        with (
            psycopg.connect(postgres_server.url()) as sync_conn,
            pytest.raises(ConfigurationError, match=r"apply_async\(connection=conn\)"),
        ):
            await task.aapply_async(("x",), connection=sync_conn)
        other = await psycopg.AsyncConnection.connect(postgres_server.url(database="postgres"))
        async with other:
            with pytest.raises(ConfigurationError, match="the broker's database"):
                await task.aapply_async(("x",), connection=other)

    asyncio.run(misuse())
    assert ready(app) == 0


def test_without_a_connection_aapply_async_sends_as_before(app: Conveyor) -> None:
    asyncio.run(app.tasks["atxn.signup"].aapply_async(("plain",)))
    assert ready(app) == 1
