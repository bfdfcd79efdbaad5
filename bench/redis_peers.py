"""Conveyor against every Python peer on one Redis server, in one run, ratios to the best peer.

    .venv/bin/python -m bench.redis_peers [--tasks 10000] [--round-trips 300] [--only NAMES]

The peers (``bench/peers/``, each with its defaults): Celery (prefork, 2 processes),
Dramatiq (2 processes x 8 threads), Huey (8 threads), taskiq (2 worker processes) and
Conveyor (``-c 2``). For each system in turn, on a flushed server:

1. **enqueue**: ``--tasks`` tasks sent one call at a time with no worker running (and the bulk
   API where the system has one: Conveyor's ``send_many``, Celery's one-producer loop);
2. **start -> first task**: the worker is launched on that full queue; seconds until the first
   task has run;
3. **drain**: tasks/s while the shared counter (every task ``INCR``\\s it) went from 10 % to
   90 % of ``--tasks``, and the CPU time the worker's processes and redis-server spent per
   task in that window;
4. **idle memory**: RSS and PSS of the worker's process tree, 2 s after the drain;
5. **round trip**: ``--round-trips`` sequential ``delay().get()`` (each system's spelling) in a
   fresh client process: p50/p99.

Every task does the same one Redis round trip (the counter), so the drain compares the queues,
not the task bodies. The machine may be shared: every number of a run is comparable only
within that run, which is why the report leads with ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from redis import Redis

from bench._common import (
    BIN,
    PYTHON,
    ROOT,
    Processes,
    cpu_seconds,
    machine,
    percentiles,
    process_tree,
    save,
    step,
    tree_memory,
    version,
    workdir,
)

COUNTER = "bench:done"


class Peer:
    """One system: how to start its worker and how its clients send."""

    name = ""
    module = ""
    #: The distribution whose version the report names.
    dist = ""

    def __init__(self, url: str) -> None:
        self.url = url

    def worker(self) -> list[str]:
        raise NotImplementedError

    def enqueue(self, count: int) -> None:
        """Send ``count`` counting tasks, one call each."""
        raise NotImplementedError

    def bulk(self, count: int) -> bool:
        """Send ``count`` counting tasks the fastest way it has; False if it has no bulk API."""
        return False

    def round_trip(self) -> Callable[[], object]:
        """One ``delay().get()`` (in the round-trip client process)."""
        raise NotImplementedError

    def app(self) -> Any:
        __import__(self.module)
        return sys.modules[self.module]


class DelayPeer(Peer):
    """Celery's spelling, which Conveyor shares: ``task.delay()``, ``.get()``."""

    def enqueue(self, count: int) -> None:
        task = self.app().count
        for _ in range(count):
            task.delay()

    def round_trip(self) -> Callable[[], object]:
        echo = self.app().echo
        return lambda: echo.delay().get(timeout=10)


class Conveyor(DelayPeer):
    name, module, dist = "Conveyor", "bench.peers.conveyor_app", "conveyor"

    def worker(self) -> list[str]:
        return [PYTHON, "-m", "conveyor", "worker", "-A", self.module, "-c", "2"]

    def bulk(self, count: int) -> bool:
        app = self.app()
        app.app.send_many([app.count.s() for _ in range(count)])
        return True


class Celery(DelayPeer):
    name, module, dist = "Celery", "bench.peers.celery_app", "celery"

    def worker(self) -> list[str]:
        return [str(BIN / "celery"), "-A", self.module, "worker", "-P", "prefork", "-c", "2"]

    def bulk(self, count: int) -> bool:
        """Celery's fastest way to send many: one producer (connection) for all of them."""
        app = self.app()
        with app.app.producer_or_acquire() as producer:
            for _ in range(count):
                app.count.apply_async(producer=producer)
        return True


class Dramatiq(Peer):
    name, module, dist = "Dramatiq", "bench.peers.dramatiq_app", "dramatiq"

    def worker(self) -> list[str]:
        return [str(BIN / "dramatiq"), self.module, "-p", "2"]

    def enqueue(self, count: int) -> None:
        actor = self.app().count
        for _ in range(count):
            actor.send()

    def round_trip(self) -> Callable[[], object]:
        echo = self.app().echo
        return lambda: echo.send().get_result(block=True, timeout=10_000)


class Huey(Peer):
    name, module, dist = "Huey", "bench.peers.huey_app", "huey"

    def worker(self) -> list[str]:
        return [str(BIN / "huey_consumer"), f"{self.module}.huey", "-w", "8", "-k", "thread"]

    def enqueue(self, count: int) -> None:
        task = self.app().count
        for _ in range(count):
            task()

    def round_trip(self) -> Callable[[], object]:
        echo = self.app().echo
        return lambda: echo().get(blocking=True, timeout=10)


