"""Redis Cluster (``redis+cluster://``): bad URLs and clusters fail with one clear error, queues
spread over the shards, a slot moving under running clients loses and duplicates nothing, and
a worker rides out the failover of a primary. Real processes: three primaries and three
replicas started by the test (``tests/cluster_servers.py``), and ``conveyor worker`` processes."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.exceptions import MovedError

from conveyor.brokers import BrokerOptions, create_broker
from conveyor.brokers.base import Broker, Message, QueueStats
from conveyor.brokers.redis import RedisBroker
from conveyor.doctor.findings import Level
from conveyor.doctor.storage import redis_findings
from conveyor.exceptions import BrokerError, ConfigurationError, ResultStoreError
from conveyor.results import create_result_store
from tests.cluster_servers import ClusterDeployment, running_cluster
from tests.conftest import wait_until
from tests.helpers import Call
from tests.integration.test_worker_processes import Harness, wait_for
from tests.integration.workerapp import runs
from tests.servers import RedisServer, free_port

pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def cluster() -> Iterator[ClusterDeployment]:
    with running_cluster() as started:
        yield started


@pytest.fixture
def broker(cluster: ClusterDeployment) -> Iterator[RedisBroker]:
    built = create_broker(cluster.url, BrokerOptions(key_prefix=f"c{uuid.uuid4().hex[:8]}"))
    assert isinstance(built, RedisBroker)
    yield built
    built.close()


# -- the settings the promises need --------------------------------------------------------
def test_doctor_checks_every_primary(cluster: ClusterDeployment) -> None:
    """Eviction is a per-node setting: one primary that may evict is found and named."""

    ports = cluster.primary_ports()
    with cluster.client(cluster.node(ports[1])) as node:
        node.config_set("maxmemory-policy", "allkeys-lru")
        try:
            findings = redis_findings("broker", cluster.url)
        finally:
            node.config_set("maxmemory-policy", "noeviction")
    policy = [f for f in findings if "maxmemory-policy" in f.message]
    assert len(policy) == len(ports)  # one per primary
    bad = [f for f in policy if "allkeys-lru" in f.message]
    assert len(bad) == 1 and f"127.0.0.1:{ports[1]}" in bad[0].message
    assert bad[0].level == Level.WARNING and bad[0].fix
    assert all(f.level == Level.OK for f in policy if f is not bad[0])


# -- bad input -----------------------------------------------------------------------------
def test_no_reachable_node_is_one_clear_error() -> None:
    url = f"redis+cluster://:hunter2@127.0.0.1:{free_port()},127.0.0.1:{free_port()}/0"
    with pytest.raises(BrokerError, match=r"Redis Cluster at redis\+cluster://:\*\*\*@") as info:
        create_broker(url, BrokerOptions())
    assert "hunter2" not in str(info.value)
    with pytest.raises(ResultStoreError, match="Redis Cluster at"):
        create_result_store(url, expires=60, key_prefix="x")


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("redis+cluster:///0", "at least one node"),
        ("redis+cluster://127.0.0.1:7000/2", "only database 0"),
        ("redis+cluster://127.0.0.1:port", "not a number"),
    ],
)
def test_malformed_cluster_urls(url: str, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        create_broker(url, BrokerOptions())


def test_a_cluster_with_missing_slots_is_refused() -> None:
    node = RedisServer(appendonly=False)
    node.extra_args = [
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        str(node.dir / "nodes.conf"),
        "--cluster-port",
        str(free_port()),
    ]
    node.start()
    try:
        with redis.Redis(host="127.0.0.1", port=node.port) as admin:
            admin.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 8000)  # half the slots
        with pytest.raises(BrokerError, match="slots"):
            create_broker(f"redis+cluster://127.0.0.1:{node.port}", BrokerOptions())
    finally:
        node.cleanup()


# -- layout --------------------------------------------------------------------------------
def test_queues_spread_over_the_shards(cluster: ClusterDeployment) -> None:
    """Each queue's keys sit on the primary of its hash tag's slot; different queues on
    different primaries (the prefix and names are fixed, so where they land is too)."""
    broker = create_broker(cluster.url, BrokerOptions(key_prefix="spread"))
    assert isinstance(broker, RedisBroker)
    try:
        queues = [f"q{i}" for i in range(9)]
        broker.publish([Message(uuid.uuid4().hex, q, b"x") for q in queues])
        owners: dict[str, int] = {}
        for queue in queues:
            ready = broker.keys.queue_key(queue, "ready")
            owners[queue] = cluster.node_of(ready)
            for port in cluster.primary_ports():
                with cluster.client(cluster.node(port)) as node:
                    # READONLY-free EXISTS on a node that does not serve the slot: MOVED.
                    held = _exists_here(node, ready)
                assert held is (port == owners[queue]), (queue, port)
        assert set(owners.values()) == set(cluster.primary_ports())
        got = broker.lease(queues, 100, 0)
        assert sorted(d.queue for d in got) == queues
        broker.ack(got)
        broker.purge(queues)
    finally:
        broker.close()


def _exists_here(node: redis.Redis, key: str) -> bool:
    try:
        return bool(node.exists(key))
    except MovedError:  # not served here
        return False


def test_priorities_across_queues_follow_the_peek(broker: RedisBroker) -> None:
    """9 first within each queue exactly, and across queues as of the lease's peek."""
    sent = [
        Message(f"{q}{p}-{i}", q, b"x", priority=p)
        for q in ("a", "b")
        for p in (0, 9)
        for i in (1, 2)
    ]
    broker.publish(sent)
    first = broker.lease(["a", "b"], 4, 0)
    assert sorted(d.id for d in first) == ["a9-1", "a9-2", "b9-1", "b9-2"]
    rest = broker.lease(["a", "b"], 4, 0)
    assert [d.id for d in rest if d.queue == "a"] == ["a0-1", "a0-2"]  # FIFO in a queue
    broker.ack(first + rest)


