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
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._common import (
    BIN,
    PYTHON,
    Processes,
    Row,
    machine,
    save,
    step,
    table,
    timed,
    tree_memory,
    version,
    watch_drain,
)

CONVEYOR_WORKER = [PYTHON, "-m", "conveyor", "worker", "-A", "bench.conveyor_app", "-c", "2"]
HUEY_WORKER_OPTIONS = ["-w", "2", "-k", "process"]


class Side:
    name = ""

    def __init__(self, tmp: Path, procs: Processes) -> None:
        self.tmp = tmp
        self.procs = procs

    def reset(self) -> None:
        raise NotImplementedError

    def delay(self, with_result: bool) -> Any:
        raise NotImplementedError

    def bulk(self, count: int, with_result: bool) -> None:
        raise NotImplementedError

    def depth(self) -> tuple[int, int]:
        raise NotImplementedError

    def start_worker(self, *extra: str) -> Any:
        raise NotImplementedError


class ConveyorSide(Side):
    name = "Conveyor"

    def __init__(self, tmp: Path, procs: Processes) -> None:
        super().__init__(tmp, procs)
        self.url = f"sqlite:///{tmp}/conveyor.sqlite3"
        os.environ["CONVEYOR_BROKER_URL"] = self.url
        from bench import conveyor_app

        self.mod = conveyor_app
        self.queue = conveyor_app.app.conf.task_default_queue

    def reset(self) -> None:
        """Start from a new file (no worker runs now): earlier results slow nothing down."""
        self.mod.app.close()
        for path in self.tmp.glob("conveyor.sqlite3*"):
            path.unlink()

    def delay(self, with_result: bool) -> Any:
        return (self.mod.noop_result if with_result else self.mod.noop).delay()

    def bulk(self, count: int, with_result: bool) -> None:
        task = self.mod.noop_result if with_result else self.mod.noop
        self.mod.app.send_many([task.s() for _ in range(count)])

    def depth(self) -> tuple[int, int]:
        stats = self.mod.app.broker.stats([self.queue])[self.queue]
        return stats.ready, stats.leased

    def start_worker(self, *extra: str) -> Any:
        env = {"CONVEYOR_BROKER_URL": self.url}
        return self.procs.start("conveyor-worker", [*CONVEYOR_WORKER, *extra], env)


class HueySide(Side):
    name = "Huey"

    def __init__(self, tmp: Path, procs: Processes, *, fsync: bool = True) -> None:
        super().__init__(tmp, procs)
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

    def delay(self, with_result: bool) -> Any:
        return (self.noop_result if with_result else self.noop)()

    def bulk(self, count: int, with_result: bool) -> None:
        for _ in range(count):  # Huey has no bulk enqueue
            self.delay(with_result)

    def depth(self) -> tuple[int, int]:
        # Huey deletes a task's row when a worker dequeues it: nothing is "in flight".
        return int(self.huey.pending_count()), 0

    def start_worker(self, *extra: str) -> Any:
        args = [str(BIN / "huey_consumer"), self.instance, *HUEY_WORKER_OPTIONS, *extra]
        return self.procs.start("huey-consumer", args, {"BENCH_HUEY_DB": self.db})


def drain(side: Side, args: argparse.Namespace, with_result: bool, *extra: str) -> dict[str, Any]:
    """Queue ``--drain`` tasks with the bulk API (timed), run the worker until the queue is
    empty, stop it."""
    seconds = timed(lambda: side.bulk(args.drain, with_result))
    started = time.perf_counter()
    worker = side.start_worker(*extra)
    watched = watch_drain(args.drain, started, side.depth, timeout=args.timeout, worker=worker.pid)
    memory = tree_memory(worker.pid)
    side.procs.stop(worker)
    side.reset()
    return {
        "bulk": args.drain / seconds,
        "rate": watched.steady_rate,
        "rate_with_startup": watched.overall_rate,
        "worker_cpu": watched.cpu_per_task()[0],
        "memory": vars(memory),
    }


def run(sides: list[Side], args: argparse.Namespace) -> dict[str, Any]:
    """Every step runs for each side in turn, so both see the same background load."""
    out: dict[str, dict[str, Any]] = {side.name: {} for side in sides}

    def best(side: Side, key: str, value: float) -> None:
        out[side.name][key] = max(out[side.name].get(key, 0.0), value)

    for side in sides:
        side.reset()
        for _ in range(50):  # connections, schema, imports
            side.delay(False)
            side.delay(True)
        side.reset()

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
                side.reset()
                if isinstance(side, ConveyorSide):  # Huey's "bulk" is the same loop again
                    with step(f"bulk_results_{suffix}"):
                        seconds = timed(lambda s=side, w=with_result: s.bulk(args.drain, w))
                    best(side, f"bulk_results_{suffix}", args.drain / seconds)
                    side.reset()

    for with_result in (False, True):
        suffix = "on" if with_result else "off"
        for side in sides:
            with step(f"{side.name}: drain_results_{suffix}"):
                numbers = drain(side, args, with_result)
            best(side, f"bulk_results_{suffix}", numbers.pop("bulk"))
            out[side.name][f"drain_results_{suffix}"] = numbers
    for side in sides:
        if isinstance(side, ConveyorSide):
            # Leasing 4 per free slot instead of 1: fewer, larger lease and ack transactions.
            with step("Conveyor: drain_results_off_prefetch_4"):
                numbers = drain(side, args, False, "--prefetch", "4")
            out[side.name]["drain_results_off_prefetch_4"] = numbers
        elif isinstance(side, HueySide):
            # Huey without fsync: how much of its time is the disk?
            nofsync = HueySide(side.tmp, side.procs, fsync=False)
            nofsync.reset()
            with step("Huey fsync=False: delay_results_off"):
                seconds = timed(lambda h=nofsync: [h.delay(False) for _ in range(args.delay)])
            out[side.name]["delay_results_off_nofsync"] = args.delay / seconds
            nofsync.reset()
            with step("Huey fsync=False: drain_results_off"):
                numbers = drain(nofsync, args, False)
            out[side.name]["drain_results_off_nofsync"] = numbers
    return out


