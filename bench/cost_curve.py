"""Cost curve: drain rate and CPU per task of a default worker against backlog size, number
of queues and payload size - per-task cost should stay flat.

    .venv/bin/python -m bench.cost_curve --broker redis --json bench/results-cost-curve-redis.json
    .venv/bin/python -m bench.cost_curve --broker redis --series backlog --backlog 10000,100000
    .venv/bin/python -m bench.cost_curve_plot F [F ...]     # the PNGs in bench/

Each point fills a queue with ``send_many`` (no-op tasks, results off), starts the default
worker (``conveyor worker -A bench.cost_curve_app -c 2 -Q <queues>``), lets it run
``--skip`` tasks (start-up), then measures consecutive windows of ``--window`` tasks: the
drain rate and the CPU time (user + system, from /proc) of the worker's processes and of
redis-server per task. A point gives ``--samples`` consecutive windows from one fill (smaller
windows when the backlog is small). The worker is then stopped and the queues purged: a 1M
backlog is measured at its top, not drained.

* ``backlog``: 10k, 100k, 1M tasks in one queue (a backlog that would not fit in the free
  memory is skipped and reported as such);
* ``queues``: 1, 10, 50 queues, tasks spread round-robin, one worker consuming them all;
* ``payload``: one argument of 100 B, 10 KB, 200 KB (``bench.sink``).
"""

from __future__ import annotations

import argparse
import functools
import os
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench._common import (
    BIN,
    PYTHON,
    ROOT,
    Processes,
    cpu_seconds,
    machine,
    process_tree,
    save,
    tree_memory,
    workdir,
)

SERIES = ("backlog", "queues", "payload")
#: Redis memory per queued no-op task is ~0.5-0.7 KB; with AOF rewrites and slack, ask 3x.
REDIS_BYTES_PER_TASK = 2_000


@dataclass
class Window:
    tasks: int
    seconds: float
    worker_cpu: float
    server_cpu: float

    @property
    def rate(self) -> float:
        return self.tasks / self.seconds


@dataclass
class Point:
    """One x of one curve: the windows measured, or why it was skipped."""

    broker: str
    series: str
    x: int  # backlog size, number of queues or payload bytes
    backlog: int
    windows: list[Window] = field(default_factory=list)
    fill_rate: float = 0.0  # send_many tasks/s while filling
    stored_bytes_per_task: float | None = None  # Redis used_memory / SQLite file growth
    worker_rss_mib: float = 0.0
    load: float = 0.0  # load average (1 min) when the point finished
    skipped: str = ""

    def median(self, attr: str) -> float | None:
        if not self.windows:
            return None
        values = [getattr(w, attr) for w in self.windows]
        if attr.endswith("_cpu"):
            values = [v / w.tasks for v, w in zip(values, self.windows, strict=True)]
        return statistics.median(values)


