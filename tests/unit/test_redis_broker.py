"""RedisBroker on a real redis-server: layout, timing, batching, resilience.

The behaviour every broker shares is in tests/conformance; this file checks what is specific to
Redis: keys and clocks in Redis, server-side blocking, one call per batch, URLs and secrets,
restarts, NOSCRIPT, forks.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import time
import uuid
import warnings
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis

from conveyor._redis import connect
from conveyor._redis_calls import Calls, Connections
from conveyor.brokers.base import BrokerOptions, Delivery, Message, QueueStats
from conveyor.brokers.redis import CHUNK, RedisBroker
from conveyor.brokers.redis import publish as redis_publish
from conveyor.exceptions import BrokerError, ConfigurationError
from conveyor.results.base import ResultRecord
from conveyor.results.memory import MemoryResultStore
from conveyor.results.redis import RedisResultStore
from conveyor.settlement import open_settlement
from conveyor.settlement.redis import RedisSettlement
from tests import helpers
from tests.certs import self_signed
from tests.conftest import wait_until
from tests.helpers import Call, closing_all, redis_fixture
from tests.servers import RedisServer, free_port

pytestmark = pytest.mark.redis

T = TypeVar("T")
Q = "default"
LEASE = 1.0
PASSWORD = "s3cret-Pa55word"


def blocked_in(client: redis.Redis, command: str, count: int = 1) -> bool:
    """True once ``count`` clients sit in a blocking ``command`` on the server."""
    listing = client.client_list()
    return sum(1 for c in listing if c.get("cmd") == command) >= count


def msg(body: bytes = b"x", queue: str = Q, **fields: Any) -> Message:
    return Message(uuid.uuid4().hex, queue, body, **fields)


# -- fixtures ----------------------------------------------------------------------------
server = redis_fixture(appendonly=True)  # AOF fsynced on every write
admin = helpers.redis_admin


@pytest.fixture
def make(server: RedisServer) -> Iterator[Callable[..., RedisBroker]]:
    """Build brokers on the module server with a per-test prefix; all closed afterwards."""
    prefix = f"t{uuid.uuid4().hex[:10]}"

    def make(url: str | None = None, **options: Any) -> RedisBroker:
        options.setdefault("lease_timeout", LEASE)
        options.setdefault("key_prefix", prefix)
        return RedisBroker(url or server.url, BrokerOptions(**options))

    yield from closing_all(make)


@pytest.fixture
def broker(make: Callable[..., RedisBroker]) -> RedisBroker:
    return make()


# -- URLs, secrets, TLS, unix sockets ----------------------------------------------------
def test_url_forms_build_matching_connections() -> None:
    forms = {
        "redis://user:pw@10.1.2.3:6380/4": ("Connection", {"host": "10.1.2.3", "port": 6380}),
        "unix:///run/redis.sock?db=3": ("UnixDomainSocketConnection", {"path": "/run/redis.sock"}),
        "rediss://h.example:6390/1": ("SSLConnection", {"host": "h.example", "port": 6390}),
    }
    for url, (kind, expected) in forms.items():
        client = connect(url, {"socket_timeout": 4})
        pool = client.connection_pool
        assert pool.connection_class.__name__ == kind
        for key, value in expected.items():
            assert pool.connection_kwargs[key] == value
        assert pool.connection_kwargs["socket_timeout"] == 4
        client.close()
    kwargs = connect("redis://user:pw@h/4").connection_pool.connection_kwargs
    assert (kwargs["username"], kwargs["password"], kwargs["db"]) == ("user", "pw", 4)
    assert connect("unix:///run/redis.sock?db=3").connection_pool.connection_kwargs["db"] == 3

    with pytest.raises(ConfigurationError) as info:
        RedisBroker(f"redis://:{PASSWORD}@host:notaport/0")
    assert PASSWORD not in str(info.value)


def test_password_is_used_and_never_shown(server: RedisServer) -> None:
    secured = RedisServer(appendonly=False, password=PASSWORD)
    secured.start()
    try:
        good = RedisBroker(secured.url, BrokerOptions(key_prefix="pw"))
        good.publish([msg(b"secret")])
        assert [d.body for d in good.lease([Q], 1, 0)] == [b"secret"]
        good.close()

        wrong = RedisBroker(secured.url.replace(PASSWORD, "wrong-" + PASSWORD))
        with pytest.raises(BrokerError) as info:
            wrong.publish([msg()])
        wrong.close()
        assert PASSWORD not in str(info.value)
        assert ":***@" in str(info.value)

        port = free_port()  # nobody listens: a connection error must be redacted too
        down = RedisBroker(f"redis://:{PASSWORD}@127.0.0.1:{port}/0")
        with pytest.raises(BrokerError) as info:
            down.time()
        down.close()
        assert PASSWORD not in str(info.value)
        assert f"127.0.0.1:{port}" in str(info.value)
    finally:
        secured.cleanup()


def _unix_server(folder: Path) -> subprocess.Popen[bytes]:
    socket_path = folder / "redis.sock"
    args = ["--port", "0", "--unixsocket", str(socket_path), "--save", "", "--dir", str(folder)]
    process = subprocess.Popen(
        [str(shutil.which("redis-server")), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_until(socket_path.exists, 10.0, "unix socket")
    return process


def test_unix_socket_url(tmp_path: Path) -> None:
    process = _unix_server(tmp_path)
    try:
        broker = RedisBroker(f"unix://{tmp_path}/redis.sock?db=2", BrokerOptions(key_prefix="u"))
        broker.publish([msg(b"over a socket")])
        assert [d.body for d in broker.lease([Q], 1, 0)] == [b"over a socket"]
        assert broker._client.connection_pool.connection_kwargs["db"] == 2
        broker.close()
    finally:
        process.terminate()
        process.wait(10)


def test_rediss_tls(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    port = free_port()
    tls = ["--tls-port", str(port), "--tls-cert-file", str(cert), "--tls-key-file", str(key)]
    tls += ["--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no"]
    process = subprocess.Popen(
        [
            str(shutil.which("redis-server")),
            "--port",
            "0",
            *tls,
            "--save",
            "",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        options = BrokerOptions(key_prefix="tls", transport_options={"ssl_ca_certs": str(cert)})
        broker = RedisBroker(f"rediss://127.0.0.1:{port}/0", options)

        def works() -> bool:
            try:
                broker.publish([msg(b"encrypted")])
            except BrokerError:
                return False  # the server is still starting
            return True

        wait_until(works, 10.0, "TLS server up")
        assert [d.body for d in broker.lease([Q], 1, 0)] == [b"encrypted"]
        broker.close()
    finally:
        process.terminate()
        process.wait(10)


# -- data layout and clock ---------------------------------------------------------------
def test_every_key_lives_under_the_prefix(broker: RedisBroker, admin: redis.Redis) -> None:
    prefix = broker.options.key_prefix
    broker.publish([msg(), msg(countdown=60), msg(queue="other")])
    held = broker.lease([Q], 1, 0)
    broker.dead_letter(held[0], "rejected")
    broker.revoke(["t1"], 60)
    broker.kv.set_value("k", b"v")
    broker.kv.claim("c", 60)
    broker.kv.join("j", "m", 60)
    keys = [k.decode() for k in admin.scan_iter(match=f"*{prefix}*")]
    assert len(keys) >= 10
    assert all(k.startswith((f"{prefix}:", f"{{{prefix}}}:", f"{{{prefix}:")) for k in keys)
    assert {f"{prefix}:kv:k", f"{prefix}:kv:c", f"{prefix}:kv-join:j"} <= set(keys)


def test_countdown_is_measured_from_redis_time(broker: RedisBroker, admin: redis.Redis) -> None:
    before = broker.time()
    broker.publish([msg(countdown=30.0), msg(eta=before + 40.0)])
    after = broker.time()
    due = admin.zrange(broker.keys.queue_key(Q, "delayed"), 0, -1, withscores=True)
    first, second = (score / 1000 for _, score in due)
    assert before + 30.0 <= first <= after + 30.0
    assert second == pytest.approx(before + 40.0, abs=1e-3)
    assert abs(broker.time() - time.time()) < 0.5


def collect(broker: RedisBroker, queues: list[str], count: int) -> list[Delivery]:
    """Lease until ``count`` messages came (delayed ones included)."""
    got: list[Delivery] = []

    def more() -> bool:
        got.extend(broker.lease(queues, 100, 0.1))
        return len(got) >= count

    wait_until(more, 5.0, f"{count} deliveries")
    return got


def test_equal_due_times_keep_publish_order(broker: RedisBroker) -> None:
    sent = [msg(f"{n}".encode(), countdown=0.2) for n in range(25)]  # uids cross 9 -> 10
    broker.publish(sent)
    assert [d.id for d in collect(broker, [Q], 25)] == [m.id for m in sent]


def test_due_delayed_message_takes_its_priority_place(broker: RedisBroker) -> None:
    low = msg(queue="a", priority=1)
    urgent = msg(queue="b", priority=9, countdown=0.2)
    mid = msg(queue="a", priority=5)
    broker.publish([low, urgent, mid])
    due = broker.time() + 0.2  # read after the publish: no earlier than the message's due time
    wait_until(lambda: broker.time() > due, 5.0, "due time")
    got = broker.lease(["a", "b"], 10, 0)
    assert [d.id for d in got] == [urgent.id, mid.id, low.id]


# -- leases, heartbeat, redelivery -------------------------------------------------------
def test_heartbeat_holds_one_lease_while_another_runs_out_to_the_dlq(
    make: Callable[..., RedisBroker],
) -> None:
    broker = make(max_deliveries=2)
    kept, lost = msg(b"kept", priority=9), msg(b"lost", priority=1)
    broker.publish([kept, lost])
    held, first = broker.lease([Q], 2, 0)
    assert (held.id, first.id) == (kept.id, lost.id)
    began = time.monotonic()
    counts = [first.delivery_count]

    while time.monotonic() - began < 2.6 * LEASE:  # several lease timeouts
        broker.extend([held])
        broker.sweep()
        counts += [d.delivery_count for d in broker.lease([Q], 10, 0.2)]
    assert counts == [1, 2], "lost is redelivered once, then buried; kept never comes back"
    [dead] = broker.dead_letters()
    assert (dead.id, dead.reason, dead.delivery_count) == (lost.id, "worker_lost", 2)
    assert dead.detail == "lease expired after 2 deliveries"
    assert broker.stats([Q])[Q] == QueueStats(leased=1, dead=1)
    broker.ack([held])
    assert broker.stats([Q])[Q] == QueueStats(dead=1)


def test_release_puts_a_swept_message_back_at_its_own_place(broker: RedisBroker) -> None:
    first = msg(b"first")
    broker.publish([first])
    broker.lease([Q], 1, 0)
    later = [msg(b"b"), msg(b"c")]
    broker.publish(later)
    expired = broker.time() + LEASE + 0.05
    wait_until(lambda: broker.time() > expired, 5.0, "lease expiry")
    assert broker.sweep() == 1  # first keeps its place, ahead of b and c (as on SQLite)
    held = broker.lease([Q], 3, 0)
    assert [d.id for d in held] == [first.id, later[0].id, later[1].id]
    broker.release(held[::-1])
    again = broker.lease([Q], 3, 0)
    assert [d.id for d in again] == [first.id, later[0].id, later[1].id]
    assert [d.delivery_count for d in again] == [2, 1, 1]


def test_release_puts_a_replayed_message_back_at_its_new_place(broker: RedisBroker) -> None:
    first = msg(b"first")
    broker.publish([first])
    dead = broker.lease([Q], 1, 0)[0]
    broker.dead_letter(dead, "rejected")
    later = [msg(b"b"), msg(b"c")]
    broker.publish(later)
    assert broker.replay_dead([first.id]) == 1  # replayed: behind b and c
    held = broker.lease([Q], 3, 0)
    assert [d.id for d in held] == [later[0].id, later[1].id, first.id]
    broker.release(held[::-1])
    again = broker.lease([Q], 3, 0)
    assert [d.id for d in again] == [later[0].id, later[1].id, first.id]


def test_sweep_and_purge_work_through_big_backlogs(broker: RedisBroker) -> None:
    total = CHUNK + 300
    broker.publish([msg(queue="bulk") for _ in range(total)])
    assert len(broker.lease(["bulk"], total, 0)) == total
    expired = broker.time() + LEASE + 0.05
    wait_until(lambda: broker.time() > expired, 5.0, "lease expiry")
    assert broker.sweep() == total  # several script calls, one sweep
    assert broker.stats(["bulk"])["bulk"] == QueueStats(ready=total)
    assert broker.purge(["bulk"]) == total
    assert broker.stats(["bulk"])["bulk"] == QueueStats()


# -- blocking ----------------------------------------------------------------------------
def test_blocking_lease_wakes_within_milliseconds(
    make: Callable[..., RedisBroker], admin: redis.Redis
) -> None:
    consumer, producer = make(), make()
    latencies = []
    for _ in range(5):
        call = Call(lambda: consumer.lease(["a", Q], 10, 5.0))
        wait_until(lambda: blocked_in(admin, "blpop"), 5.0, "consumer blocked")
        published_at = time.perf_counter()
        producer.publish([msg()])
        assert len(call.result()) == 1
        latencies.append(call.done_at - published_at)
    assert statistics.median(latencies) < 0.05, latencies


def test_a_woken_lease_takes_no_second_round_trip(
    make: Callable[..., RedisBroker], admin: redis.Redis
) -> None:
    consumer, producer = make(), make()
    producer.publish([msg(queue="warm-up")])  # the producer's connection and handshake
    call = Call(lambda: consumer.lease([Q], 1, 5.0))
    wait_until(lambda: blocked_in(admin, "blpop"), 5.0, "consumer blocked")
    reads = admin.info("stats")["total_reads_processed"]
    producer.publish([msg()])
    assert len(call.result()) == 1
    # The publish and this INFO: the lease was sent with the BLPOP and ran when it returned.
    assert admin.info("stats")["total_reads_processed"] - reads == 2


def test_blocked_consumer_does_not_poll(broker: RedisBroker, admin: redis.Redis) -> None:
    admin.config_resetstat()
    began = time.monotonic()
    assert broker.lease([Q], 1, 1.5) == []
    assert time.monotonic() - began >= 1.5
    stats = admin.info("commandstats")
    assert stats["cmdstat_blpop"]["calls"] <= 3  # one block per second at most
    assert stats["cmdstat_evalsha"]["calls"] <= 4


def test_blocked_lease_notices_a_delayed_message_published_meanwhile(
    make: Callable[..., RedisBroker], admin: redis.Redis
) -> None:
    consumer, producer = make(), make()
    call = Call(lambda: consumer.lease([Q], 1, 5.0))
    wait_until(lambda: blocked_in(admin, "blpop"), 5.0, "consumer blocked")
    due = producer.time() + 0.3
    producer.publish([msg(eta=due)])
    [got] = call.result()
    assert consumer.time() >= due
    assert consumer.time() < due + 0.3, "served long after it was due"
    assert got.delivery_count == 1


def test_every_blocked_consumer_gets_woken_for_a_batch(
    make: Callable[..., RedisBroker], admin: redis.Redis
) -> None:
    consumers = [make() for _ in range(3)]
    calls = [Call(lambda c=c: c.lease([Q], 1, 5.0)) for c in consumers]
    wait_until(lambda: blocked_in(admin, "blpop", 3), 5.0, "consumers blocked")
    published_at = time.perf_counter()
    make().publish([msg() for _ in range(3)])
    got = [call.result() for call in calls]
    assert [len(g) for g in got] == [1, 1, 1]
    # A consumer not woken would wait out its 1-s block; 0.5 s leaves room for a loaded machine.
    assert max(call.done_at for call in calls) - published_at < 0.5


# -- batching ----------------------------------------------------------------------------
def test_batches_take_one_script_call_per_chunk(broker: RedisBroker, admin: redis.Redis) -> None:
    total = 2 * CHUNK + 1
    # Load the scripts first: a server that has not seen one answers its first calls NOSCRIPT
    # (each counted), then the client loads it and calls again.
    broker.publish([msg(queue="warm")])
    warm = broker.lease(["warm"], 1, 0)
    broker.extend(warm)
    broker.ack(warm)
    admin.config_resetstat()
    broker.publish([msg(queue="batch") for _ in range(total)])
    got = broker.lease(["batch"], total, 0)
    broker.extend(got)
    broker.ack(got)
    calls = admin.info("commandstats")["cmdstat_evalsha"]["calls"]
    assert len(got) == total
    assert calls == 3 + 1 + 1 + 1


def test_settlement_writes_records_then_messages_in_one_go(
    broker: RedisBroker, server: RedisServer, admin: redis.Redis
) -> None:
    results = RedisResultStore(server.url, key_prefix=broker.options.key_prefix)
    settlement = open_settlement(broker, results)
    assert isinstance(settlement, RedisSettlement) and settlement.together is results
    sent = [msg(), msg()]
    records = [ResultRecord(m.id, "QUEUED") for m in sent]
    broker.stats([Q])  # connect first (script calls' connection): the handshake is not part of it
    with admin.monitor() as monitor:
        settlement.publish(sent, records)
        seen = [monitor.next_command() for _ in range(4)]
    assert [c["command"].split()[0] for c in seen] == ["SET", "SET", "SADD", "RPUSH"]
    assert len({(c["client_address"], c["client_port"]) for c in seen}) == 1
    assert results.get(sent[0].id) == records[0]
    assert [d.id for d in broker.lease([Q], 10, 0)] == [m.id for m in sent]
    results.close()

    elsewhere = RedisResultStore(server.url.rsplit("/", 1)[0] + "/1")  # other db: two calls
    memory = MemoryResultStore()
    for store in (elsewhere, memory):
        apart = open_settlement(broker, store)
        assert isinstance(apart, RedisSettlement) and apart.together is None
        one = msg()
        apart.publish([one], [ResultRecord(one.id, "QUEUED")])
        assert store.get(one.id) == ResultRecord(one.id, "QUEUED")
        assert [d.id for d in broker.lease([Q], 10, 0)] == [one.id]
        store.forget([one.id])
    elsewhere.close()


def test_settlement_acks_results_and_leases_in_one_round_trip(
    broker: RedisBroker, server: RedisServer, admin: redis.Redis
) -> None:
    results = RedisResultStore(server.url, key_prefix=broker.options.key_prefix)
    settlement = open_settlement(broker, results)
    broker.publish([msg(), msg()])
    held = broker.lease([Q], 1, 0)
    with admin.monitor() as monitor:
        got = settlement.ack_and_lease(held, [ResultRecord(held[0].id, "SUCCESS")], [Q], 1, 0)
        seen = [monitor.next_command() for _ in range(4)]
    assert [c["command"].split()[0] for c in seen] == ["SET", "RPUSH", "PEXPIRE", "EVALSHA"]
    assert len({(c["client_address"], c["client_port"]) for c in seen}) == 1
    assert results.get(held[0].id) == ResultRecord(held[0].id, "SUCCESS")
    assert len(got) == 1
    assert broker.stats([Q])[Q] == QueueStats(leased=1)
    results.close()


def test_worker_calls_share_few_connections(broker: RedisBroker, admin: redis.Redis) -> None:
    settlement = open_settlement(broker, MemoryResultStore())
    broker.publish([msg() for _ in range(50)])
    held = broker.lease([Q], 1, 0)
    for _ in range(49):
        held = settlement.ack_and_lease(held, [], [Q], 1, 0)
    broker.ack(held)
    assert len(broker._connections._made) == 1  # one thread, one connection, reused
    broker.close()
    assert all(conn._sock is None for conn in broker._connections._made)
    assert broker.stats([Q])[Q] == QueueStats()


def test_a_dropped_connection_closes_its_socket_without_the_garbage_collector(
    server: RedisServer,
) -> None:
    # Not in a reference cycle (redis-py's maintenance-notification handlers make one): a
    # connection nobody disconnected is freed at once, closing its socket itself, instead of
    # waiting for a collection that may finalize the socket first (ResourceWarning).
    client = connect(server.url)
    try:
        conn = client.connection_pool.make_connection()
        conn.connect()
        gone = weakref.ref(conn)
        del conn
        assert gone() is None
    finally:
        client.close()


def test_a_call_that_times_out_leaves_no_reply_behind(server: RedisServer) -> None:
    client = connect(server.url, {"socket_timeout": 0.2})
    connections = Connections(client)
    spin = (
        "local t = redis.call('TIME')[1] * 1e6 + redis.call('TIME')[2] "
        "while redis.call('TIME')[1] * 1e6 + redis.call('TIME')[2] < t + 500000 do end return 1"
    )
    slow = Calls()
    slow.add([("EVAL", spin, 0)])
    with pytest.raises(redis.TimeoutError):
        connections.execute(slow)
    time.sleep(0.5)  # the server finishes the script; its reply has nowhere to go now
    ping = Calls()
    ping.add([("PING",)])
    assert connections.execute(ping) == [b"PONG"]  # not the slow call's late reply
    connections.close()
    client.close()


# -- resilience --------------------------------------------------------------------------
def test_scripts_are_reloaded_after_script_flush(broker: RedisBroker, admin: redis.Redis) -> None:
    admin.script_flush()
    broker.publish([msg(), msg()])  # pipelined EVALSHA path
    admin.script_flush()
    assert len(broker.lease([Q], 10, 0)) == 2  # direct script path


def test_restart_loses_nothing_and_calls_resume() -> None:
    server = RedisServer(appendonly=True, password=PASSWORD)
    server.start()
    broker = RedisBroker(server.url, BrokerOptions(lease_timeout=LEASE, key_prefix="r"))
    results = RedisResultStore(server.url, key_prefix="r")
    try:
        sent = [msg(f"{n}".encode(), priority=n % 10) for n in range(40)]
        sent.append(msg(b"later", countdown=0.5))
        broker.publish(sent)
        held = broker.lease([Q], 15, 0)
        broker.ack(held[:5])
        results.store([ResultRecord("done", "SUCCESS", 1)])

        server.kill()  # SIGKILL; the AOF is fsynced on every write
        with pytest.raises(BrokerError) as info:
            broker.publish([msg()])
        assert PASSWORD not in str(info.value)
        server.start()

        extra = msg(b"after restart")  # pooled connections are dead, scripts are gone
        settlement = open_settlement(broker, results)
        settlement.publish([extra], [ResultRecord(extra.id, "QUEUED")])
        assert results.wait("done", 1) == ResultRecord("done", "SUCCESS", 1)
        assert results.get(extra.id) == ResultRecord(extra.id, "QUEUED")

        expected = {m.id for m in [*sent, extra]} - {d.id for d in held[:5]}
        seen: dict[str, Delivery] = {}

        def drained() -> bool:
            broker.sweep()
            for d in broker.lease([Q], 100, 0.05):
                seen[d.id] = d
                broker.ack([d])
            return len(seen) >= len(expected)

        wait_until(drained, 10.0, "every message back after the restart")
        assert set(seen) == expected
        assert {seen[d.id].delivery_count for d in held[5:]} == {2}
        assert broker.stats([Q])[Q] == QueueStats()
    finally:
        broker.close()
        results.close()
        server.cleanup()


def test_usable_in_a_forked_child(broker: RedisBroker) -> None:
    broker.publish([msg(b"parent")])  # the parent's pool holds a live connection now
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads alive
        pid = os.fork()
    if pid == 0:  # child: must not touch the parent's sockets
        try:
            broker.publish([msg(b"child")])
            os._exit(0 if len(broker.lease([Q], 10, 0)) == 2 else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert broker.stats([Q])[Q] == QueueStats(leased=2)
    assert broker.time() > 0  # the parent's connection still works


def test_dead_letter_many_buries_each_with_its_reason(broker: RedisBroker) -> None:
    broker.publish([msg(b"a"), msg(b"b", queue="other"), msg(b"c")])
    leased = broker.lease([Q, "other"], 3, 0)
    by_body = {d.body: d for d in leased}
    broker.dead_letter_many(
        [(by_body[b"a"], "malformed", "x"), (by_body[b"b"], "undecodable", "y")]
    )
    dead = {(d.body, d.queue, d.reason, d.detail) for d in broker.dead_letters(queue=None)}
    assert dead == {(b"a", Q, "malformed", "x"), (b"b", "other", "undecodable", "y")}
    assert broker.stats([Q])[Q].leased == 1
    broker.dead_letter_many([])


def test_a_process_adds_a_queue_to_the_known_queues_once_a_while(
    broker: RedisBroker, admin: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_publish, "REGISTER_AGAIN", 0.5)
    broker.publish([msg()])
    assert admin.smembers(broker.keys.queues) == {Q.encode()}
    admin.delete(broker.keys.queues)  # a server that lost its data
    broker.publish([msg()])
    assert admin.exists(broker.keys.queues) == 0  # not added again with every publish
    window = time.monotonic() + 0.5
    wait_until(lambda: time.monotonic() > window, 5.0, "the end of the window")
    broker.publish([msg()])
    assert admin.smembers(broker.keys.queues) == {Q.encode()}
    assert broker.stats()[Q].ready == 3
