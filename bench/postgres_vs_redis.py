"""Conveyor on PostgreSQL beside Conveyor on Redis and procrastinate (PostgreSQL), one run.

    .venv/bin/python -m bench.postgres_vs_redis [--drain 20000] [--delay 2000] [--only NAME]

Every side runs as its users run it, with 2 worker processes, against servers this script
starts on free loopback ports (both durable: PostgreSQL with fsync on, Redis with AOF
``everysec``):

* Conveyor/PostgreSQL and Conveyor/Redis: ``python -m conveyor worker -A bench.conveyor_app
  -c 2`` (defaults: at-least-once, prefetch 1 per free slot, log level info).
* procrastinate: 2 ``procrastinate worker`` processes (its default concurrency of 1 each);
  it stores no task results, so only results-off rows have its numbers.

Measured, each side in turn (so all see the same background load): enqueue of one call at a
time and bulk (Conveyor ``send_many``; procrastinate ``batch_defer``), best of ``--rounds``;
drain of ``--drain`` queued tasks (steady state: tasks/s while the queue went from 90% to
10% full); and for Conveyor the round trip ``delay().get()`` after the worker idled 0.2 s
(the pickup of an idle worker: LISTEN/NOTIFY on PostgreSQL, a blocking pop on Redis).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import _common as common
from bench._common import (
    BIN,
    CONVEYOR_WORKER,
    Processes,
    Side,
    add_count_options,
    drain,
    enqueue_rounds,
    fmt,
    machine,
    percentiles,
    print_header,
    save,
    step,
    version,
    workdir,
)
from bench._latency import IDLE_PAUSE, measure

ROOT = Path(__file__).resolve().parent.parent


class ConveyorOn(Side):
    """Conveyor with an app of its own on ``url`` (several brokers in one process)."""

    def __init__(self, name: str, url: str, procs: Processes) -> None:
        super().__init__(procs)
        from conveyor import Conveyor

        self.name = name
        self.url = url
        self.app = Conveyor("bench", broker=url)
        self.noop = self.app.task(name="bench.noop", ignore_result=True)(lambda: None)
        self.noop_result = self.app.task(name="bench.noop_result")(lambda: None)
        self.clock = self.app.task(name="bench.clock")(time.time)
        self.queue = self.app.conf.task_default_queue

    def reset(self) -> None:
        self.app.broker.purge([self.queue])

    def delay(self, with_result: bool) -> Any:
        return (self.noop_result if with_result else self.noop).delay()

    def bulk(self, count: int, with_result: bool) -> None:
        task = self.noop_result if with_result else self.noop
        self.app.send_many([task.s() for _ in range(count)])

    def depth(self) -> tuple[int, int]:
        stats = self.app.broker.stats([self.queue])[self.queue]
        return stats.ready, stats.leased

    def start_worker(self, *extra: str, **env: str) -> subprocess.Popen[bytes]:
        env = {"CONVEYOR_BROKER_URL": self.url, **env}
        log = "worker-" + self.name.replace("/", "-").lower()
        return self.procs.start(log, [*CONVEYOR_WORKER, *extra], env)

    def idle_latency(self, count: int) -> list[float]:
        env = {**os.environ, "CONVEYOR_BROKER_URL": self.url}
        return measure("conveyor", count, env, IDLE_PAUSE)

    def idle_pickup(self, count: int) -> list[float]:
        """Seconds from ``delay()`` to the task's start, each after ``IDLE_PAUSE`` s idle."""
        samples = []
        for n in range(count + 5):  # the first ones open connections
            time.sleep(IDLE_PAUSE)
            sent = time.time()
            started = self.clock.delay().get(timeout=10)
            if n >= 5:
                samples.append(float(started) - sent)
        return samples


class ProcrastinateSide(Side):
    name = "procrastinate"

    def __init__(self, url: str, procs: Processes) -> None:
        super().__init__(procs)
        self.url = url
        os.environ["BENCH_PG_URL"] = url
        from bench import procrastinate_app

        self.mod = procrastinate_app
        self.mod.app.open()
        subprocess.run(
            [str(BIN / "procrastinate"), "-a", "bench.procrastinate_app.app", "schema", "--apply"],
            cwd=ROOT,
            env={**os.environ, "BENCH_PG_URL": url, "PYTHONPATH": str(ROOT)},
            check=True,
            capture_output=True,
        )
        import psycopg

        self.admin = psycopg.connect(url, autocommit=True)

    def reset(self) -> None:
        self.admin.execute("DELETE FROM procrastinate_jobs")

    def delay(self, with_result: bool) -> Any:
        return self.mod.noop.defer()

    def bulk(self, count: int, with_result: bool) -> None:
        self.mod.noop.batch_defer(*({} for _ in range(count)))

    def depth(self) -> tuple[int, int]:
        row = self.admin.execute(
            "SELECT count(*) FILTER (WHERE status = 'todo'), "
            "count(*) FILTER (WHERE status = 'doing') FROM procrastinate_jobs"
        ).fetchone()
        assert row is not None
        return int(row[0]), int(row[1])

    def start_worker(self, *extra: str, **env: str) -> subprocess.Popen[bytes]:
        # Two worker processes (one per core), started together under one shell.
        command = f"{BIN}/procrastinate -a bench.procrastinate_app.app worker"
        return self.procs.start(
            "procrastinate-worker",
            ["/bin/sh", "-c", f"{command} & {command} & wait"],
            {"BENCH_PG_URL": self.url, "PYTHONPATH": str(ROOT), **env},
        )

    def close(self) -> None:
        self.mod.app.close()
        self.admin.close()


