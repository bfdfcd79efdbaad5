"""Conveyor on its SQLite default vs Huey's SqliteHuey, same machine, same no-op task, one run.

    .venv/bin/python -m bench.sqlite_vs_huey [--drain 20000] [--delay 2000]

Both run as their users run them, with 2 worker processes, each on its own file in a
temporary directory:

* Conveyor: ``python -m conveyor worker -A bench.conveyor_app -c 2`` (the production
  supervisor, 2 child processes of 1 thread; defaults: at-least-once ``acks_late``,
  prefetch 1, SQLite WAL with ``synchronous=NORMAL``, log level info).
* Huey: ``huey_consumer bench.huey_app.huey -w 2 -k process`` (2 worker *processes*; Huey's
  defaults: the task row is deleted when dequeued, i.e. at-most-once; SQLite WAL with
  SQLite's default ``synchronous=FULL``; log level info). Extra rows: Huey with
  ``fsync=False`` (``synchronous=OFF``), and Conveyor with ``--prefetch 4``.

Measured: enqueue rate of one call at a time (results off and on), of the bulk API
(Conveyor ``app.send_many``; Huey has none, so its one-at-a-time loop is its best), and drain
rate of ``--drain`` queued tasks with results off and on, and the workers' CPU time per task.

The machine is shared, so every step runs for Conveyor and Huey in turn (both see the same
background load), enqueue rates are the best of ``--rounds`` tries, and drain rates are
steady-state: tasks/s while the queue went from 90% to 10% full, sampled every 20 ms
(start-up excluded; the rate including it is in the JSON).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

from bench import _common as common
from bench._common import (
    BIN,
    Compare,
    Processes,
    Sender,
    Side,
    add_count_options,
    add_run_options,
    delay_many,
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
    timed,
    tree_memory,
    version,
    warm_up,
    workdir,
)
from bench._latency import IDLE_PAUSE, measure

HUEY_WORKER_OPTIONS = ["-w", "2", "-k", "process"]


class ConveyorSide(common.ConveyorSide):
    """Conveyor on the SQLite file ``conveyor.sqlite3`` in ``tmp``."""

    def __init__(self, tmp: Path, procs: Processes) -> None:
        self.tmp = tmp
        super().__init__(f"sqlite:///{tmp}/conveyor.sqlite3", procs)

    def latency(self, count: int, pause: float = 0.0) -> list[float]:
        """``count`` sequential ``delay().get()`` round trips (see :mod:`bench._latency`)."""
        return measure("conveyor", count, {**os.environ, "CONVEYOR_BROKER_URL": self.url}, pause)

    def reset(self) -> None:
        """Start from a new file (no worker runs now): earlier results slow nothing down."""
        self.mod.app.close()
        for path in self.tmp.glob("conveyor.sqlite3*"):  # with -wal, -shm and .wake/
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()


class HueySide(Side):
    name = "Huey"

    def __init__(self, tmp: Path, procs: Processes, *, fsync: bool = True) -> None:
        super().__init__(procs)
        self.tmp = tmp
        self.db = str(tmp / "huey.sqlite3")
        os.environ["BENCH_HUEY_DB"] = self.db
        from bench import huey_app

        if fsync:
            self.huey, self.noop, self.noop_result = (
                huey_app.huey,
                huey_app.noop,
                huey_app.noop_result,
            )
            self.instance = "bench.huey_app.huey"
        else:
            self.name = "Huey fsync=False"
            self.huey = huey_app.huey_nofsync
            self.noop, self.noop_result = huey_app.noop_nofsync, huey_app.noop_result_nofsync
            self.instance = "bench.huey_app.huey_nofsync"

    def reset(self) -> None:
        self.huey.flush()

    def latency(self, count: int, pause: float = 0.0) -> list[float]:
        """``count`` sequential round trips (see :mod:`bench._latency`)."""
        return measure("huey", count, {**os.environ, "BENCH_HUEY_DB": self.db}, pause)

    def delay(self, with_result: bool) -> Any:
        return (self.noop_result if with_result else self.noop)()

    def bulk(self, count: int, with_result: bool) -> None:
        for _ in range(count):  # Huey has no bulk enqueue
            self.delay(with_result)

    def bulk_apis(self) -> dict[str, Sender]:
        return {}  # Huey's "bulk" is the same loop as delay() again

    def depth(self) -> tuple[int, int]:
        # Huey deletes a task's row when a worker dequeues it: nothing is "in flight".
        return int(self.huey.pending_count()), 0

    def start_worker(self, *extra: str, **env: str) -> subprocess.Popen[bytes]:
        args = [str(BIN / "huey_consumer"), self.instance, *HUEY_WORKER_OPTIONS, *extra]
        return self.procs.start("huey-consumer", args, {"BENCH_HUEY_DB": self.db, **env})


def drain_and_stop(
    side: Side, args: argparse.Namespace, with_result: bool, *extra: str
) -> dict[str, Any]:
    """Drain ``--drain`` tasks (see :func:`bench._common.drain`), note the worker's memory
    (with results on, time round trips on the then idle worker), stop it and empty the queue."""
    numbers, worker = drain(side, args.drain, args.timeout, with_result, *extra)
    numbers["memory"] = vars(tree_memory(worker.pid))
    if with_result and not extra and isinstance(side, ConveyorSide | HueySide):
        with step(f"{side.name}: latency"):
            numbers["latency"] = percentiles(side.latency(args.latency))
        with step(f"{side.name}: latency after idle"):
            numbers["idle_latency"] = percentiles(side.latency(args.idle_latency, IDLE_PAUSE))
    side.procs.stop(worker)
    side.reset()
    return numbers


def main_drains(
    sides: Sequence[Side], out: dict[str, dict[str, Any]], args: argparse.Namespace
) -> None:
    """``--drain`` tasks, results off then on, each side in turn."""
    for with_result in (False, True):
        for side in sides:
            with step(f"{side.name}: drain_results_{on_off(with_result)}"):
                numbers = drain_and_stop(side, args, with_result)
            record_drain(out[side.name], with_result, numbers)


def extra_drains(
    sides: Sequence[Side], out: dict[str, dict[str, Any]], args: argparse.Namespace
) -> None:
    """Results off: Conveyor with ``--prefetch 4``; Huey with ``fsync=False``, one call at a
    time and drained."""
    for side in sides:
        if isinstance(side, ConveyorSide):
            # Leasing 4 per free slot instead of 1: fewer, larger lease and ack transactions.
            with step("Conveyor: drain_results_off_prefetch_4"):
                numbers = drain_and_stop(side, args, False, "--prefetch", "4")
            out[side.name]["drain_results_off_prefetch_4"] = numbers
        elif isinstance(side, HueySide):
            # Huey without fsync: how much of its time is the disk?
            nofsync = HueySide(side.tmp, side.procs, fsync=False)
            nofsync.reset()
            with step("Huey fsync=False: delay_results_off"):
                seconds = timed(partial(delay_many, nofsync, args.delay, False))
            out[side.name]["delay_results_off_nofsync"] = args.delay / seconds
            nofsync.reset()
            with step("Huey fsync=False: drain_results_off"):
                numbers = drain_and_stop(nofsync, args, False)
            out[side.name]["drain_results_off_nofsync"] = numbers


def run(sides: Sequence[Side], args: argparse.Namespace) -> dict[str, Any]:
    """Every step runs for each side in turn, so both see the same background load."""
    out: dict[str, dict[str, Any]] = {side.name: {} for side in sides}
    warm_up(sides)
    enqueue_rounds(sides, out, args.rounds, args.delay, args.drain)
    main_drains(sides, out, args)
    extra_drains(sides, out, args)
    return out


def report(ours: dict[str, Any], theirs: dict[str, Any], args: argparse.Namespace) -> str:
    """The markdown table, Conveyor against Huey."""
    n = f"{args.drain:,}"
    nofsync = "Huey with `synchronous=OFF` (no fsync at all)"
    both = Compare(ours, theirs)
    rows = [
        both.same(
            "enqueue: one call at a time, results off",
            "delay_results_off",
            note="`delay()` vs calling the Huey task",
        ),
        both.pair(
            "enqueue: one call at a time, results off, vs Huey `fsync=False`",
            "delay_results_off",
            "delay_results_off_nofsync",
            note=nofsync,
        ),
        both.same("enqueue: one call at a time, results on", "delay_results_on"),
        both.same(
            "enqueue: bulk, results off",
            "bulk_results_off",
            note="`send_many` vs Huey's loop (Huey has no bulk API)",
        ),
        both.same("enqueue: bulk, results on", "bulk_results_on"),
        both.same(f"drain {n}, results off", "drain_results_off.rate"),
        both.pair(
            f"drain {n}, results off, Conveyor `--prefetch 4`",
            "drain_results_off_prefetch_4.rate",
            "drain_results_off.rate",
            note="Conveyor's default: adaptive, up to `worker_prefetch_max` per free slot",
        ),
        both.pair(
            f"drain {n}, results off, vs Huey `fsync=False`",
            "drain_results_off.rate",
            "drain_results_off_nofsync.rate",
            note=nofsync,
        ),
        both.same(f"drain {n}, results on", "drain_results_on.rate"),
        both.same(
            "round trip `delay().get()` p50",
            "drain_results_on.latency.p50",
            "ms",
            f"{args.latency} sequential round trips; lower is better",
        ),
        both.same("round trip `delay().get()` p99", "drain_results_on.latency.p99", "ms"),
        both.same(
            "round trip after the worker idled p50",
            "drain_results_on.idle_latency.p50",
            "ms",
            f"{args.idle_latency} round trips, each after {IDLE_PAUSE} s without work: "
            "the pickup by an idle worker",
        ),
        both.same(
            "round trip after the worker idled p99", "drain_results_on.idle_latency.p99", "ms"
        ),
        *both.worker_cpu(),
        *both.memory("drain_results_on.memory"),
    ]
    return table(rows, "Conveyor", "Huey")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_count_options(parser, "single calls timed (2000)")
    parser.add_argument("--latency", type=int, default=500, help="round trips timed (500)")
    parser.add_argument(
        "--idle-latency", type=int, default=50, help="round trips timed after idling (50)"
    )
    add_run_options(parser, "huey")
    args = parser.parse_args()

    import sqlite3

    info = machine()
    info.update(huey=version("huey"), sqlite=sqlite3.sqlite_version)
    results: dict[str, Any] = {}
    with workdir("conveyor-bench-sqlite-", args.keep) as (tmp, procs):
        print(f"files and logs in {tmp} (deleted at the end unless --keep)", file=sys.stderr)
        sides = only([ConveyorSide(tmp, procs), HueySide(tmp, procs)], args.only)
        results = run(sides, args)
    if not save_results(args, info, results):
        return 0
    print_header(
        "SQLite: Conveyor vs Huey",
        info,
        f"SQLite {info['sqlite']}, Conveyor {info['conveyor']}, Huey {info['huey']} "
        "(consumer: 2 worker processes)",
    )
    print(report(results["Conveyor"], results["Huey"], args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