def test_inspection_spans_the_shards(broker: RedisBroker) -> None:
    """Stats, the oldest ready messages, dead letters (oldest first across queues), replay
    and purge each reach every queue, wherever its primary is."""
    queues = ["q0", "q1", "q2"]
    broker.publish([Message(f"id-{q}", q, f"body-{q}".encode(), priority=3) for q in queues])
    assert broker.oldest_ready(queues) == {q: [f"body-{q}".encode()] for q in queues}
    for queue in ["q2", "q0"]:  # buried in this order
        [held] = broker.lease([queue], 1, 0)
        broker.dead_letter(held, "rejected", queue)
    assert [d.id for d in broker.dead_letters()] == ["id-q2", "id-q0"]
    assert broker.stats(queues)["q0"] == QueueStats(dead=1)
    assert broker.replay_dead() == 2
    assert sorted(d.id for d in broker.lease(queues, 10, 0)) == ["id-q0", "id-q1", "id-q2"]
    assert broker.purge_dead() == 0


# -- redirections ----------------------------------------------------------------------------
def test_a_slot_moving_under_producers_and_consumers_loses_and_duplicates_nothing(
    cluster: ClusterDeployment, broker: RedisBroker
) -> None:
    """While a queue's slot migrates to another primary, scripts meet TRYAGAIN, ASK and then
    MOVED: each is refused before it runs (its declared base key never exists, so it is never
    served half on one node), redis-py sends it again, and a call that ran out of retries
    fails with an error the caller retries. Every message is consumed exactly once."""
    queue, total = "moving", 1500
    consumed: list[str] = []
    errors: list[BaseException] = []
    done = threading.Event()

    def produce() -> None:
        for start in range(0, total, 25):
            batch = [Message(f"m{i}", queue, b"x") for i in range(start, start + 25)]
            while True:
                try:
                    broker.publish(batch)  # the id dedupe keeps a retried publish single
                    break
                except BrokerError as exc:
                    errors.append(exc)

    def consume(peer: Broker) -> None:
        while not done.is_set():
            try:
                got = peer.lease([queue], 50, 0.2)
                peer.ack(got)
                consumed.extend(d.id for d in got)
            except BrokerError as exc:
                errors.append(exc)

    peer = create_broker(cluster.url, broker.options)
    consumer = threading.Thread(target=consume, args=(peer,), daemon=True)
    consumer.start()
    producer = Call(produce)
    base = broker.keys.queue(queue)
    wait_until(lambda: len(consumed) > 100, 30.0, "work under way")
    source = cluster.node_of(base)
    target = next(p for p in cluster.primary_ports() if p != source)
    for port in (source, target):
        with cluster.client(cluster.node(port)) as node:
            node.config_resetstat()
    moved = cluster.migrate_slot(base, target)
    producer.result(timeout=60)
    wait_until(lambda: len(consumed) >= total, 60.0, "every message consumed")
    done.set()
    consumer.join(10)
    peer.close()
    assert moved > 0 and cluster.node_of(base) == target
    counts = Counter(consumed)
    assert set(counts) == {f"m{i}" for i in range(total)}, "nothing lost"
    assert [i for i, n in counts.items() if n > 1] == [], "nothing duplicated"
    assert broker.stats([queue])[queue].leased == 0
    redirected: Counter[str] = Counter()
    for port in (source, target):
        with cluster.client(cluster.node(port)) as node:
            for name, stats in node.info("errorstats").items():
                redirected[name.removeprefix("errorstat_")] += int(stats["count"])
    assert redirected["TRYAGAIN"] + redirected["ASK"] + redirected["MOVED"] > 0, redirected
    print(f"migration: {moved} keys moved, {dict(redirected)}, {len(errors)} calls failed")