def report(ours: dict[str, Any], theirs: dict[str, Any], args: argparse.Namespace) -> str:
    n = f"{args.drain:,}"

    def cpu(data: dict[str, Any], key: str) -> float | None:
        value = data[key]["worker_cpu"]
        return None if value is None else value * 1e6

    rows = [
        Row(
            "enqueue: one call at a time, results off",
            ours["delay_results_off"],
            theirs["delay_results_off"],
            note="`delay()` vs calling the Huey task",
        ),
        Row(
            "enqueue: one call at a time, results off, vs Huey `fsync=False`",
            ours["delay_results_off"],
            theirs["delay_results_off_nofsync"],
            note="Huey with `synchronous=OFF` (no fsync at all)",
        ),
        Row(
            "enqueue: one call at a time, results on",
            ours["delay_results_on"],
            theirs["delay_results_on"],
        ),
        Row(
            "enqueue: bulk, results off",
            ours["bulk_results_off"],
            theirs["bulk_results_off"],
            note="`send_many` vs Huey's loop (Huey has no bulk API)",
        ),
        Row("enqueue: bulk, results on", ours["bulk_results_on"], theirs["bulk_results_on"]),
        Row(
            f"drain {n}, results off",
            ours["drain_results_off"]["rate"],
            theirs["drain_results_off"]["rate"],
        ),
        Row(
            f"drain {n}, results off, Conveyor `--prefetch 4`",
            ours["drain_results_off_prefetch_4"]["rate"],
            theirs["drain_results_off"]["rate"],
            note="Conveyor's default is 1 per free slot",
        ),
        Row(
            f"drain {n}, results off, vs Huey `fsync=False`",
            ours["drain_results_off"]["rate"],
            theirs["drain_results_off_nofsync"]["rate"],
            note="Huey with `synchronous=OFF` (no fsync at all)",
        ),
        Row(
            f"drain {n}, results on",
            ours["drain_results_on"]["rate"],
            theirs["drain_results_on"]["rate"],
        ),
        Row(
            "worker CPU per task, results off",
            cpu(ours, "drain_results_off"),
            cpu(theirs, "drain_results_off"),
            "us",
            "all worker processes; lower is better",
        ),
        Row(
            "worker CPU per task, results on",
            cpu(ours, "drain_results_on"),
            cpu(theirs, "drain_results_on"),
            "us",
        ),
        Row(
            "worker memory, RSS sum",
            ours["drain_results_on"]["memory"]["rss_mib"],
            theirs["drain_results_on"]["memory"]["rss_mib"],
            "MiB",
            f"{ours['drain_results_on']['memory']['processes']} vs "
            f"{theirs['drain_results_on']['memory']['processes']} processes",
        ),
        Row(
            "worker memory, PSS sum",
            ours["drain_results_on"]["memory"]["pss_mib"],
            theirs["drain_results_on"]["memory"]["pss_mib"],
            "MiB",
        ),
    ]
    return table(rows, "Conveyor", "Huey")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--drain", type=int, default=20_000, help="tasks per drain (20000)")
    parser.add_argument("--delay", type=int, default=2_000, help="single calls timed (2000)")
    parser.add_argument("--rounds", type=int, default=2, help="enqueue rounds; the best counts (2)")
    parser.add_argument("--timeout", type=float, default=120.0, help="limit per drain (s)")
    parser.add_argument("--only", choices=["conveyor", "huey"], help="run one side only")
    parser.add_argument("--json", type=Path, help="also write the raw numbers here")
    parser.add_argument("--keep", action="store_true", help="keep worker logs (and files)")
    args = parser.parse_args()

    import sqlite3

    info = machine()
    info.update(huey=version("huey"), sqlite=sqlite3.sqlite_version)
    tmp = Path(tempfile.mkdtemp(prefix="conveyor-bench-sqlite-"))
    procs = Processes(tmp)
    print(f"files and logs in {tmp} (deleted at the end unless --keep)", file=sys.stderr)
    results: dict[str, Any] = {}
    try:
        classes: list[type[Side]] = [ConveyorSide, HueySide]
        sides = [cls(tmp, procs) for cls in classes]
        if args.only:
            sides = [side for side in sides if side.name.lower() == args.only]
        results = run(sides, args)
    finally:
        procs.stop_all()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    info["load_after"] = os.getloadavg()[0]
    save(args.json, {"machine": info, "args": vars(args), "results": results})
    if len(results) < 2:
        print(results)
        return 0
    print(f"### SQLite: Conveyor vs Huey ({info['date']})\n")
    print(
        f"{info['cores']} cores ({info['cpu']}), Python {info['python']}, SQLite "
        f"{info['sqlite']}, Conveyor {info['conveyor']}, Huey {info['huey']} "
        f"(consumer: 2 worker processes); load average before/after: "
        f"{info['load_before']:.2f}/{info['load_after']:.2f}\n"
    )
    print(report(results["Conveyor"], results["Huey"], args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
