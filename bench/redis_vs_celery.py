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
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._common import (
    BIN,
    PYTHON,
    ROOT,
    Processes,
    Row,
    machine,
    percentiles,
    save,
    step,
    table,
    timed,
    tree_memory,
    version,
    watch_drain,
)

CONVEYOR_WORKER = [PYTHON, "-m", "conveyor", "worker", "-A", "bench.conveyor_app", "-c", "2"]
CELERY_WORKER = [
    str(BIN / "celery"),
    *("-A", "bench.celery_app", "worker", "-P", "prefork", "-c", "2"),
]


class Side:
    """What differs between Conveyor and Celery; the benchmark steps are shared."""

    name = ""

    def __init__(self, url: str, procs: Processes) -> None:
        self.url = url
        self.procs = procs
        import redis

        self.redis = redis.Redis.from_url(url)

    def flush(self) -> None:
        self.redis.flushall()

    def delay(self, with_result: bool) -> Any:
        raise NotImplementedError

    def bulk(self, count: int, with_result: bool) -> None:
        raise NotImplementedError

    def latency(self, count: int) -> list[float]:
        """``count`` sequential ``delay().get()`` round trips, timed in a fresh process."""
        env = {**os.environ, "CONVEYOR_BROKER_URL": self.url, "BENCH_REDIS_URL": self.url}
        done = subprocess.run(
            [PYTHON, "-m", "bench._latency", self.name.lower(), str(count)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            timeout=120,
            check=True,
        )
        return [float(x) for x in json.loads(done.stdout)]

    def depth(self) -> tuple[int, int]:
        """(messages waiting, messages leased/unacked)."""
        raise NotImplementedError

    def start_worker(self, *extra: str, **env: str) -> Any:
        raise NotImplementedError


class ConveyorSide(Side):
    name = "Conveyor"

    def __init__(self, url: str, procs: Processes) -> None:
        super().__init__(url, procs)
        os.environ["CONVEYOR_BROKER_URL"] = url
        from bench import conveyor_app

        self.mod = conveyor_app
        self.queue = conveyor_app.app.conf.task_default_queue

    def delay(self, with_result: bool) -> Any:
        return (self.mod.noop_result if with_result else self.mod.noop).delay()

    def bulk(self, count: int, with_result: bool) -> None:
        task = self.mod.noop_result if with_result else self.mod.noop
        self.mod.app.send_many([task.s() for _ in range(count)])

    def depth(self) -> tuple[int, int]:
        stats = self.mod.app.broker.stats([self.queue])[self.queue]
        return stats.ready, stats.leased

    def start_worker(self, *extra: str, **env: str) -> Any:
        args = [*CONVEYOR_WORKER, *extra]
        return self.procs.start("conveyor-worker", args, {"CONVEYOR_BROKER_URL": self.url})


class CelerySide(Side):
    name = "Celery"

    def __init__(self, url: str, procs: Processes) -> None:
        super().__init__(url, procs)
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

    def depth(self) -> tuple[int, int]:
        pipe = self.redis.pipeline(transaction=False)
        pipe.llen("celery")
        pipe.hlen("unacked")
        waiting, unacked = pipe.execute()
        return int(waiting), int(unacked)

    def start_worker(self, *extra: str, **env: str) -> Any:
        args = [*CELERY_WORKER, *extra]
        return self.procs.start("celery-worker", args, {"BENCH_REDIS_URL": self.url, **env})


def drain(
    side: Side,
    args: argparse.Namespace,
    server_pid: int,
    with_result: bool,
    *extra: str,
    **env: str,
) -> tuple[dict[str, Any], Any]:
    """Queue ``--drain`` tasks with the bulk API (timed), start the worker, watch the queue
    empty. Returns the numbers and the worker (still running)."""
    seconds = timed(lambda: side.bulk(args.drain, with_result))
    started = time.perf_counter()
    worker = side.start_worker(*extra, **env)
    watched = watch_drain(
        args.drain, started, side.depth, timeout=args.timeout, worker=worker.pid, server=server_pid
    )
    worker_cpu, server_cpu = watched.cpu_per_task()
    return {
        "bulk": args.drain / seconds,
        "rate": watched.steady_rate,
        "rate_with_startup": watched.overall_rate,
        "worker_cpu": worker_cpu,
        "server_cpu": server_cpu,
    }, worker


def run(sides: list[Side], args: argparse.Namespace, server_pid: int) -> dict[str, Any]:
    """Every step runs for each side in turn, so both see the same background load."""
    out: dict[str, dict[str, Any]] = {side.name: {} for side in sides}

    def best(side: Side, key: str, value: float) -> None:
        out[side.name][key] = max(out[side.name].get(key, 0.0), value)

    for side in sides:
        side.flush()
        for _ in range(50):  # connections, scripts, imports
            side.delay(False)
            side.delay(True)
        side.flush()

    for round_ in range(args.rounds):
        for side in sides:
            print(f"{side.name}, enqueue round {round_ + 1}:", file=sys.stderr)
            for with_result in (False, True):
                suffix = "on" if with_result else "off"
                with step(f"delay_results_{suffix}"):
                    seconds = timed(
                        lambda s=side, w=with_result: [s.delay(w) for _ in range(args.delay)]
                    )
                best(side, f"delay_results_{suffix}", args.delay / seconds)
                side.flush()
                with step(f"bulk_results_{suffix}"):
                    seconds = timed(lambda s=side, w=with_result: s.bulk(args.delay, w))
                best(side, f"bulk_results_{suffix}", args.delay / seconds)
                side.flush()
                if isinstance(side, CelerySide):
                    with step(f"group_results_{suffix}"):
                        seconds = timed(lambda s=side, w=with_result: s.group(args.delay, w))
                    best(side, f"group_results_{suffix}", args.delay / seconds)
                    side.flush()

    for with_result in (False, True):
        suffix = "on" if with_result else "off"
        for side in sides:
            with step(f"{side.name}: drain_results_{suffix}"):
                numbers, worker = drain(side, args, server_pid, with_result)
            best(side, f"bulk_results_{suffix}", numbers.pop("bulk"))
            out[side.name][f"drain_results_{suffix}"] = numbers
            if with_result:
                with step(f"{side.name}: latency"):
                    samples = side.latency(args.latency)
                out[side.name]["latency"] = percentiles(samples)
                out[side.name]["memory"] = vars(tree_memory(worker.pid))
            side.procs.stop(worker)
            side.flush()

    extra = argparse.Namespace(**{**vars(args), "drain": args.extra_drain})
    for side in sides:
        if isinstance(side, ConveyorSide):
            # Celery's default prefetch (4 per process) on Conveyor (default: 1 per free slot).
            with step("Conveyor: drain_results_off_prefetch_4"):
                numbers, worker = drain(side, extra, server_pid, False, "--prefetch", "4")
            out[side.name]["drain_results_off_prefetch_4"] = numbers
        else:
            with step("Celery: drain_results_off_acks_late"):
                numbers, worker = drain(side, extra, server_pid, False, BENCH_CELERY_ACKS_LATE="1")
            out[side.name]["drain_results_off_acks_late"] = numbers
        side.procs.stop(worker)
        side.flush()
    return out


def report(ours: dict[str, Any], theirs: dict[str, Any], args: argparse.Namespace) -> str:
    n = f"{args.drain:,}"
    e = f"{args.extra_drain:,}"
    best_bulk = {
        f"bulk_results_{s}": max(theirs[f"bulk_results_{s}"], theirs[f"group_results_{s}"])
        for s in ("off", "on")
    }

    def cpu(data: dict[str, Any], key: str, which: str) -> float | None:
        value = data[key][which]
        return None if value is None else value * 1e6

    rows = [
        Row(
            "enqueue: `delay()` one by one, results off",
            ours["delay_results_off"],
            theirs["delay_results_off"],
        ),
        Row(
            "enqueue: `delay()` one by one, results on",
            ours["delay_results_on"],
            theirs["delay_results_on"],
        ),
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
        Row(
            "enqueue: Conveyor bulk vs Celery `delay()`, results off",
            ours["bulk_results_off"],
            theirs["delay_results_off"],
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
        Row(
            f"drain {n}, results off",
            ours["drain_results_off"]["rate"],
            theirs["drain_results_off"]["rate"],
            note="Celery default: acks early (at-most-once)",
        ),
        Row(
            f"drain, results off, vs Celery `task_acks_late=True` ({e} tasks)",
            ours["drain_results_off"]["rate"],
            theirs["drain_results_off_acks_late"]["rate"],
            note="the at-least-once guarantee Conveyor gives by default",
        ),
        Row(
            f"drain, results off, Conveyor `--prefetch 4` ({e} tasks)",
            ours["drain_results_off_prefetch_4"]["rate"],
            theirs["drain_results_off"]["rate"],
            note="Celery's default prefetch (4 per process) on Conveyor",
        ),
        Row(
            f"drain {n}, results on",
            ours["drain_results_on"]["rate"],
            theirs["drain_results_on"]["rate"],
        ),
        Row(
            "worker CPU per task, results off",
            cpu(ours, "drain_results_off", "worker_cpu"),
            cpu(theirs, "drain_results_off", "worker_cpu"),
            "us",
            "all worker processes; lower is better",
        ),
        Row(
            "worker CPU per task, results on",
            cpu(ours, "drain_results_on", "worker_cpu"),
            cpu(theirs, "drain_results_on", "worker_cpu"),
            "us",
        ),
        Row(
            "redis-server CPU per task, results off",
            cpu(ours, "drain_results_off", "server_cpu"),
            cpu(theirs, "drain_results_off", "server_cpu"),
            "us",
        ),
        Row(
            "redis-server CPU per task, results on",
            cpu(ours, "drain_results_on", "server_cpu"),
            cpu(theirs, "drain_results_on", "server_cpu"),
            "us",
        ),
        Row(
            "round trip `delay().get()` p50",
            ours["latency"]["p50"],
            theirs["latency"]["p50"],
            "ms",
            f"{args.latency} sequential round trips; lower is better",
        ),
        Row(
            "round trip `delay().get()` p99", ours["latency"]["p99"], theirs["latency"]["p99"], "ms"
        ),
        Row(
            "worker memory, RSS sum",
            ours["memory"]["rss_mib"],
            theirs["memory"]["rss_mib"],
            "MiB",
            f"{ours['memory']['processes']} vs {theirs['memory']['processes']} processes, "
            "after the drains",
        ),
        Row(
            "worker memory, PSS sum",
            ours["memory"]["pss_mib"],
            theirs["memory"]["pss_mib"],
            "MiB",
            "pages shared after fork counted once",
        ),
    ]
    return table(rows, "Conveyor", "Celery")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--drain", type=int, default=20_000, help="tasks per drain (20000)")
    parser.add_argument("--delay", type=int, default=2_000, help="tasks per timed enqueue (2000)")
    parser.add_argument("--rounds", type=int, default=2, help="enqueue rounds; the best counts (2)")
    parser.add_argument(
        "--extra-drain",
        type=int,
        default=5_000,
        help="tasks per extra drain: Conveyor --prefetch 4, Celery acks_late (5000)",
    )
    parser.add_argument("--latency", type=int, default=500, help="round trips timed (500)")
    parser.add_argument("--timeout", type=float, default=120.0, help="limit per drain (s)")
    parser.add_argument("--only", choices=["conveyor", "celery"], help="run one side only")
    parser.add_argument("--json", type=Path, help="also write the raw numbers here")
    parser.add_argument("--keep", action="store_true", help="keep worker logs (and files)")
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
    logdir = Path(tempfile.mkdtemp(prefix="conveyor-bench-"))
    procs = Processes(logdir)
    results: dict[str, Any] = {}
    try:
        server.start()
        import redis

        admin = redis.Redis.from_url(server.url)
        admin.config_set("appendfsync", "everysec")
        info["redis_server"] = admin.info("server")["redis_version"]
        admin.close()
        print(
            f"redis-server {info['redis_server']} on {server.url}; logs in {logdir} "
            "(deleted at the end unless --keep)",
            file=sys.stderr,
        )
        classes: list[type[Side]] = [ConveyorSide, CelerySide]
        sides = [cls(server.url, procs) for cls in classes]
        if args.only:
            sides = [side for side in sides if side.name.lower() == args.only]
        assert server.process is not None
        results = run(sides, args, server.process.pid)
    finally:
        procs.stop_all()
        if not args.keep:
            shutil.rmtree(logdir, ignore_errors=True)
        server.cleanup()
    info["load_after"] = os.getloadavg()[0]
    save(args.json, {"machine": info, "args": vars(args), "results": results})
    if len(results) < 2:
        print(results)
        return 0
    print(f"### Redis: Conveyor vs Celery ({info['date']})\n")
    print(
        f"{info['cores']} cores ({info['cpu']}), Python {info['python']}, redis-server "
        f"{info['redis_server']} (AOF, everysec), Conveyor {info['conveyor']}, Celery "
        f"{info['celery']} (kombu {info['kombu']}), redis-py {info['redis_py']}; "
        f"load average before/after: {info['load_before']:.2f}/{info['load_after']:.2f}\n"
    )
    print(report(results["Conveyor"], results["Celery"], args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
