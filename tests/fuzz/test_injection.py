"""Thousands of malformed messages written straight into a broker's storage, mixed with good
tasks, against a real ``conveyor worker`` with two child processes (issue 13, item 4).

Random bytes, truncated, deep and huge JSON, a wrong type or impossible value in every
envelope field, unknown tasks, forged delivery counts and priorities. Asserted: no child
died or was restarted, no lease is left, every bad message is dead-lettered with the reason
its kind calls for, and every good task ran exactly once.

"Storage" is SQLite's table, Redis's hashes, PostgreSQL's table (rows inserted with plain SQL,
any value its typed columns hold) and RabbitMQ's queue (messages published with plain py-amqp,
any AMQP value in Conveyor's headers). 10,000 bad messages per broker take about 20 s on
SQLite, 7 s on Redis, 25 s on PostgreSQL and 60 s on RabbitMQ (2 cores); PostgreSQL and
RabbitMQ run 1,000 in the default suite and 10,000 among the slow tests. The memory broker has
no storage apart from the objects ``publish()`` takes; its decode path is the worker's, fuzzed
in ``test_codec.py``.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import amqp
import psycopg
import pytest

from conveyor import Conveyor
from conveyor.brokers.amqp.convert import BEFORE, PRIORITY
from conveyor.brokers.amqp.convert import QUEUE as QUEUE_HEADER
from tests.conftest import wait_until
from tests.fuzz.fuzzapp import create_app
from tests.fuzz.strategies import (
    AMQP_FIELDS,
    POSTGRES_FIELDS,
    SQLITE_FIELDS,
    Bad,
    StoredFields,
    good_message,
    malformed_messages,
)
from tests.helpers import redis_fixture
from tests.integration.test_worker_processes import child_pids
from tests.pg_server import PostgresServer
from tests.rabbit_server import RabbitServer
from tests.servers import RedisServer

ROOT = Path(__file__).resolve().parents[2]
QUEUE = "default"
WORKER = [sys.executable, "-m", "conveyor", "worker", "-A", "tests.fuzz.fuzzapp"]
MAX_BYTES = 4096  # message_max_bytes: a worker refuses bodies over twice this
SETTINGS = {
    "message_max_bytes": MAX_BYTES,
    "task_max_deliveries": 4,
    "broker_lease_timeout": 5.0,
    "broker_sweep_interval": 1.0,
    "worker_log_tasks": False,
}

redis_server = redis_fixture(appendonly=False)


class Injected:
    """A broker with bad and good messages written into its storage behind its back."""

    def __init__(self, url: str, settings: dict[str, object], tmp_path: Path) -> None:
        self.url = url
        self.settings = settings
        self.app: Conveyor = create_app(url, **settings)
        self.runs = tmp_path / "runs.txt"
        self.log = tmp_path / "worker.log"

    def inject(self, bad: list[Bad], good: int, seed: int) -> list[str]:
        """Write the messages, shuffled together; return the good ids."""
        good_ids = [f"good-{i}-{uuid.uuid4().hex[:6]}" for i in range(good)]
        items: list[Bad] = bad + [
            Bad(mid, good_message(str(self.runs), mid), "", "good") for mid in good_ids
        ]
        random.Random(seed).shuffle(items)
        self.app.broker.lease([QUEUE], 1, 0)  # creates the schema / declares the queue
        if self.url.startswith("sqlite"):
            self._inject_sqlite(items)
        elif self.url.startswith("postgresql"):
            self._inject_postgres(items)
        elif self.url.startswith("amqp"):
            self._inject_amqp(items)
        else:
            self._inject_redis(items)
        return good_ids

    def _inject_postgres(self, items: list[Bad]) -> None:
        ns = self.app.broker.options.key_prefix
        with psycopg.connect(self.url) as conn, conn.cursor() as cursor:
            cursor.executemany(
                "INSERT INTO conveyor.conveyor_messages (ns, id, queue, priority, body, state, "
                "deliveries) VALUES (%s, %s, %s, %s, %s, 0, %s)",
                [(ns, b.id, QUEUE, b.priority, b.body, b.deliveries) for b in items],
            )

    def _inject_amqp(self, items: list[Bad]) -> None:
        """Publish with plain py-amqp (as another application would), confirmed."""
        server = self.url.split("//", 1)[1].split("/", 1)[0].rsplit("@", 1)[1]
        prefix = self.app.broker.options.key_prefix
        confirmed: list[int] = [0]
        with amqp.Connection(server, userid="guest", password="guest") as conn:
            channel = conn.channel()
            channel.confirm_select()
            channel.events["basic_ack"].add(
                lambda tag, multiple: confirmed.__setitem__(0, max(confirmed[0], tag))
            )
            for item in items:
                headers: dict[str, object] = {QUEUE_HEADER: QUEUE, PRIORITY: item.priority}
                if item.deliveries != 0:
                    headers[BEFORE] = item.deliveries
                message = amqp.Message(
                    item.body, message_id=item.id, delivery_mode=2, application_headers=headers
                )
                channel.basic_publish(message, prefix, QUEUE, mandatory=True)
            deadline = time.monotonic() + 120
            while confirmed[0] < len(items) and time.monotonic() < deadline:
                conn.drain_events(timeout=1)
            assert confirmed[0] == len(items), "RabbitMQ did not confirm every message"

    def ready(self) -> int:
        """Messages ready in the queue (on RabbitMQ: not counting those held by consumers)."""
        return self.app.broker.stats([QUEUE])[QUEUE].ready

    def dead_count(self) -> int:
        if not self.url.startswith("amqp"):
            return self.app.broker.stats([QUEUE])[QUEUE].dead
        server = self.url.split("//", 1)[1].split("/", 1)[0].rsplit("@", 1)[1]
        with amqp.Connection(server, userid="guest", password="guest") as conn:
            _, count, _ = conn.channel().queue_declare(
                f"{self.app.broker.options.key_prefix}.dead", passive=True
            )
        return int(count)

    def _inject_sqlite(self, items: list[Bad]) -> None:
        ns = self.app.broker.options.key_prefix
        path = self.url.removeprefix("sqlite:///")
        with sqlite3.connect(path, autocommit=False) as conn:
            conn.executemany(
                "INSERT INTO conveyor_messages (ns, id, queue, priority, body, state, due, "
                "deliveries) VALUES (?, ?, ?, ?, ?, 0, NULL, ?)",
                [(ns, b.id, QUEUE, _or_text(b.priority), b.body, b.deliveries) for b in items],
            )
        conn.close()

    def _inject_redis(self, items: list[Bad]) -> None:
        import redis  # optional dependency of the tests' Redis runs

        from conveyor._redis_keys import RedisKeys

        keys = RedisKeys(self.app.broker.options.key_prefix)
        with redis.Redis.from_url(self.url) as client:
            first = int(client.incrby(keys.seq(QUEUE), len(items))) - len(items)
            pipe = client.pipeline(transaction=False)
            for n, item in enumerate(items, first + 1):
                fields: dict[str, object] = {"id": item.id, "q": QUEUE, "b": item.body}
                if item.priority is not None:
                    fields["p"] = _redis_value(item.priority)
                if item.deliveries != 0:
                    fields["n"] = _redis_value(item.deliveries)
                pipe.hset(keys.queue_key(QUEUE, f"msg:{n}"), mapping=fields)  # type: ignore[arg-type]
                pipe.zadd(keys.queue_key(QUEUE, "ready"), {str(n): 4 * 1e14 + n})
            pipe.sadd(keys.queues, QUEUE)
            pipe.rpush(keys.wake(QUEUE), 1)
            pipe.execute()

    def worker(self) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        env["CONVEYOR_BROKER_URL"] = self.url
        env["FUZZAPP_SETTINGS"] = json.dumps(self.settings)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        with self.log.open("ab") as log:
            return subprocess.Popen(
                [*WORKER, "-c", "2", "-l", "info"],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )


def _or_text(value: object) -> object:
    return "" if value is None else value  # NOT NULL column: an empty text instead


def _redis_value(value: object) -> bytes | str | int | float:
    if isinstance(value, bytes | str | int | float):
        return value
    return str(value)


@pytest.fixture
def injected(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Injected]:
    backend = request.node.callspec.params["backend"]
    settings = dict(SETTINGS)
    prefix = f"fz{uuid.uuid4().hex[:8]}"
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path}/broker.db"
    elif backend == "postgres":
        pg: PostgresServer = request.getfixturevalue("postgres_server")
        url = pg.url()
        settings["broker_transport_options"] = {"key_prefix": prefix}
    elif backend == "amqp":
        rabbit: RabbitServer = request.getfixturevalue("rabbit_server")
        results = f"sqlite:///{tmp_path}/results.db"
        url = f"{rabbit.url}?kv_url={quote(results, safe='')}"
        settings["broker_transport_options"] = {"key_prefix": prefix}
        settings["result_backend"] = results
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        url = server.url
        settings["broker_transport_options"] = {"key_prefix": prefix}
    built = Injected(url, settings, tmp_path)
    yield built
    built.app.close()


def _dead(app: Conveyor, limit: int) -> dict[str, tuple[str, str]]:
    return {d.id: (d.reason, d.detail) for d in app.broker.dead_letters(limit=limit)}


SLOW = [pytest.mark.slow, pytest.mark.timeout(600)]
#: The forged priorities and counts each broker's storage can hold.
STORED = {
    "sqlite": SQLITE_FIELDS,
    "redis": SQLITE_FIELDS,
    "postgres": POSTGRES_FIELDS,
    "amqp": AMQP_FIELDS,
}


@pytest.mark.parametrize(
    ("backend", "count"),
    [
        pytest.param("sqlite", 10_000, id="sqlite-10000"),
        pytest.param("redis", 10_000, id="redis-10000", marks=pytest.mark.redis),
        pytest.param("postgres", 1_000, id="postgres-1000", marks=pytest.mark.postgres),
        pytest.param("amqp", 1_000, id="amqp-1000", marks=pytest.mark.amqp),
        pytest.param("postgres", 10_000, id="postgres-10000", marks=[pytest.mark.postgres, *SLOW]),
        pytest.param("amqp", 10_000, id="amqp-10000", marks=[pytest.mark.amqp, *SLOW]),
    ],
)
def test_injected_malformed_messages_are_dead_lettered_and_good_tasks_run_once(
    injected: Injected, backend: str, count: int
) -> None:
    stored: StoredFields = STORED[backend]
    bad = list(malformed_messages(count, seed=count, max_bytes=2 * MAX_BYTES, stored=stored))
    good_ids = injected.inject(bad, good=max(count // 20, 100), seed=count)
    kinds = Counter(b.kind for b in bad)
    assert len(kinds) >= 25, kinds  # every kind of bad message is in the mix

    started = time.monotonic()
    worker = injected.worker()
    try:
        children = wait_until(
            lambda: len(kids := child_pids(worker.pid)) == 2 and kids, 30, "2 children"
        )
        stats = injected.app.broker.stats
        wait_until(
            lambda: (
                injected.dead_count() >= count
                and (s := stats([QUEUE])[QUEUE]).ready == 0
                and s.leased == 0
                and len(set(injected.runs.read_text().split())) == len(good_ids)
            ),
            240,
            f"{count} dead letters, every good task run and an empty queue",
            interval=0.5,
        )
        elapsed = time.monotonic() - started
        assert child_pids(worker.pid) == children  # no child died or was replaced
        assert worker.poll() is None
    finally:
        os.killpg(worker.pid, signal.SIGKILL)  # the worker's session: supervisor and children
        worker.wait(10)
    log = injected.log.read_text(errors="replace")
    for sign_of_death in ("died", "exited with code", "Traceback", "stopping the worker"):
        assert sign_of_death not in log, log[-3000:]

    dead = _dead(injected.app, count + 10)
    wrong = {
        b.id: (b.kind, b.reason, dead.get(b.id))
        for b in bad
        if b.id not in dead or dead[b.id][0] not in b.reason.split("|") or not dead[b.id][1]
    }
    assert wrong == {}
    assert set(dead) == {b.id for b in bad}  # no good task among them
    ran = injected.runs.read_text().split()
    assert Counter(ran) == Counter(good_ids)  # each good task exactly once
    # Nothing was left leased: on RabbitMQ a message held by the killed worker is back now.
    stats = injected.app.broker.stats([QUEUE])[QUEUE]
    assert (stats.ready, stats.leased, stats.delayed) == (0, 0, 0)
    print(f"{count} bad + {len(good_ids)} good on {backend}: {elapsed:.1f} s; {dict(kinds)}")
