"""A large ``send_many`` on PostgreSQL is streamed (chunks inserted in one transaction while
the rest is encoded): nothing is visible before the last message is encoded, a bad argument
anywhere sends nothing, QUEUED records are all there after, and a lost connection is retried
as a whole."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any

import psycopg
import pytest

from conveyor import Conveyor, SerializationError, sending, states
from conveyor.message import Envelope
from conveyor.middleware import Middleware
from conveyor.settlement.stream import CHUNK
from tests.pg_server import PostgresServer

pytestmark = pytest.mark.postgres

COUNT = CHUNK * 2 + 300


def make_app(url: str, results: str | None) -> Conveyor:
    app = Conveyor(
        "bulk",
        broker=url,
        result_backend=results or url,
        broker_transport_options={"key_prefix": f"bk{uuid.uuid4().hex[:10]}"},
        result_backend_transport_options={"key_prefix": f"bk{uuid.uuid4().hex[:10]}"},
    )
    app.task(name="bulk.job")(lambda n: n)
    return app


@pytest.fixture
def app(postgres_server: PostgresServer) -> Iterator[Conveyor]:
    app = make_app(postgres_server.url(), None)
    yield app
    app.close()


def ready(app: Conveyor) -> int:
    return sum(s.ready for s in app.broker.stats().values())


class Watch(Middleware):
    """At message ``at``, wait until the stream's transaction holds a written chunk, then
    count what another connection sees."""

    def __init__(self, app: Conveyor, url: str, at: int) -> None:
        self.app, self.url, self.at = app, url, at
        self.count = 0
        self.seen: int | None = None

    def uses_hook(self, hook: str) -> bool:
        return hook == "before_publish"

    def before_publish(self, app: Conveyor, envelope: Envelope) -> None:
        self.count += 1
        if self.count != self.at:
            return
        with psycopg.connect(self.url, autocommit=True) as conn:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE state = 'idle in transaction'"
                    " AND datname = current_database()"
                ).fetchone()
                if row and row[0]:
                    break
                time.sleep(0.01)  # polling the server's view of the transaction
            else:
                raise AssertionError("the first chunk never reached the server")
        self.seen = ready(self.app)


def test_nothing_is_visible_before_the_end_then_everything(
    app: Conveyor, postgres_server: PostgresServer
) -> None:
    watch = Watch(app, postgres_server.url(), at=CHUNK * 2 + 100)
    app.add_middleware(watch)
    job = app.tasks["bulk.job"]
    results = app.send_many([job.s(n) for n in range(COUNT)])
    assert watch.seen == 0
    assert ready(app) == COUNT
    records = app.results.get_many([r.id for r in results])
    assert all(r is not None and r.state == states.QUEUED for r in records)
    found = app.broker.lease(["default"], 5, 0)
    assert [d.id for d in found] == [r.id for r in results[:5]]  # FIFO across chunks


class Ids(Middleware):
    def __init__(self) -> None:
        self.ids: list[str] = []

    def uses_hook(self, hook: str) -> bool:
        return hook == "before_publish"

    def before_publish(self, app: Conveyor, envelope: Envelope) -> None:
        self.ids.append(envelope.id)


def test_a_bad_argument_after_chunks_were_sent_sends_nothing(app: Conveyor) -> None:
    seen = Ids()
    app.add_middleware(seen)
    job = app.tasks["bulk.job"]
    signatures = [job.s(n) for n in range(COUNT)]
    signatures[-5] = job.s(object())
    with pytest.raises(SerializationError):
        app.send_many(signatures)
    assert ready(app) == 0
    assert len(seen.ids) == COUNT - 5  # chunks were streamed before the bad one
    assert app.results.get_many(seen.ids) == [None] * len(seen.ids)  # no QUEUED left


def test_records_in_another_store_are_stored_before_the_commit(
    postgres_server: PostgresServer, tmp_path: Any
) -> None:
    app = make_app(postgres_server.url(), f"sqlite:///{tmp_path}/results.sqlite3")
    try:
        job = app.tasks["bulk.job"]
        results = app.send_many([job.s(n) for n in range(COUNT)])
        assert ready(app) == COUNT
        records = app.results.get_many([r.id for r in results])
        assert all(r is not None and r.state == states.QUEUED for r in records)
        signatures = [job.s(n) for n in range(COUNT)]
        signatures[-1] = job.s(object())
        before = len(app.results.get_many([r.id for r in results]))
        with pytest.raises(SerializationError):
            app.send_many(signatures)
        assert ready(app) == COUNT and before == COUNT
    finally:
        app.close()


def test_a_lost_connection_mid_stream_is_retried_as_one_publish(
    app: Conveyor, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = app.broker.db
    real = db.connection
    cut: list[str] = []

    def failing() -> AbstractContextManager[Any]:
        # The stream's connection (the first borrowed in the sender thread) is cut under
        # it: the server ends that backend, as a restart or a network cut would.
        if threading.current_thread().name == "conveyor-publish" and not cut:
            cut.append("stream")
            return _killed(real())
        return real()

    republished: list[int] = []
    publish = sending.publish

    def watched(*args: Any, **kwargs: Any) -> None:
        republished.append(len(args[2]))  # (app, envelopes, messages, ...)
        publish(*args, **kwargs)

    monkeypatch.setattr(sending, "publish", watched)
    db.connection = failing  # type: ignore[method-assign]
    try:
        job = app.tasks["bulk.job"]
        results = app.send_many([job.s(n) for n in range(COUNT)])
    finally:
        db.connection = real  # type: ignore[method-assign]
    assert cut == ["stream"] and republished == [COUNT]  # the whole batch, once
    assert ready(app) == COUNT
    leased = app.broker.lease(["default"], COUNT + 10, 0)
    assert sorted(d.id for d in leased) == sorted(r.id for r in results)


class _killed(AbstractContextManager[Any]):
    """A pooled connection whose backend is terminated once it is borrowed."""

    def __init__(self, inner: AbstractContextManager[Any]) -> None:
        self.inner = inner

    def __enter__(self) -> Any:
        conn = self.inner.__enter__()
        pid = conn.info.backend_pid
        with psycopg.connect(conn.info.dsn, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        return conn

    def __exit__(self, *exc: object) -> bool | None:
        return self.inner.__exit__(*exc)


def test_a_batch_of_whole_chunks_and_a_small_one(app: Conveyor) -> None:
    job = app.tasks["bulk.job"]
    app.send_many([job.s(n) for n in range(CHUNK * 2)])  # ends on a chunk boundary
    assert ready(app) == CHUNK * 2
    app.send_many([job.s(n) for n in range(3)])  # one statement, no stream
    assert ready(app) == CHUNK * 2 + 3
