"""Conveyor vs Celery on one Redis server, same machine, same no-op task, one run.

    .venv/bin/python -m bench.redis_vs_celery [--drain 20000] [--delay 2000] [--latency 500]

Both run as their users run them, with 2 worker processes:

* Conveyor: ``python -m conveyor worker -A bench.conveyor_app -c 2`` (the production
  supervisor with 2 child processes, 1 thread each; defaults: at-least-once ``acks_late``,
  prefetch 1 per free slot, log level info with one line per task).
* Celery: ``celery -A bench.celery_app worker -P prefork -c 2`` with Celery's defaults
  (``task_acks_late=False``: at-most-once, ``worker_prefetch_multiplier=4``, log level
  warning); one extra drain with ``task_acks_late=True``, the guarantee Conveyor gives.

Measured, each for both: enqueue rate of ``delay()`` one at a time (results off and on) and
of the bulk API (Conveyor ``app.send_many``; Celery has none that batches - kombu's Redis
transport sends one LPUSH per message - so its best of ``group(...).apply_async()`` and
``apply_async(producer=...)`` with one producer for all counts); drain rate of ``--drain``
queued tasks (results off: ``ignore_result=True``; on: the Redis result backend) and the
CPU time the workers and redis-server spend per task; round-trip latency of
``delay().get()`` one at a time; the memory of the worker's processes after the drains.

The machine is shared, so every step runs for Conveyor and Celery in turn (both see the same
background load), enqueue rates are the best of ``--rounds`` tries, and drain rates are
steady-state: tasks/s while the queue went from 90% to 10% full, sampled every 20 ms, so
process start-up is excluded (the rate including start-up is in the JSON). CPU time per
task is the least noisy number. Redis runs with AOF on and ``appendfsync everysec`` (the
production setting both need).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

from redis import Redis

from bench import _common as common
from bench._common import (
    BIN,
    Compare,
    Processes,
    Row,
    Sender,
    Side,
    add_count_options,
    add_run_options,
    drain,
    enqueue_rounds,
    machine,
    on_off,
    only,
    percentiles,
    print_header,
    record_drain,
    save_results,
    step,
    table,
    tree_memory,
    version,
    warm_up,
    workdir,
)
from bench._latency import IDLE_PAUSE, measure

CELERY_WORKER = [
    str(BIN / "celery"),
    *("-A", "bench.celery_app", "worker", "-P", "prefork", "-c", "2"),
]


class RedisSide(Side):
    """What both sides do alike on the Redis server ``url``."""

    url: str

    @cached_property
    def redis(self) -> Redis:
        """A client of the server, for emptying it and reading queue lengths."""
        return Redis.from_url(self.url)

    def reset(self) -> None:
        self.redis.flushall()

    def latency(self, count: int, pause: float = 0.0) -> list[float]:
        """``count`` sequential ``delay().get()`` round trips (see :mod:`bench._latency`)."""
        env = {**os.environ, "CONVEYOR_BROKER_URL": self.url, "BENCH_REDIS_URL": self.url}
        return measure(self.name.lower(), count, env, pause)


class ConveyorSide(RedisSide, common.ConveyorSide):
    """Conveyor on Redis."""


class CelerySide(RedisSide):
    name = "Celery"

    def __init__(self, url: str, procs: Processes) -> None:
        super().__init__(procs)
        self.url = url
        os.environ["BENCH_REDIS_URL"] = url
        from bench import celery_app

        self.mod = celery_app

    def delay(self, with_result: bool) -> Any:
        return (self.mod.noop_result if with_result else self.mod.noop).delay()

    def bulk(self, count: int, with_result: bool) -> None:
        """Celery's fastest way to send many: one producer (connection) for all of them."""
        task = self.mod.noop_result if with_result else self.mod.noop
        with self.mod.app.producer_or_acquire() as producer:
            for _ in range(count):
                task.apply_async(producer=producer)

    def group(self, count: int, with_result: bool) -> None:
        """Celery's documented bulk API; slower than :meth:`bulk` here (it builds a
        GroupResult and freezes every signature)."""
        from celery import group

        task = self.mod.noop_result if with_result else self.mod.noop
        group(task.s() for _ in range(count)).apply_async()

    def bulk_apis(self) -> dict[str, Sender]:
        return {"bulk": self.bulk, "group": self.group}

    def depth(self) -> tuple[int, int]:
        pipe = self.redis.pipeline(transaction=False)
        pipe.llen("celery")
        pipe.hlen("unacked")
        waiting, unacked = pipe.execute()
        return int(waiting), int(unacked)

    def start_worker(self, *extra: str, **env: str) -> subprocess.Popen[bytes]:
        args = [*CELERY_WORKER, *extra]
        return self.procs.start("celery-worker", args, {"BENCH_REDIS_URL": self.url, **env})


