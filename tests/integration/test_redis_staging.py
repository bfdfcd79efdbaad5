"""A large ``send_many`` on one Redis server is staged (``conveyor.brokers.redis.staging``):
each chunk's messages are numbered and stored by redis-server while the next chunk is encoded,
and queued by the commit once every message was. Nothing is visible before; a bad argument
anywhere sends nothing and leaves nothing; the dedupe, priorities, countdowns and QUEUED
records hold; a stage that went wrong is published again whole, once; a stage nobody
committed is dropped by the sweep."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis

from conveyor import AsyncResult, Conveyor, SerializationError, sending, states
from conveyor._redis_calls import Connections
from conveyor.brokers.base import Message
from conveyor.brokers.redis import RedisBroker
from conveyor.brokers.redis.staging import StagedPublish
from conveyor.message import Envelope
from conveyor.middleware import Middleware
from conveyor.settlement.stream import CHUNK
from tests import helpers
from tests.conftest import wait_until
from tests.helpers import redis_fixture
from tests.servers import RedisServer

pytestmark = pytest.mark.redis

server = redis_fixture(appendonly=False)
admin = helpers.redis_admin

COUNT = CHUNK * 2 + 300


def make_app(url: str, results: str | None = None) -> Conveyor:
    app = Conveyor(
        "staged",
        broker=url,
        result_backend=results or url,
        broker_transport_options={"key_prefix": f"st{uuid.uuid4().hex[:10]}"},
        result_backend_transport_options={"key_prefix": f"st{uuid.uuid4().hex[:10]}"},
    )
    app.task(name="staged.job")(lambda n: n)
    return app


@pytest.fixture
def app(server: RedisServer) -> Iterator[Conveyor]:
    app = make_app(server.url)
    yield app
    app.close()


def broker_of(app: Conveyor) -> RedisBroker:
    assert isinstance(app.broker, RedisBroker)
    return app.broker


def ready(app: Conveyor) -> int:
    return sum(s.ready for s in app.broker.stats().values())


def leftovers(app: Conveyor, admin: redis.Redis) -> dict[str, int]:
    """What a publish may leave beside its messages: values in ``Q:m`` and stages."""
    keys = broker_of(app).keys
    return {
        "values": int(admin.hlen(keys.queue_key("default", "m"))),
        "stages": int(admin.zcard(keys.shared("stages"))),
        "stage lists": sum(1 for k in admin.keys(keys.stage("*")) if not k.endswith(b":done")),
    }


class Watch(Middleware):
    """At message ``at`` (chunks were staged before it), note what a reader sees."""

    def __init__(self, app: Conveyor, at: int) -> None:
        self.app, self.at = app, at
        self.count = 0
        self.seen: tuple[int, int] | None = None

    def uses_hook(self, hook: str) -> bool:
        return hook == "before_publish"

    def before_publish(self, app: Conveyor, envelope: Envelope) -> None:
        self.count += 1
        if self.count == self.at:
            broker = broker_of(self.app)
            values = broker.keys.queue_key("default", "m")
            staged = wait_until(
                lambda: int(broker.client.hlen(values)) >= 2 * CHUNK, 10, "two chunks staged"
            )
            self.seen = (int(staged), len(broker.lease(["default"], 10, 0)))


def test_nothing_is_visible_before_the_commit_then_everything(
    app: Conveyor, admin: redis.Redis
) -> None:
    watch = Watch(app, at=CHUNK * 2 + 100)
    app.add_middleware(watch)
    job = app.tasks["staged.job"]
    results = app.send_many([job.s(n) for n in range(COUNT)])
    # Two chunks were on the server (numbered, stored), none of them leasable.
    assert watch.seen == (True, 0)
    assert ready(app) == COUNT
    records = app.results.get_many([r.id for r in results])
    assert all(r is not None and r.state == states.QUEUED for r in records)
    found = app.broker.lease(["default"], 5, 0)
    assert [d.id for d in found] == [r.id for r in results[:5]]  # FIFO across chunks
    assert leftovers(app, admin) == {"values": COUNT, "stages": 0, "stage lists": 0}


class Ids(Middleware):
    def __init__(self) -> None:
        self.ids: list[str] = []

    def uses_hook(self, hook: str) -> bool:
        return hook == "before_publish"

    def before_publish(self, app: Conveyor, envelope: Envelope) -> None:
        self.ids.append(envelope.id)


def test_a_bad_argument_after_chunks_were_staged_sends_and_leaves_nothing(
    app: Conveyor, admin: redis.Redis
) -> None:
    seen = Ids()
    app.add_middleware(seen)
    job = app.tasks["staged.job"]
    signatures = [job.s(n) for n in range(COUNT)]
    signatures[-5] = job.s(object())
    with pytest.raises(SerializationError):
        app.send_many(signatures)
    assert len(seen.ids) == COUNT - 5  # chunks were staged before the bad one
    assert ready(app) == 0
    assert app.results.get_many(seen.ids) == [None] * len(seen.ids)  # no QUEUED left
    assert leftovers(app, admin) == {"values": 0, "stages": 0, "stage lists": 0}


def test_priorities_countdowns_and_queues_hold(app: Conveyor, admin: redis.Redis) -> None:
    job = app.tasks["staged.job"]
    signatures = [
        job.s(n).set(priority=n % 10, countdown=600 if n % 7 == 0 else 0, queue=f"q{n % 2}")
        for n in range(COUNT)
    ]
    results = app.send_many(signatures)
    stats = app.broker.stats()
    delayed = sum(1 for n in range(COUNT) if n % 7 == 0)
    assert sum(s.delayed for s in stats.values()) == delayed
    assert sum(s.ready for s in stats.values()) == COUNT - delayed
    counts = app.broker.priority_counts(["q0"])["q0"].delayed  # the delayed are tallied
    assert counts is not None and sum(counts.values()) == stats["q0"].delayed
    first = app.broker.lease(["q0", "q1"], 3, 0)
    nines = [r.id for n, r in enumerate(results) if n % 10 == 9 and n % 7 != 0]
    assert [d.id for d in first] == nines[:3]  # 9 first, then FIFO across queues


def test_the_dedupe_skips_what_was_published_and_drops_its_staged_copy(
    app: Conveyor, admin: redis.Redis
) -> None:
    job = app.tasks["staged.job"]
    first = app.send_many([job.s(n) for n in range(10)])
    signatures = [job.s(n) for n in range(COUNT)]
    for n, result in enumerate(first):
        signatures[n * 200] = job.s(n).set(task_id=result.id)
    app.send_many(signatures)
    assert ready(app) == COUNT  # 10 + COUNT - 10
    assert leftovers(app, admin)["values"] == COUNT


def test_records_in_another_store_are_stored_only_with_the_commit(
    server: RedisServer, tmp_path: Path
) -> None:
    app = make_app(server.url, f"sqlite:///{tmp_path}/results.sqlite3")
    try:
        job = app.tasks["staged.job"]
        results = app.send_many([job.s(n) for n in range(COUNT)])
        records = app.results.get_many([r.id for r in results])
        assert all(r is not None and r.state == states.QUEUED for r in records)
        seen = Ids()
        app.add_middleware(seen)
        signatures = [job.s(n) for n in range(COUNT)]
        signatures[-1] = job.s(object())
        with pytest.raises(SerializationError):
            app.send_many(signatures)
        assert ready(app) == COUNT
        assert app.results.get_many(seen.ids) == [None] * len(seen.ids)
    finally:
        app.close()


def republishes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many messages each ordinary publish of the broker carried."""
    counts: list[int] = []
    publish_with = RedisBroker.publish_with

    def watched(self: RedisBroker, first: Any, messages: Any, **kwargs: Any) -> None:
        counts.append(len(messages))
        publish_with(self, first, messages, **kwargs)

    monkeypatch.setattr(RedisBroker, "publish_with", watched)
    return counts


