"""The dashboard at scale: seed a task history of N tasks (default 1,000,000) and 100 workers'
announcements, serve the dashboard with uvicorn on a free loopback port, and time its pages
over HTTP.

    .venv/bin/python -m bench.dashboard_history [--tasks 1000000] [--messages 1000000]
        [--repeat 7] [--keep DIR]

The history rows, their timeline (2 events each) and the per-minute counts are written
straight into the history file in bulk (folding a million tasks' events through a broker
would take far longer and measures the indexer, not the pages); the broker is a SQLite file
with 100 worker announcements and ``--messages`` queued messages (published through the
broker in batches: 5 queues, priorities 0-9, 10% delayed, 1% dead-lettered, 1,000 leased),
which the queues page counts per state and priority. Each page is fetched ``--repeat`` times
after one warm-up; the median and the slowest are printed (ms). A script, not a test: nothing
here asserts a time.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import uvicorn
from tests.servers import free_port

from conveyor import Conveyor
from conveyor.brokers.base import DeadLetterReason, Message
from conveyor.dashboard import create_dashboard
from conveyor.dashboard.history import EVENTS, MINUTES, SEARCH, TABLE, TaskFilter, TaskHistory
from conveyor.dashboard.indexer import HistoryIndexer

NAMES = [f"shop.{verb}_{thing}" for verb in ("send", "sync", "build") for thing in "abcdefg"]
QUEUES = ["default", "emails", "reports", "billing", "media"]
STATES = ["SUCCESS"] * 90 + ["FAILURE"] * 4 + ["RETRY"] * 2 + ["REVOKED"] + ["QUEUED"] * 3


def seed(history: TaskHistory, tasks: int, workers: list[str]) -> tuple[float, str]:
    """Write ``tasks`` rows spread over the last 7 days; return the seconds it took and one
    task id (for the task page)."""
    rng = random.Random(15)
    now = time.time()
    started = time.perf_counter()
    sample = ""
    batch = 20_000
    with history.db.write() as conn:
        conn.execute("SELECT 1")  # creates the schema
    for start in range(0, tasks, batch):
        rows, search, events = [], [], []
        for n in range(start, min(tasks, start + batch)):
            task_id = f"{rng.getrandbits(128):032x}"
            first = now - 7 * 86400 * (1 - n / tasks)
            state = rng.choice(STATES)
            runtime = rng.expovariate(20.0)
            args = f'[{n}, "customer-{n % 5000}"] {{"order": {n * 7}}}'
            error = "ValueError: card declined" if state == "FAILURE" else ""
            done = first + 0.01 + runtime if state in ("SUCCESS", "FAILURE") else None
            rows.append(
                (
                    task_id,
                    NAMES[n % len(NAMES)],
                    QUEUES[n % len(QUEUES)],
                    workers[n % len(workers)],
                    state,
                    first,
                    done or first,
                    first + 0.01,
                    done,
                    runtime if done else None,
                    1 if state == "RETRY" else 0,
                    args,
                    error,
                    None,
                    task_id,
                    None,
                    None,
                )
            )
            search.append((n + 1, args))
            events.append((task_id, first, "task-sent", "web.1", ""))
            if done:
                kind = "task-succeeded" if state == "SUCCESS" else "task-failed"
                events.append((task_id, done, kind, workers[n % len(workers)], error))
            if n == tasks // 2:
                sample = task_id
        with history.db.write() as conn:
            conn.executemany(f"INSERT INTO {TABLE} VALUES ({','.join('?' * 17)})", rows)
            conn.executemany(f"INSERT INTO {SEARCH} (rowid, args) VALUES (?, ?)", search)
            conn.executemany(f"INSERT INTO {EVENTS} VALUES (?, ?, ?, ?, ?)", events)
    minute_now = int(now // 60)
    with history.db.write() as conn:
        conn.executemany(
            f"INSERT INTO {MINUTES} VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (m, q, 20, 18, 1, 1, 18 * 0.05, 0.4)
                for m in range(minute_now - 24 * 60, minute_now + 1)
                for q in QUEUES
            ],
        )
        conn.execute("ANALYZE")
    return time.perf_counter() - started, sample


def queue_messages(app: Conveyor, messages: int) -> float:
    """Publish ``messages`` messages (10% delayed by an hour, priorities 0-9, over 5 queues),
    dead-letter 1% of them and keep 1,000 leased; return the seconds it took."""
    rng = random.Random(16)
    started = time.perf_counter()
    batch = 5000
    for start in range(0, messages, batch):
        app.broker.publish(
            [
                Message(
                    f"m{n}",
                    QUEUES[n % len(QUEUES)],
                    b'{"task": "shop.send_a", "args": [1]}',
                    rng.randrange(10),
                    countdown=3600.0 if n % 10 == 0 else 0.0,
                )
                for n in range(start, min(messages, start + batch))
            ]
        )
    for queue in QUEUES:
        for delivery in app.broker.lease([queue], messages // 100 // len(QUEUES), 0):
            app.broker.dead_letter(delivery, DeadLetterReason.REJECTED, "bench")
        app.broker.lease([queue], min(200, messages // 1000), 0)  # held: leased
    return time.perf_counter() - started


def indexer_rate(directory: Path, tasks: int = 10_000) -> float:
    """Events folded per second: ``tasks`` tasks' sent/received/started/succeeded events
    written to a SQLite broker's stream, then folded into a fresh history file."""
    app = Conveyor(
        "bench-indexer",
        broker=f"sqlite:///{directory}/indexer-broker.db",
        events_max_length=tasks * 4 + 100,
    )
    history = TaskHistory(directory / "indexer-history.db")
    try:
        writer = app.events.writer
        for n in range(tasks):
            task = {"uuid": f"task-{n}", "name": NAMES[n % len(NAMES)], "queue": "default"}
            writer.emit("task-sent", {**task, "args": f"[{n}]", "kwargs": "{}"})
            writer.emit("task-received", task, "worker1@host")
            writer.emit("task-started", task, "worker1@host")
            writer.emit("task-succeeded", {**task, "runtime": 0.01}, "worker1@host")
            if n % 1000 == 0:
                app.events.flush()
        app.events.flush()
        indexer = HistoryIndexer(lambda: app.broker.streams, history)
        started = time.perf_counter()
        folded = 0
        while read := indexer.catch_up():
            folded += read
        return folded / (time.perf_counter() - started)
    finally:
        history.close()
        app.close()