def main_drains(
    sides: Sequence[RedisSide],
    out: dict[str, dict[str, Any]],
    args: argparse.Namespace,
    server: int,
) -> None:
    """``--drain`` tasks, results off then on, each side in turn; with results on, the
    round-trip latency and the worker's memory too, while the worker still runs."""
    for with_result in (False, True):
        for side in sides:
            with step(f"{side.name}: drain_results_{on_off(with_result)}"):
                numbers, worker = drain(side, args.drain, args.timeout, with_result, server=server)
            record_drain(out[side.name], with_result, numbers)
            if with_result:
                with step(f"{side.name}: latency"):
                    samples = side.latency(args.latency)
                out[side.name]["latency"] = percentiles(samples)
                with step(f"{side.name}: latency after idle"):
                    samples = side.latency(args.idle_latency, IDLE_PAUSE)
                out[side.name]["idle_latency"] = percentiles(samples)
                out[side.name]["memory"] = vars(tree_memory(worker.pid))
            side.procs.stop(worker)
            side.reset()


def extra_drains(
    sides: Sequence[RedisSide],
    out: dict[str, dict[str, Any]],
    args: argparse.Namespace,
    server: int,
) -> None:
    """``--extra-drain`` tasks, results off: Conveyor with ``--prefetch 4``, Celery with
    ``task_acks_late=True``."""
    for side in sides:
        extra: tuple[str, ...] = ()
        env: dict[str, str] = {}
        if isinstance(side, ConveyorSide):
            # Celery's default prefetch (4 per process) on Conveyor (default: 1 per free slot).
            key, extra = "drain_results_off_prefetch_4", ("--prefetch", "4")
        else:
            key, env = "drain_results_off_acks_late", {"BENCH_CELERY_ACKS_LATE": "1"}
        with step(f"{side.name}: {key}"):
            numbers, worker = drain(
                side, args.extra_drain, args.timeout, False, *extra, server=server, **env
            )
        out[side.name][key] = numbers
        side.procs.stop(worker)
        side.reset()


def run(sides: Sequence[RedisSide], args: argparse.Namespace, server: int) -> dict[str, Any]:
    """Every step runs for each side in turn, so both see the same background load."""
    out: dict[str, dict[str, Any]] = {side.name: {} for side in sides}
    warm_up(sides)
    enqueue_rounds(sides, out, args.rounds, args.delay, args.delay)
    main_drains(sides, out, args, server)
    extra_drains(sides, out, args, server)
    return out


