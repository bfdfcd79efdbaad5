"""Metrics in one process: the middleware's counts per task and queue, histograms, the
collectors' exposition, the inline server, and the cluster collector on a broker."""

from __future__ import annotations

import json
import logging
import re
import socket
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from conveyor import Conveyor, Task
from conveyor.brokers.base import Message
from conveyor.exceptions import Reject
from conveyor.metrics import (
    CELERY_EXPORTER_RENAMES,
    ClusterCollector,
    InlineServer,
    MetricsMiddleware,
    Tally,
    TallyCollector,
)
from conveyor.metrics.names import BUCKETS, TASK_COUNTERS
from conveyor.testing import TestWorker, make_test_app
from tests.servers import free_port

type Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def exposition(*collectors: object) -> Samples:
    registry = CollectorRegistry(auto_describe=False)
    for collector in collectors:
        registry.register(collector)  # type: ignore[arg-type]
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def labels(name: str, queue: str = "default", host: str = "h") -> tuple[tuple[str, str], ...]:
    return (("hostname", host), ("name", name), ("queue_name", queue))


@pytest.fixture
def metered() -> tuple[Conveyor, MetricsMiddleware]:
    metrics = MetricsMiddleware()
    app = make_test_app("metrics", middleware=[metrics])
    return app, metrics