def assert_each_once(app: Conveyor, results: Sequence[AsyncResult[object]]) -> None:
    leased = app.broker.lease(["default"], COUNT + 10, 0)
    assert sorted(d.id for d in leased) == sorted(r.id for r in results)


def drop_stale_stages(app: Conveyor, admin: redis.Redis) -> None:
    """Run the sweep as if every stage's deadline had passed."""
    stages = broker_of(app).keys.shared("stages")
    for stage in admin.zrange(stages, 0, -1):
        admin.zadd(stages, {stage: 0})
    for _ in range(admin.zcard(stages)):
        app.broker.sweep()


def test_a_connection_lost_while_staging_publishes_it_all_again_once(
    app: Conveyor, admin: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    killed: list[int] = []
    built = StagedPublish._chunk_built

    def killing(self: StagedPublish) -> None:
        built(self)
        if not killed:  # the server drops the stage's connection after the first chunk
            killed.append(admin.client_kill_filter(_type="normal", skipme=True))

    monkeypatch.setattr(StagedPublish, "_chunk_built", killing)
    counts = republishes(monkeypatch)
    job = app.tasks["staged.job"]
    results = app.send_many([job.s(n) for n in range(COUNT)])
    assert killed[0] >= 1 and counts == [COUNT]  # the whole batch, once, the ordinary way
    assert_each_once(app, results)
    drop_stale_stages(app, admin)  # what the lost stage held is dropped by the sweep
    assert leftovers(app, admin) == {"values": COUNT, "stages": 0, "stage lists": 0}


def test_a_write_that_times_out_while_staging_publishes_it_all_again_once(
    app: Conveyor, admin: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    send = Connections.send
    failed: list[int] = []

    def timing_out(self: Connections, commands: Any, conn: Any = None) -> Any:
        if conn is not None and not failed:  # the second chunk's write, on the stage's conn
            failed.append(1)
            self.drop(conn)
            raise redis.TimeoutError("Timeout writing to socket")
        return send(self, commands, conn)

    monkeypatch.setattr(Connections, "send", timing_out)
    counts = republishes(monkeypatch)
    job = app.tasks["staged.job"]
    results = app.send_many([job.s(n) for n in range(COUNT)])
    assert failed == [1] and counts == [COUNT]
    assert_each_once(app, results)
    drop_stale_stages(app, admin)
    assert leftovers(app, admin) == {"values": COUNT, "stages": 0, "stage lists": 0}


def test_a_server_that_lost_the_scripts_gets_it_all_the_ordinary_way(
    app: Conveyor, admin: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = app.tasks["staged.job"]
    app.send_many([job.s(n) for n in range(COUNT)])  # the scripts are known loaded now
    assert broker_of(app)._scripts["stage"].loaded
    app.broker.purge(["default"])
    admin.script_flush()
    counts = republishes(monkeypatch)
    results = app.send_many([job.s(n) for n in range(COUNT)])
    assert counts == [COUNT]
    assert_each_once(app, results)
    assert leftovers(app, admin) == {"values": COUNT, "stages": 0, "stage lists": 0}


def test_a_stage_dropped_before_its_commit_is_published_again_whole(
    app: Conveyor, admin: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    staged = StagedPublish._staged

    def stalled(self: StagedPublish) -> bool:
        ok = staged(self)
        drop_stale_stages(app, admin)  # the producer stalled past the stage's deadline
        return ok

    monkeypatch.setattr(StagedPublish, "_staged", stalled)
    counts = republishes(monkeypatch)
    job = app.tasks["staged.job"]
    results = app.send_many([job.s(n) for n in range(COUNT)])
    assert counts == [COUNT]
    assert_each_once(app, results)
    assert leftovers(app, admin) == {"values": COUNT, "stages": 0, "stage lists": 0}


def test_a_producer_that_died_leaves_a_stage_the_sweep_drops(
    app: Conveyor, admin: redis.Redis
) -> None:
    broker = broker_of(app)
    stage = broker.staged()
    assert stage is not None
    stage.add([Message(f"m{n}", "default", b"{}") for n in range(CHUNK + 5)])
    stage._staged()  # on the server, never committed
    assert leftovers(app, admin) == {"values": CHUNK + 5, "stages": 1, "stage lists": 1}
    app.broker.sweep()  # before the deadline: kept
    assert leftovers(app, admin)["stages"] == 1
    drop_stale_stages(app, admin)
    assert leftovers(app, admin) == {"values": 0, "stages": 0, "stage lists": 0}
    assert ready(app) == 0


def test_a_commit_sent_again_adds_nothing_twice(app: Conveyor, admin: redis.Redis) -> None:
    broker = broker_of(app)
    stage = broker.staged()
    assert stage is not None
    stage.add([Message(f"m{n}", "default", b"{}") for n in range(CHUNK)])
    assert stage._staged()
    connections = broker._connections
    assert isinstance(connections, Connections)
    commit = broker._scripts["commit_stage"]
    keys = (broker.keys.shared("seq"), stage._key)
    assert connections.call(commit, keys, ()) == CHUNK
    assert connections.call(commit, keys, ()) == -2  # committed whole before
    assert 0 < admin.pttl(f"{stage._key}:done") <= 300_000  # the mark expires
    assert ready(app) == CHUNK
    gone = (broker.keys.shared("seq"), broker.keys.stage("never"))
    assert connections.call(commit, gone, ()) == -1


def test_stage_scripts_refuse_keys_that_are_not_stages(app: Conveyor, admin: redis.Redis) -> None:
    broker = broker_of(app)
    seq = broker.keys.shared("seq")
    for name in ("commit_stage", "abort_stage"):
        with pytest.raises(redis.ResponseError, match="bad arguments"):
            admin.evalsha(broker._scripts[name].sha, 2, seq, broker.keys.queues)


def test_no_stage_for_a_batch_of_one_chunk(app: Conveyor, admin: redis.Redis) -> None:
    job = app.tasks["staged.job"]
    app.send_many([job.s(n) for n in range(CHUNK)])  # one call: nothing to overlap
    assert ready(app) == CHUNK
    app.send_many([job.s(n) for n in range(CHUNK * 2)])  # ends on a chunk boundary
    assert ready(app) == CHUNK * 3
    assert leftovers(app, admin) == {"values": CHUNK * 3, "stages": 0, "stage lists": 0}


def test_the_send_path_retries_a_lost_commit_as_one_publish(
    app: Conveyor, admin: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit whose connection is lost for good is the publish's failure: the producer's
    publish retry sends it all again, the dedupe adding each message once."""
    execute = Connections.execute
    cut: list[int] = []

    def cutting(self: Connections, calls: Any) -> list[Any]:
        commit = broker_of(app)._scripts["commit_stage"].sha
        if not cut and any(c[1] == commit for c in calls.commands):
            cut.append(1)
            execute(self, calls)  # it ran; its reply is lost
            raise redis.ConnectionError("connection lost")
        return execute(self, calls)

    monkeypatch.setattr(Connections, "execute", cutting)
    republished: list[int] = []
    publish = sending.publish

    def watched(*args: Any, **kwargs: Any) -> None:
        republished.append(len(args[2]))
        publish(*args, **kwargs)

    monkeypatch.setattr(sending, "publish", watched)
    job = app.tasks["staged.job"]
    results = app.send_many([job.s(n) for n in range(COUNT)])
    assert cut == [1] and republished == [COUNT]
    assert_each_once(app, results)