class Taskiq(Peer):
    name, module, dist = "taskiq", "bench.peers.taskiq_app", "taskiq"

    def worker(self) -> list[str]:
        return [str(BIN / "taskiq"), "worker", f"{self.module}:broker", "--workers", "2"]

    def enqueue(self, count: int) -> None:
        app = self.app()

        async def send() -> None:
            await app.broker.startup()
            for _ in range(count):
                await app.count.kiq()
            await app.broker.shutdown()

        asyncio.run(send())

    def round_trip(self) -> Callable[[], object]:
        app = self.app()
        loop = asyncio.new_event_loop()
        loop.run_until_complete(app.broker.startup())

        async def once() -> object:
            sent = await app.echo.kiq()
            return await sent.wait_result(timeout=10)

        return lambda: loop.run_until_complete(once())


PEERS: dict[str, type[Peer]] = {p.name: p for p in (Conveyor, Celery, Dramatiq, Huey, Taskiq)}


# -- measuring -----------------------------------------------------------------------------
def wait_for(check: Callable[[], bool], timeout: float, what: str, every: float = 0.005) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout:.0f} s")
        time.sleep(every)


def measure_peer(
    peer: Peer,
    redis: Redis,
    server_pid: int,
    procs: Processes,
    args: argparse.Namespace,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    n = args.tasks
    env = {"BENCH_REDIS_URL": peer.url, "CONVEYOR_BROKER_URL": peer.url}
    redis.flushall()
    peer.enqueue(200)  # connections, scripts, imports
    redis.flushall()
    with step(f"{peer.name}: enqueue {n:,}"):
        start = time.perf_counter()
        peer.enqueue(n)
        out["enqueue"] = n / (time.perf_counter() - start)
    redis.flushall()
    with step(f"{peer.name}: bulk {n:,}"):
        start = time.perf_counter()
        if peer.bulk(n):
            out["bulk"] = n / (time.perf_counter() - start)
    redis.flushall()
    peer.enqueue(n)

    def done() -> int:
        return int(redis.get(COUNTER) or 0)

    with step(f"{peer.name}: start and drain {n:,}"):
        launched = time.perf_counter()
        worker = procs.start(peer.name.lower(), peer.worker(), env)
        wait_for(lambda: done() >= 1, 120, f"{peer.name}'s first task", every=0.001)
        out["start_to_first_task"] = time.perf_counter() - launched
        wait_for(lambda: done() >= n // 10, 300, f"{peer.name}: 10 % done")
        low, t0 = done(), time.perf_counter()
        tree = process_tree(worker.pid)
        cpu0, server0 = cpu_seconds(tree), cpu_seconds([server_pid])
        wait_for(lambda: done() >= n * 9 // 10, 600, f"{peer.name}: 90 % done")
        high, t1 = done(), time.perf_counter()
        tree = sorted(set(tree) | set(process_tree(worker.pid)))
        tasks = high - low
        out["drain"] = tasks / (t1 - t0)
        out["worker_cpu_us"] = (cpu_seconds(tree) - cpu0) / tasks * 1e6
        out["server_cpu_us"] = (cpu_seconds([server_pid]) - server0) / tasks * 1e6
        wait_for(lambda: done() >= n, 300, f"{peer.name}: all done")
    time.sleep(2)  # idle: what the worker holds when there is no work
    memory = tree_memory(worker.pid)
    out["idle_rss_mib"], out["idle_pss_mib"] = memory.rss_mib, memory.pss_mib
    with step(f"{peer.name}: {args.round_trips} round trips"):
        samples = run_round_trips(peer, args.round_trips, env)
    out["round_trip_ms"] = {k: v * 1000 for k, v in percentiles(samples).items()}
    procs.stop(worker)
    redis.flushall()
    return out


def run_round_trips(peer: Peer, count: int, env: dict[str, str]) -> list[float]:
    """``count`` sequential round trips in a fresh process (a client that sent thousands of
    tasks may hold state for each of them)."""
    done = subprocess.run(
        [PYTHON, "-m", "bench.redis_peers", "--client", peer.name, str(count)],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        timeout=120 + count,
        check=True,
    )
    return [float(x) for x in json.loads(done.stdout)]


def client(name: str, count: int) -> None:
    trip = PEERS[name](os.environ["BENCH_REDIS_URL"]).round_trip()
    for _ in range(20):  # connections, scripts, subscriptions
        trip()
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        trip()
        samples.append(time.perf_counter() - start)
    json.dump(samples, sys.stdout)


# -- reporting -----------------------------------------------------------------------------
#: (key, heading, format, higher is better)
COLUMNS: list[tuple[str, str, str, bool]] = [
    ("enqueue", "enqueue/s (one call each)", "{:,.0f}", True),
    ("bulk", "bulk enqueue/s", "{:,.0f}", True),
    ("drain", "drain/s", "{:,.0f}", True),
    ("worker_cpu_us", "worker CPU µs/task", "{:,.0f}", False),
    ("server_cpu_us", "redis-server CPU µs/task", "{:,.0f}", False),
    ("round_trip_ms.p50", "round trip p50 ms", "{:.2f}", False),
    ("round_trip_ms.p99", "round trip p99 ms", "{:.2f}", False),
    ("idle_rss_mib", "idle RSS MiB", "{:.0f}", False),
    ("idle_pss_mib", "idle PSS MiB", "{:.0f}", False),
    ("start_to_first_task", "start -> first task s", "{:.2f}", False),
]


def value(numbers: dict[str, Any], key: str) -> float | None:
    for part in key.split("."):
        if not isinstance(numbers, dict) or part not in numbers:
            return None
        numbers = numbers[part]
    return float(numbers)  # type: ignore[arg-type]  # a leaf of the results is a number


def report(results: dict[str, dict[str, Any]]) -> str:
    """One row per system, then the best peer's figure and Conveyor's ratio to it (> 1 means
    Conveyor is better, whichever way the column counts)."""
    names = list(results)
    lines = [
        "| system | " + " | ".join(c[1] for c in COLUMNS) + " |",
        "|---|" + "---:|" * len(COLUMNS),
    ]
    for name in names:
        cells = []
        for key, _, form, _ in COLUMNS:
            number = value(results[name], key)
            cells.append("-" if number is None else form.format(number))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if "Conveyor" in results and len(results) > 1:
        best_cells, ratio_cells = [], []
        for key, _, form, higher in COLUMNS:
            peers = {n: value(results[n], key) for n in names if n != "Conveyor"}
            known = {n: v for n, v in peers.items() if v is not None}
            ours = value(results["Conveyor"], key)
            if not known or ours is None:
                best_cells.append("-")
                ratio_cells.append("-")
                continue
            best = (max if higher else min)(known, key=lambda n: known[n])
            best_cells.append(f"{form.format(known[best])} ({best})")
            times = ours / known[best] if higher else known[best] / ours
            ratio_cells.append(f"**{times:.2f}x**")
        lines.append("| best peer | " + " | ".join(best_cells) + " |")
        lines.append("| Conveyor vs best peer | " + " | ".join(ratio_cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=10_000, help="tasks per system (10000)")
    parser.add_argument("--round-trips", type=int, default=300, help="round trips (300)")
    parser.add_argument("--only", help="comma-separated systems (default: all)")
    parser.add_argument("--json", type=Path, help="write the raw results here")
    parser.add_argument("--keep", action="store_true", help="keep worker logs")
    parser.add_argument("--client", nargs=2, metavar=("SYSTEM", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        client(args.client[0], int(args.client[1]))
        return 0

    sys.path.insert(0, str(ROOT))
    from tests.servers import RedisServer

    chosen = [n.strip() for n in args.only.split(",")] if args.only else list(PEERS)
    unknown = set(chosen) - set(PEERS)
    if unknown:
        parser.error(f"unknown system(s) {sorted(unknown)}; known: {', '.join(PEERS)}")
    info = machine()
    info["versions"] = {PEERS[n].name: version(PEERS[n].dist) for n in chosen}
    server = RedisServer(appendonly=True)
    results: dict[str, dict[str, Any]] = {}
    try:
        with workdir("conveyor-peers-", args.keep) as (logdir, procs):
            server.start()
            redis = Redis.from_url(server.url)
            redis.config_set("appendfsync", "everysec")
            info["redis_server"] = redis.info("server")["redis_version"]
            os.environ["BENCH_REDIS_URL"] = os.environ["CONVEYOR_BROKER_URL"] = server.url
            print(f"redis-server on {server.url}; logs in {logdir}", file=sys.stderr)
            assert server.process is not None
            for name in chosen:
                results[name] = measure_peer(
                    PEERS[name](server.url), redis, server.process.pid, procs, args
                )
    finally:
        server.cleanup()
    info["load_after"] = os.getloadavg()[0]
    save(args.json, {"machine": info, "args": vars(args), "results": results})
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items())
    print(f"### Redis: Conveyor and its Python peers ({info['date']})\n")
    print(
        f"{info['cores']} cores ({info['cpu']}), Python {info['python']}, redis-server "
        f"{info['redis_server']} (AOF, everysec); {versions}; {args.tasks:,} tasks each; load "
        f"average before/after: {info['load_before']:.2f}/{info['load_after']:.2f}\n"
    )
    print(report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