@dataclass
class Plan:
    """How a point of ``count`` tasks is measured: ``skip`` start-up tasks, then ``windows``
    consecutive windows of ``window`` tasks, all from one fill."""

    skip: int
    window: int
    windows: int
    label: str  # names the profiles of the point

    @classmethod
    def of(cls, count: int, args: argparse.Namespace, label: str) -> Plan:
        skip = min(args.skip, count // 10)
        # A tail of ``skip`` tasks stays queued: the windows end before the queue runs dry.
        window = min(args.window, (count - 2 * skip) // args.samples)
        return cls(skip, window, args.samples, label)


class Bench:
    """One broker's server (if any), the app, and the steps of a point."""

    def __init__(
        self, broker: str, tmp: Path, procs: Processes, py_spy: Path | None = None
    ) -> None:
        self.broker, self.procs, self.tmp, self.py_spy = broker, procs, tmp, py_spy
        self.server: Any = None
        self.server_pid: int | None = None
        sys.path.insert(0, str(ROOT))
        if broker == "redis":
            import redis
            from tests.servers import RedisServer

            self.server = RedisServer(appendonly=True)
            self.server.start()
            self.redis = redis.Redis.from_url(self.server.url)
            self.redis.config_set("appendfsync", "everysec")
            self.url = self.server.url
            self.server_pid = self.server.process.pid
        else:
            self.db = tmp / "conveyor.sqlite3"
            self.url = f"sqlite:///{self.db}"
        os.environ["CONVEYOR_BROKER_URL"] = self.url
        from bench import cost_curve_app

        self.mod = cost_curve_app
        self.app = cost_curve_app.app

    def close(self) -> None:
        if self.server is not None:
            self.redis.close()
            self.server.cleanup()

    # -- the backlog -----------------------------------------------------------------------
    def stored_bytes(self) -> int:
        if self.broker == "redis":
            return int(self.redis.info("memory")["used_memory"])
        if not self.db.exists():
            return 0
        with sqlite3.connect(self.db) as conn:  # pages in use: the file does not shrink
            used = conn.execute(
                "SELECT (SELECT page_count FROM pragma_page_count)"
                " - (SELECT freelist_count FROM pragma_freelist_count)"
            ).fetchone()[0]
            return int(used) * int(conn.execute("PRAGMA page_size").fetchone()[0])

    def depth(self, queues: list[str]) -> Callable[[], int]:
        """Messages left (ready + leased), cheap enough to poll at any backlog."""
        if self.broker == "redis":

            def redis_depth() -> int:
                stats = self.app.broker.stats(queues).values()
                return sum(s.ready + s.leased for s in stats)

            return redis_depth
        # count(*) would scan a million rows; the backlog is one run of seqs (one producer,
        # FIFO, acked rows deleted), so its ends give its length in two index look-ups.
        conn = sqlite3.connect(self.db, isolation_level=None, check_same_thread=False)

        def sqlite_depth() -> int:
            row = conn.execute(
                "SELECT (SELECT max(seq) FROM conveyor_messages)"
                " - (SELECT min(seq) FROM conveyor_messages) + 1"
            ).fetchone()
            return int(row[0] or 0)

        return sqlite_depth

    def fill(self, count: int, queues: list[str], payload: int | None) -> float:
        """Enqueue ``count`` tasks round-robin over ``queues`` with ``send_many``; tasks/s."""
        if payload is None:
            make = self.mod.noop.s
        else:
            data = "x" * payload
            make = functools.partial(self.mod.sink.s, data)
        chunk = 5_000 if payload is None else max(10, 2_000_000 // payload)
        started = time.perf_counter()
        for first in range(0, count, chunk):
            sigs = [
                make().set(queue=queues[i % len(queues)])
                for i in range(first, min(count, first + chunk))
            ]
            self.app.send_many(sigs)
        return count / (time.perf_counter() - started)

    def purge(self, queues: list[str]) -> None:
        if self.broker == "redis":
            # After the worker stopped: faster than purging 1M messages, and a synchronous
            # FLUSHDB of 1M keys can outlast the client's read timeout. Wait for the
            # background free: its CPU is redis-server's and must not count for the next point.
            self.redis.flushdb(asynchronous=True)
            deadline = time.monotonic() + 120
            while int(self.redis.info("memory").get("lazyfree_pending_objects", 0)):
                if time.monotonic() > deadline:
                    raise TimeoutError("redis-server did not free the flushed keys in 120 s")
                time.sleep(0.1)
        else:
            self.app.broker.purge(queues)

    # -- one fill, its windows -------------------------------------------------------------
    def run_fill(
        self, count: int, queues: list[str], payload: int | None, plan: Plan
    ) -> tuple[list[Window], float, float | None, float]:
        before = self.stored_bytes()
        fill_rate = self.fill(count, queues, payload)
        stored = (self.stored_bytes() - before) / count
        depth = self.depth(queues)
        if depth() != count:
            raise RuntimeError(f"filled {count} tasks but {depth()} are queued")
        worker = self.procs.start(
            "worker",
            [
                *(PYTHON, "-m", "conveyor", "worker", "-A", "bench.cost_curve_app"),
                *("-c", "2", "-Q", ",".join(queues)),
            ],
            {"CONVEYOR_BROKER_URL": self.url},
        )
        windows: list[Window] = []
        rss = 0.0
        try:
            left = wait_depth(depth, count - plan.skip, worker.pid, timeout=120)
            pids = process_tree(worker.pid)
            spies = self.spy(pids, plan.label) if self.py_spy else []
            mark = (time.perf_counter(), left, cpu_seconds(pids), self.server_cpu())
            for _ in range(plan.windows):
                left = wait_depth(depth, mark[1] - plan.window, worker.pid, timeout=300)
                now = (time.perf_counter(), left, cpu_seconds(pids), self.server_cpu())
                windows.append(
                    Window(mark[1] - now[1], now[0] - mark[0], now[2] - mark[2], now[3] - mark[3])
                )
                mark = now
            rss = tree_memory(worker.pid).rss_mib
            for spy in spies:
                spy.wait(60)
        finally:
            self.procs.stop(worker)
            self.purge(queues)
        return windows, fill_rate, stored, rss

    def spy(self, pids: list[int], label: str) -> list[subprocess.Popen[bytes]]:
        """py-spy each worker process for 5 s (raw stacks of the thread holding the GIL)."""
        assert self.py_spy is not None
        self.py_spy.mkdir(parents=True, exist_ok=True)
        return [
            subprocess.Popen(
                [
                    *(str(BIN / "py-spy"), "record", "-p", str(pid), "-d", "5", "-r", "200"),
                    *("-f", "raw", "--gil", "-o", str(self.py_spy / f"{label}-{pid}.txt")),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for pid in pids
        ]

    def server_cpu(self) -> float:
        return cpu_seconds([self.server_pid]) if self.server_pid else 0.0

    def point(self, series: str, x: int, args: argparse.Namespace) -> Point:
        count = x if series == "backlog" else args.fill
        queues = [self.app.conf.task_default_queue]
        if series == "queues" and x > 1:
            queues = [f"q{i}" for i in range(x)]
        payload = x if series == "payload" else None
        if series == "payload":  # fewer tasks for big payloads, and shorter windows
            count = min(args.fill, args.payload_bytes // x)
        plan = Plan.of(count, args, f"{self.broker}-{series}-{x}")
        point = Point(self.broker, series, x, count)
        need = count * (REDIS_BYTES_PER_TASK + 2 * (payload or 0))
        if self.broker == "redis" and need > available_memory() * 0.7:
            point.skipped = (
                f"needs ~{need / 2**20:,.0f} MiB of Redis memory, "
                f"{available_memory() / 2**20:,.0f} MiB available"
            )
            return point
        point.windows, point.fill_rate, point.stored_bytes_per_task, point.worker_rss_mib = (
            self.run_fill(count, queues, payload, plan)
        )
        point.load = os.getloadavg()[0]
        return point


def wait_depth(depth: Callable[[], int], target: int, worker: int, timeout: float) -> int:
    """Poll until at most ``target`` messages are left; return how many are left."""
    deadline = time.monotonic() + timeout
    while True:
        left = depth()
        if left <= target:
            return left
        if left == 0:
            raise RuntimeError(f"the queue ran dry before {target} tasks were left")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{left} tasks left, waited for {target}, after {timeout} s")
        if not os.path.exists(f"/proc/{worker}"):
            raise RuntimeError("the worker exited (see its log with --keep)")
        time.sleep(0.02)


def available_memory() -> int:
    with open("/proc/meminfo") as info:
        for line in info:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def numbers(text: str) -> list[int]:
    return [int(float(n)) for n in text.split(",") if n]


def table(points: list[Point]) -> str:
    """A markdown table of the points (medians of their windows)."""
    unit = {"backlog": "tasks queued", "queues": "queues", "payload": "payload bytes"}
    lines = [
        "| broker | series | x | backlog | drain (median) | worker CPU/task | server CPU/task "
        "| windows | send_many | stored/task | worker RSS | load |",
        "|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for p in points:
        if p.skipped:
            lines.append(
                f"| {p.broker} | {p.series} | {p.x:,} | {p.backlog:,} | skipped: "
                f"{p.skipped} | | | | | | | |"
            )
            continue
        rate, wcpu, scpu = p.median("rate"), p.median("worker_cpu"), p.median("server_cpu")
        raw = " / ".join(f"{w.rate:,.0f}" for w in p.windows)
        stored = p.stored_bytes_per_task
        lines.append(
            f"| {p.broker} | {p.series} | {p.x:,} {unit[p.series]} | {p.backlog:,} "
            f"| {rate or 0:,.0f}/s | {(wcpu or 0) * 1e6:,.0f} µs "
            f"| {'-' if p.broker == 'sqlite' else f'{(scpu or 0) * 1e6:,.0f} µs'} "
            f"| {raw} | {p.fill_rate:,.0f}/s "
            f"| {'-' if stored is None else f'{stored:,.0f} B'} | {p.worker_rss_mib:,.0f} MiB "
            f"| {p.load:.1f} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker", choices=["redis", "sqlite"], required=True)
    parser.add_argument("--series", default=",".join(SERIES), help="backlog,queues,payload")
    parser.add_argument("--backlog", default="10000,100000,1000000", help="tasks queued")
    parser.add_argument("--queues", default="1,10,50", help="queues consumed by the worker")
    parser.add_argument("--payload", default="100,10240,204800", help="argument bytes")
    parser.add_argument("--fill", type=int, default=20_000, help="backlog of the other series")
    parser.add_argument(
        "--payload-bytes",
        type=int,
        default=600_000_000,
        help="cap on a payload point's backlog in bytes (fewer tasks for big payloads)",
    )
    parser.add_argument("--skip", type=int, default=1_000, help="tasks left to start-up")
    parser.add_argument("--window", type=int, default=3_000, help="tasks per window (at most)")
    parser.add_argument("--samples", type=int, default=3, help="windows per point")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--py-spy", type=Path, help="profile each point's workers into DIR")
    parser.add_argument("--keep", action="store_true", help="keep worker logs and files")
    args = parser.parse_args()
    series = [s for s in args.series.split(",") if s]
    if unknown := set(series) - set(SERIES):
        parser.error(f"unknown series: {', '.join(sorted(unknown))}")
    xs = {
        "backlog": numbers(args.backlog),
        "queues": numbers(args.queues),
        "payload": numbers(args.payload),
    }
    if min([*xs["backlog"], args.fill]) < 2 * args.skip:
        parser.error("every backlog must be at least twice --skip")

    info = machine()
    points: list[Point] = []
    for broker in [args.broker]:  # one per process: the app reads its URL at import
        with workdir("conveyor-curve-", args.keep) as (tmp, procs):
            print(f"{broker}: logs in {tmp}", file=sys.stderr)
            bench = Bench(broker, tmp, procs, args.py_spy)
            try:
                for name in series:
                    for x in xs[name]:
                        point = bench.point(name, x, args)
                        points.append(point)
                        print(
                            f"  {name} {x:,}: " + table([point]).splitlines()[-1],
                            file=sys.stderr,
                            flush=True,
                        )
            finally:
                bench.close()
    info["load_after"] = os.getloadavg()[0]
    save(args.json, {"machine": info, "args": vars(args), "points": [asdict(p) for p in points]})
    print(
        f"### Cost curve ({info['date']}, load {info['load_before']:.1f} -> "
        f"{info['load_after']:.1f}, Conveyor {info['conveyor']})\n"
    )
    print(table(points))
    return 0


if __name__ == "__main__":
    sys.exit(main())