def test_counts_every_outcome_per_task_and_queue(
    metered: tuple[Conveyor, MetricsMiddleware],
) -> None:
    app, metrics = metered

    @app.task(name="m.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="m.fail")
    def fail() -> None:
        raise ValueError("no")

    @app.task(name="m.reject")
    def reject() -> None:
        raise Reject("no way")

    @app.task(name="m.flaky", bind=True)
    def flaky(self: Task[[], str]) -> str:
        if self.request.retries < 2:
            raise self.retry(countdown=0)
        return "ok"

    for i in range(3):
        add.delay(i, i)
    add.apply_async((1, 1), queue="other")
    fail.delay()
    reject.delay()
    flaky.delay()
    revoked = add.delay(9, 9)
    app.revoke([revoked.id])
    app.send_task("m.unknown")
    app.broker.publish([Message("garbage-1", "default", b"not a message")])
    worker = TestWorker(app, queues=["default", "other"])
    try:
        worker.run_until_idle(propagate=False)
    finally:
        worker.stop(timeout=10)
    samples = exposition(TallyCollector(metrics.tally, "h"))

    def value(metric: str, name: str, queue: str = "default") -> float:
        return samples.get((metric, labels(name, queue)), 0.0)

    assert value("conveyor_task_sent_total", "m.add") == 4
    assert value("conveyor_task_sent_total", "m.add", "other") == 1
    assert value("conveyor_task_sent_total", "m.unknown") == 1
    assert value("conveyor_task_started_total", "m.add") == 3
    assert value("conveyor_task_started_total", "m.add", "other") == 1
    assert value("conveyor_task_succeeded_total", "m.add") == 3
    assert value("conveyor_task_failed_total", "m.fail") == 1
    assert value("conveyor_task_started_total", "m.flaky") == 3
    assert value("conveyor_task_retried_total", "m.flaky") == 2
    assert value("conveyor_task_succeeded_total", "m.flaky") == 1
    assert value("conveyor_task_revoked_total", "m.add") == 1
    assert value("conveyor_task_received_total", "m.add") == 4  # 3 run + 1 revoked
    assert value("conveyor_task_dead_lettered_total", "m.unknown") == 1
    assert value("conveyor_task_failed_total", "m.reject") == 1  # once: it ran here
    assert value("conveyor_task_dead_lettered_total", "m.reject") == 1
    assert value("conveyor_task_runtime_seconds_count", "m.reject") == 1
    assert value("conveyor_task_dead_lettered_total", "unknown") == 1  # undecodable
    assert value("conveyor_task_received_total", "unknown") == 1
    assert value("conveyor_task_runtime_seconds_count", "m.flaky") == 3
    assert value("conveyor_task_queue_wait_seconds_count", "m.add") == 3
    inf = (*labels("m.add"), ("le", "+Inf"))
    assert samples[("conveyor_task_runtime_seconds_bucket", tuple(sorted(inf)))] == 3


def test_histogram_buckets_are_cumulative_and_le() -> None:
    tally = Tally()
    for value in (0.001, 0.005, 0.2, 3.0, 10_000.0):
        tally.observe("conveyor_task_runtime_seconds", "t", "q", value)
    samples = exposition(TallyCollector(tally, "h"))

    def bucket(le: str) -> float:
        key = tuple(sorted((*labels("t", "q"), ("le", le))))
        return samples[("conveyor_task_runtime_seconds_bucket", key)]

    assert bucket("0.005") == 2  # 0.005 <= 0.005
    assert bucket("0.25") == 3
    assert bucket("5.0") == 4
    assert bucket("600.0") == 4
    assert bucket("+Inf") == 5
    assert samples[("conveyor_task_runtime_seconds_sum", labels("t", "q"))] == pytest.approx(
        10_003.206
    )
    assert len(BUCKETS) == 16


def test_take_and_merge_add_up_like_one_tally() -> None:
    supervisor, child_a, child_b = Tally(), Tally(), Tally()
    child_a.count("started", "t", "q")
    child_a.observe("conveyor_task_runtime_seconds", "t", "q", 0.3)
    child_b.count("started", "t", "q", 2)
    for child in (child_a, child_b):
        delta = child.take()
        assert delta is not None
        supervisor.merge(delta)
    assert child_a.take() is None  # taken: nothing twice
    child_a.count("started", "t", "q")
    supervisor.merge(child_a.take() or ({}, {}))
    counters, histograms = supervisor.snapshot()
    assert counters == {("started", "t", "q"): 4.0}
    assert sum(histograms[("conveyor_task_runtime_seconds", "t", "q")][:-1]) == 1
    supervisor.merge(({}, {("conveyor_task_runtime_seconds", "t", "q"): [1.0]}))  # malformed
    assert supervisor.snapshot()[1] == histograms


def test_inline_server_answers_from_the_callers_loop_and_drops_silent_clients() -> None:
    tally = Tally()
    tally.count("succeeded", "t", "q", 7)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TallyCollector(tally, "h"))
    server = InlineServer(registry, "127.0.0.1", 0)
    try:
        server.handle()  # nothing waiting: returns at once
        silent = socket.create_connection(("127.0.0.1", server.port))
        started = time.monotonic()
        server.handle()  # a client that never sends its request is dropped after 1 s
        assert time.monotonic() - started < 3
        silent.close()
        client = socket.create_connection(("127.0.0.1", server.port))
        client.sendall(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        server.handle()
        data = b""
        while chunk := client.recv(65536):
            data += chunk
        client.close()
        assert b'conveyor_task_succeeded_total{hostname="h",name="t",queue_name="q"} 7.0' in data
    finally:
        server.close()


def test_cluster_collector_reads_queues_and_workers_and_skips_bad_announcements() -> None:
    app = make_test_app("cluster")

    @app.task(name="c.noop")
    def noop() -> None:
        return None

    noop.delay()
    noop.apply_async(countdown=60)
    info = {"concurrency": 2, "running": 1}
    app.kv.set_value("worker:node@a/1", json.dumps(info).encode(), 60)
    app.kv.set_value("worker:node@a/2", json.dumps({"concurrency": 2, "running": 0}).encode(), 60)
    app.kv.set_value("worker:solo@b", json.dumps({"concurrency": 4, "running": 4}).encode(), 60)
    app.kv.set_value("worker:broken", b"{not json", 60)
    samples = exposition(ClusterCollector(app))
    assert samples[("conveyor_queue_length", (("queue_name", "default"),))] == 1
    delayed = (("queue_name", "default"), ("state", "delayed"))
    assert samples[("conveyor_queue_messages", delayed)] == 1
    assert samples[("conveyor_active_worker_count", ())] == 2
    assert samples[("conveyor_worker_processes", (("hostname", "node@a"),))] == 2
    assert samples[("conveyor_worker_slots", (("hostname", "node@a"),))] == 4
    assert samples[("conveyor_worker_tasks_active", (("hostname", "node@a"),))] == 1
    assert samples[("conveyor_worker_slots_idle", (("hostname", "node@a"),))] == 3
    assert samples[("conveyor_worker_slots_idle", (("hostname", "solo@b"),))] == 0
    assert samples[("conveyor_exporter_scrape_errors_total", ())] == 0
    app.close()


def test_rename_table_covers_every_counter_and_names_real_metrics() -> None:
    tally = Tally()
    for event in TASK_COUNTERS:
        tally.count(event, "t", "q")
    tally.observe("conveyor_task_runtime_seconds", "t", "q", 1.0)
    served = {name for name, _ in exposition(TallyCollector(tally, "h", lambda: (1, 1, 0)))}
    app = make_test_app("names")
    app.send_task("n.any")
    served |= {name for name, _ in exposition(ClusterCollector(app))}
    app.close()
    for ours in CELERY_EXPORTER_RENAMES.values():
        assert ours in served, ours


def test_grafana_dashboard_queries_only_metrics_we_serve() -> None:
    dashboard = json.loads((Path(__file__).parents[2] / "docs/grafana/conveyor.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    used = {name for expr in exprs for name in re.findall(r"conveyor_[a-z_]+", expr)}
    tally = Tally()
    for event in TASK_COUNTERS:
        tally.count(event, "t", "q")
    tally.observe("conveyor_task_runtime_seconds", "t", "q", 1.0)
    tally.observe("conveyor_task_queue_wait_seconds", "t", "q", 1.0)
    app = make_test_app("dash")
    app.send_task("n.any")
    app.kv.set_value("worker:w", b'{"concurrency": 1, "running": 0}', 60)
    served = {name for name, _ in exposition(TallyCollector(tally, "h"), ClusterCollector(app))}
    app.close()
    assert len(used) >= 12
    assert used <= served, used - served


def test_cluster_collector_survives_an_unreachable_broker(caplog: pytest.LogCaptureFixture) -> None:
    app = Conveyor("down", broker=f"redis://127.0.0.1:{free_port()}/0")
    collector = ClusterCollector(app)
    with caplog.at_level(logging.ERROR, logger="conveyor.metrics"):
        samples = exposition(collector)
        samples = exposition(collector)
    app.close()
    assert samples == {("conveyor_exporter_scrape_errors_total", ()): 4.0}
    assert any("reading queue stats failed" in r.getMessage() for r in caplog.records)