def serve(app: Conveyor, history_file: Path) -> tuple[str, uvicorn.Server, threading.Thread]:
    port = free_port()
    config = uvicorn.Config(
        create_dashboard(app, history=history_file), host="127.0.0.1", port=port, log_level="error"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("the dashboard did not start")
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}", server, thread


def timed(url: str, repeat: int) -> tuple[float, float, int]:
    samples = []
    size = 0
    for i in range(repeat + 1):
        started = time.perf_counter()
        with urllib.request.urlopen(url, timeout=60) as answer:
            size = len(answer.read())
            assert answer.status == 200, url
        if i:  # the first is a warm-up
            samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples), max(samples), size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=100)
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--keep", type=Path, help="use (and keep) this directory")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    options = parser.parse_args()
    directory = options.keep or Path(tempfile.mkdtemp(prefix="conveyor-dashboard-bench-"))
    directory.mkdir(parents=True, exist_ok=True)
    app = Conveyor("bench", broker=f"sqlite:///{directory}/broker.db", broker_lease_timeout=3600)
    history_file = directory / "history.db"
    try:
        workers = [f"worker{i}@host{i // 10}" for i in range(options.workers)]
        for i, name in enumerate(workers):
            info = {"pid": 1000 + i, "queues": QUEUES, "concurrency": 8, "processed": i * 1000}
            app.kv.set_value(f"worker:{name}", json.dumps(info).encode(), 3600)
        if sum(s.ready for s in app.broker.stats().values()) == 0:
            took = queue_messages(app, options.messages)
            print(f"queued {options.messages:,} messages in {took:.0f} s")
        started = time.perf_counter()
        split = app.broker.priority_counts(QUEUES)
        counted = (time.perf_counter() - started) * 1000
        ready = sum(sum((c.ready or {}).values()) for c in split.values())
        print(f"broker.priority_counts of {len(QUEUES)} queues: {counted:.0f} ms ({ready:,} ready)")
        history = TaskHistory(history_file)
        took, sample = 0.0, ""
        if history.count(TaskFilter(), cap=1) == 0:
            took, sample = seed(history, options.tasks, workers)
        else:  # a kept directory: measure what it holds
            sample = history.tasks(TaskFilter(), limit=1)[0][0].id
        history.close()
        size_mb = history_file.stat().st_size / 1e6
        what = f"seeded {options.tasks:,} tasks in {took:.0f} s" if took else "reused the history"
        print(f"{what}; history file {size_mb:.0f} MB")
        print(f"indexer: {indexer_rate(directory):,.0f} events folded per second")
        base, server, thread = serve(app, history_file)
        pages = [
            ("tasks, newest 50", "/tasks"),
            ("tasks, 200 a page", "/tasks?size=200"),
            ("state=FAILURE", "/tasks?state=FAILURE"),
            ("state=QUEUED (revoke all)", "/tasks?state=QUEUED"),
            ("name=shop.sync_c", "/tasks?name=shop.sync_c"),
            ("name glob shop.build_*", "/tasks?name=shop.build_*"),
            ("queue=billing", "/tasks?queue=billing"),
            ("worker=worker42@host4", "/tasks?worker=worker42%40host4"),
            ("since 1h", "/tasks?since=1h"),
            ("state+queue+since 24h", "/tasks?state=FAILURE&queue=emails&since=24h"),
            ("search argument", "/tasks?search=customer-4242"),
            ("search a word every task has", "/tasks?search=customer"),
            ("search id prefix", f"/tasks?search={sample[:10]}"),
            ("deep page (5 days back)", f"/tasks?before={time.time() - 5 * 86400:.3f}_1"),
            ("task page", f"/tasks/{sample}"),
            ("overview (charts, hour)", "/"),
            ("overview (charts, day)", "/?range=day"),
            ("workers (100)", "/workers"),
            ("queues (per priority)", "/queues"),
        ]
        figures = {}
        print(f"{'page':<28} {'median ms':>10} {'max ms':>8} {'KB':>6}")
        for label, path in pages:
            median, slowest, size = timed(base + path, options.repeat)
            figures[label] = {"median_ms": round(median, 1), "max_ms": round(slowest, 1)}
            print(f"{label:<28} {median:>10.1f} {slowest:>8.1f} {size / 1000:>6.0f}")
        if options.json:
            options.json.write_text(json.dumps(figures, indent=2))
        server.should_exit = True
        thread.join(10)
    finally:
        app.close()
        if options.keep is None:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