def report(
    ours: dict[str, Any],
    theirs: dict[str, Any],
    args: argparse.Namespace,
    server: str = "redis-server",
) -> str:
    """The markdown table, Conveyor against Celery (``server``: the broker's process)."""
    n = f"{args.drain:,}"
    e = f"{args.extra_drain:,}"
    best_bulk = {
        f"bulk_results_{s}": max(theirs[f"bulk_results_{s}"], theirs[f"group_results_{s}"])
        for s in ("off", "on")
    }
    both = Compare(ours, theirs)
    rows = [
        both.same("enqueue: `delay()` one by one, results off", "delay_results_off"),
        both.same("enqueue: `delay()` one by one, results on", "delay_results_on"),
        Row(
            "enqueue: bulk, results off",
            ours["bulk_results_off"],
            best_bulk["bulk_results_off"],
            note=(
                f"`send_many` vs Celery's best: one producer for all "
                f"({theirs['bulk_results_off']:,.0f}/s) or `group().apply_async()` "
                f"({theirs['group_results_off']:,.0f}/s)"
            ),
        ),
        both.pair(
            "enqueue: Conveyor bulk vs Celery `delay()`, results off",
            "bulk_results_off",
            "delay_results_off",
            note="the product target (>= 5x)",
        ),
        Row(
            "enqueue: bulk, results on",
            ours["bulk_results_on"],
            best_bulk["bulk_results_on"],
            note=(
                f"Celery: one producer {theirs['bulk_results_on']:,.0f}/s, "
                f"group {theirs['group_results_on']:,.0f}/s"
            ),
        ),
        both.same(
            f"drain {n}, results off",
            "drain_results_off.rate",
            note="Celery default: acks early (at-most-once)",
        ),
        both.pair(
            f"drain, results off, vs Celery `task_acks_late=True` ({e} tasks)",
            "drain_results_off.rate",
            "drain_results_off_acks_late.rate",
            note="the at-least-once guarantee Conveyor gives by default",
        ),
        both.pair(
            f"drain, results off, Conveyor `--prefetch 4` ({e} tasks)",
            "drain_results_off_prefetch_4.rate",
            "drain_results_off.rate",
            note="Celery's default prefetch (4 per process) on Conveyor",
        ),
        both.same(f"drain {n}, results on", "drain_results_on.rate"),
        *both.worker_cpu(),
        both.cpu(f"{server} CPU per task, results off", "drain_results_off.server_cpu"),
        both.cpu(f"{server} CPU per task, results on", "drain_results_on.server_cpu"),
        both.same(
            "round trip `delay().get()` p50",
            "latency.p50",
            "ms",
            f"{args.latency} sequential round trips; lower is better",
        ),
        both.same("round trip `delay().get()` p99", "latency.p99", "ms"),
        both.same(
            "round trip after the worker idled p50",
            "idle_latency.p50",
            "ms",
            f"{args.idle_latency} round trips, each after {IDLE_PAUSE} s without work",
        ),
        both.same("round trip after the worker idled p99", "idle_latency.p99", "ms"),
        *both.memory("memory", ", after the drains", "pages shared after fork counted once"),
    ]
    return table(rows, "Conveyor", "Celery")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_count_options(parser, "tasks per timed enqueue (2000)")
    parser.add_argument(
        "--extra-drain",
        type=int,
        default=5_000,
        help="tasks per extra drain: Conveyor --prefetch 4, Celery acks_late (5000)",
    )
    parser.add_argument("--latency", type=int, default=500, help="round trips timed (500)")
    parser.add_argument(
        "--idle-latency", type=int, default=50, help="round trips timed after idling (50)"
    )
    add_run_options(parser, "celery")
    args = parser.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.servers import RedisServer

    info = machine()
    info.update(
        celery=version("celery"),
        kombu=version("kombu"),
        redis_py=version("redis"),
        hiredis=version("hiredis"),
    )
    server = RedisServer(appendonly=True)
    results: dict[str, Any] = {}
    try:
        with workdir("conveyor-bench-", args.keep) as (logdir, procs):
            server.start()
            admin = Redis.from_url(server.url)
            admin.config_set("appendfsync", "everysec")
            info["redis_server"] = admin.info("server")["redis_version"]
            admin.close()
            print(
                f"redis-server {info['redis_server']} on {server.url}; logs in {logdir} "
                "(deleted at the end unless --keep)",
                file=sys.stderr,
            )
            sides = only(
                [ConveyorSide(server.url, procs), CelerySide(server.url, procs)], args.only
            )
            assert server.process is not None
            results = run(sides, args, server.process.pid)
    finally:
        server.cleanup()
    if not save_results(args, info, results):
        return 0
    print_header(
        "Redis: Conveyor vs Celery",
        info,
        f"redis-server {info['redis_server']} (AOF, everysec), Conveyor {info['conveyor']}, "
        f"Celery {info['celery']} (kombu {info['kombu']}), redis-py {info['redis_py']}",
    )
    print(report(results["Conveyor"], results["Celery"], args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