# -- failover --------------------------------------------------------------------------------
@pytest.fixture
def harness_for(tmp_path: Path) -> Iterator[Any]:
    made: list[Harness] = []

    def make(url: str, settings: dict[str, Any] | None = None, **options: Any) -> Harness:
        prefix = f"k{uuid.uuid4().hex[:8]}"
        settings = {
            **(settings or {}),
            "broker_transport_options": {"key_prefix": prefix, **options},
        }
        harness = Harness(url, settings, tmp_path)
        made.append(harness)
        return harness

    yield make
    for harness in made:
        print(harness.output())  # shown when the test failed
        harness.close()


def test_worker_survives_the_failover_of_its_queues_primary(
    cluster: ClusterDeployment, harness_for: Any
) -> None:
    """kill -9 the primary holding the worker's queue during a run: its replica takes over,
    the worker and the producer follow, and every task runs (at least once). Publishes wait
    for a replica (``wait_for_replicas=1``), so none the producer saw succeed can be lost with
    the killed primary; until the killed node is back as the new primary's replica they are
    retried by the producer's publish retry."""
    settings = {"task_publish_retry_policy": {"max_retries": 120, "interval_max": 0.5}}
    harness: Harness = harness_for(cluster.url, settings, wait_for_replicas=1)
    worker = harness.worker("-c", "2")
    path = harness.file()
    tags = [f"b{i}" for i in range(60)] + [f"a{i}" for i in range(60)]
    for tag in tags[:60]:
        harness.send("mark_id", str(path), tag)
    wait_for(lambda: len(runs(path)) >= 20, 30, "20 tasks ran before the failover")
    broker = harness.client.broker
    assert isinstance(broker, RedisBroker)
    primary = cluster.node_of(broker.keys.queue("default"))
    try:
        killed_at = time.monotonic()
        cluster.kill_primary(primary)
        print(f"failover: the replica took the slots {time.monotonic() - killed_at:.1f} s later")
        publisher = Call(lambda: [harness.send("mark_id", str(path), t) for t in tags[60:]])
        cluster.restart_killed()
        publisher.result(timeout=120)
        wait_for(
            lambda: set(tags) <= {line.split()[1] for line in runs(path)},
            90,
            "every task published before and after the failover ran",
        )
    finally:
        cluster.restart_killed()
    assert worker.process.poll() is None, "the worker survived the failover"
    assert cluster.node_of(broker.keys.queue("default")) != primary
    wait_for(lambda: broker.stats(["default"])["default"] == QueueStats(), 60, "queue settled")
    ran = [line.split()[1] for line in runs(path)]
    print(f"failover: {len(tags)} tasks, ran {len(ran)} times ({len(ran) - len(set(ran))} twice)")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_three_failovers_during_10000_tasks_lose_nothing(harness_for: Any) -> None:
    """The figures of docs/scaling.md: tasks lost and duplicated across 3 failovers of the
    primary holding the queue, with ``wait_for_replicas=1``, each while a producer publishes
    and the worker runs tasks; the killed node is started again (a replica) each time."""
    total, rounds = 9_999, 3
    with running_cluster() as cluster:
        settings = {
            "broker_lease_timeout": 5.0,
            "task_publish_retry_policy": {"max_retries": 120, "interval_max": 0.5},
        }
        harness: Harness = harness_for(cluster.url, settings, wait_for_replicas=1)
        worker = harness.worker("-c", "2", "--threads", "4")
        path = harness.file()
        broker = harness.client.broker
        assert isinstance(broker, RedisBroker)
        took = []
        for round_ in range(rounds):
            start = len(runs(path))
            tags = [f"r{round_}-{i}" for i in range(total // rounds)]
            publisher = Call(
                lambda tags=tags: [harness.send("mark_id", str(path), t) for t in tags]
            )
            wait_for(lambda start=start: len(runs(path)) > start + 300, 120, "work under way")
            killed_at = time.monotonic()
            cluster.kill_primary(cluster.node_of(broker.keys.queue("default")))
            took.append(time.monotonic() - killed_at)
            cluster.restart_killed(timeout=60)
            publisher.result(timeout=300)
        wait_for(
            lambda: len({line.split()[1] for line in runs(path)}) >= total,
            300,
            "every task ran",
        )
        ran = [line.split()[1] for line in runs(path)]
        lost = total - len(set(ran))
        duplicated = len(ran) - len(set(ran))
        seconds = ", ".join(f"{t:.1f}" for t in took)
        print(f"cluster: {total} tasks, {rounds} failovers ({seconds} s each): ", end="")
        print(f"lost {lost}, duplicated {duplicated}")
        assert lost == 0
        assert worker.process.poll() is None