def run(sides: Sequence[Side], args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {side.name: {} for side in sides}
    for side in sides:
        side.reset()
    enqueue_rounds(sides, out, args.rounds, args.delay, args.delay * 5)
    for side in sides:
        with step(f"{side.name}: drain"):
            numbers, worker = drain(side, args.drain, args.timeout, False)
        out[side.name]["drain"] = numbers
        if isinstance(side, ConveyorOn):
            with step(f"{side.name}: round trip after idle"):
                out[side.name]["idle_latency"] = percentiles(side.idle_latency(args.latency))
            with step(f"{side.name}: pickup after idle"):
                out[side.name]["idle_pickup"] = percentiles(side.idle_pickup(args.latency))
        side.procs.stop(worker)
        side.reset()
    return out


def report(results: dict[str, dict[str, Any]], names: list[str]) -> str:
    rows: list[tuple[str, str, str]] = [
        ("enqueue: one `delay()` at a time", "delay_results_off", ""),
        ("enqueue: bulk (`send_many` / `batch_defer`)", "bulk_results_off", ""),
        ("drain, results off (steady state)", "drain.rate", ""),
        ("worker CPU per task", "drain.worker_cpu", "us"),
        ("pickup (`delay()` to task start) after 0.2 s idle, p50", "idle_pickup.p50", "ms"),
        ("pickup after 0.2 s idle, p99", "idle_pickup.p99", "ms"),
        ("round trip after 0.2 s idle, p50", "idle_latency.p50", "ms"),
        ("round trip after 0.2 s idle, p99", "idle_latency.p99", "ms"),
    ]
    lines = [f"| metric | {' | '.join(names)} |", "|---|" + "---:|" * len(names)]
    for metric, key, unit in rows:
        cells = []
        for name in names:
            try:
                value = common.pick(results.get(name, {}), key)
            except KeyError:
                value = None
            if unit == "us" and value is not None:
                value = value * 1e6
            cells.append(fmt(value, unit))
        lines.append(f"| {metric} | {' | '.join(cells)} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_count_options(parser, "single calls timed (2000); bulk: 5x as many")
    parser.add_argument("--latency", type=int, default=50, help="idle round trips (50)")
    parser.add_argument("--timeout", type=float, default=600.0, help="per drain (600 s)")
    parser.add_argument("--only", help="comma-separated side names")
    parser.add_argument("--json", type=Path, help="also write the raw numbers here")
    parser.add_argument("--keep", action="store_true", help="keep worker logs")
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT))
    from redis import Redis
    from tests.pg_server import PostgresServer
    from tests.servers import RedisServer

    info = machine()
    info.update(psycopg=version("psycopg"), procrastinate=version("procrastinate"))
    pg = PostgresServer(durable=True)
    redis = RedisServer(appendonly=True)
    results: dict[str, dict[str, Any]] = {}
    try:
        pg.start()
        redis.start()
        # As the docstring says and bench.redis_peers does: AOF with fsync once a second
        # (the test server's default, fsync after every write, put an fsync into each
        # publish and pickup: about 0.5 ms of the idle pickup).
        Redis.from_url(redis.url).config_set("appendfsync", "everysec")
        info["postgresql"] = pg.sql("SHOW server_version")
        with workdir("conveyor-bench-pg-", args.keep) as (_, procs):
            sides: list[Side] = [
                ConveyorOn("Conveyor/PostgreSQL", pg.url(), procs),
                ConveyorOn("Conveyor/Redis", redis.url, procs),
            ]
            if version("procrastinate") != "not installed":
                sides.append(ProcrastinateSide(pg.url(), procs))
            if args.only:
                wanted = {name.strip().lower() for name in args.only.split(",")}
                sides = [s for s in sides if s.name.lower() in wanted]
            try:
                results = run(sides, args)
            finally:
                for side in sides:
                    if isinstance(side, ProcrastinateSide):
                        side.close()
                    elif isinstance(side, ConveyorOn):
                        side.app.close()
    finally:
        pg.cleanup()
        redis.cleanup()
    info["load_after"] = os.getloadavg()[0]
    save(args.json, {"machine": info, "results": results})
    print_header(
        "PostgreSQL: Conveyor vs Conveyor on Redis vs procrastinate",
        info,
        f"PostgreSQL {info['postgresql']} (fsync on), psycopg {info['psycopg']}, "
        f"procrastinate {info['procrastinate']}, Conveyor {info['conveyor']}",
    )
    print(report(results, list(results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
