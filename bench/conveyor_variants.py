"""Drain rate and CPU cost of Conveyor worker variants, to find where the time goes.

    .venv/bin/python -m bench.conveyor_variants --broker sqlite [--drain 10000]
    .venv/bin/python -m bench.conveyor_variants --broker redis --variant "-l warning"
    .venv/bin/python -m bench.conveyor_variants --broker redis --incr --variant "--threads 2"
    .venv/bin/python -m bench.conveyor_variants --broker redis-cluster --queues 3 --drain 20000
    .venv/bin/python -m bench.conveyor_variants --broker amqp --variant default \
        --variant "PYTHONPATH=/tmp/old/src default"

``--broker redis-cluster`` starts a Redis Cluster of three primaries with a replica each
(``tests/cluster_servers.py``); ``--queues N`` spreads the tasks over queues ``q0..q<N-1>``
(the worker consumes all of them) and reports how many script calls each Redis primary served.

Each variant is extra arguments for ``python -m conveyor worker -A bench.conveyor_app -c 2``,
optionally starting with ``patch=timers`` (the workers skip arming the time-limit thread for
tasks without limits: a monkeypatch, to measure a proposed fix); or
``inproc [threads=N] [prefetch=N] [patch=log,timers]``: two plain processes each running
``app.Worker()`` - no supervisor, no per-task reports to it, no logging unless ``patch=log``
(the CLI's setup at level info). Leading ``NAME=value`` words set environment variables of
the workers (``BENCH_EVENTS=on|off``: events or not, see ``bench/conveyor_app.py``;
``PYTHONPATH=<a checkout>/src``: another version of Conveyor, for before/after runs
interleaved on one server). ``--broker amqp`` starts the suite's RabbitMQ node
(``tests/rabbit_server.py``) with a Redis for its key/value data; the "server CPU" is the
RabbitMQ node's. With
``--py-spy DIR``, each variant's worker processes are
sampled by py-spy while the queue drains (raw stacks of the thread holding the GIL).
"""

from __future__ import annotations

import argparse
import functools
import os
import shlex
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
    Processes,
    machine,
    process_tree,
    save,
    wait_until,
    watch_drain,
)

DEFAULT_VARIANTS = [
    "default",
    "-l warning",
    "--prefetch 8",
    "--prefetch 8 -l warning",
    "--threads 4 --prefetch 4 -l warning",
    "inproc",
]

PATCHES = """
import os
from conveyor.worker.timelimits import TimeLimits

patches = os.environ.get("BENCH_PATCH", "").split(",")
if "log" in patches:  # the CLI's logging setup at its default level
    from conveyor.cli import setup_logging
    setup_logging("info")
if "timers" in patches:  # what skipping the timer thread for tasks without limits saves
    arm = TimeLimits.arm
    def _arm_timers(self, control):
        envelope = control.job.envelope
        if envelope.soft_time_limit or envelope.time_limit:
            arm(self, control)
    TimeLimits.arm = _arm_timers
"""
INPROC = (
    PATCHES
    + """
from bench.conveyor_app import app
worker = app.Worker(
    concurrency=int(os.environ.get("BENCH_THREADS", "1")),
    prefetch_multiplier=int(os.environ.get("BENCH_PREFETCH", "1")),
)
worker.run()
"""
)
PATCHED_CLI = PATCHES + "\nimport sys\nfrom conveyor.cli import main\nmain()\n"


def start(variant: str, procs: Processes, env: dict[str, str], queues: list[str]) -> Any:
    if variant == "inproc" or variant.startswith("inproc "):
        # A parent that only waits, so the tree looks like the supervisor's.
        children = "; ".join(
            f"p{i} = subprocess.Popen([sys.executable, '-c', {INPROC!r}])" for i in range(2)
        )
        code = (
            "import subprocess, sys, signal; "
            "signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM]); "
            f"{children}; signal.sigwait([signal.SIGTERM])"
        )
        code += "; p0.kill(); p1.kill()"
        return procs.start("inproc", [PYTHON, "-c", code], env)
    words = shlex.split(variant)
    while words and "=" in words[0] and words[0].split("=")[0].isupper():
        key, _, value = words.pop(0).partition("=")  # an environment variable: BENCH_EVENTS=off
        env[key] = value
    words = words or ["default"]
    launcher = [PYTHON, "-m", "conveyor"]
    if words and words[0].startswith("patch="):
        env["BENCH_PATCH"] = words.pop(0).partition("=")[2]
        launcher = [PYTHON, "-c", PATCHED_CLI]
    args = [*launcher, "worker", "-A", "bench.conveyor_app", "-c", "2", "-Q", ",".join(queues)]
    if words != ["default"]:
        args += words
    return procs.start("worker", args, env)


def spread_names(prefix: str) -> list[str]:
    """Queue names ``q<n>`` whose hash tags fall in different thirds of the slots, so that on
    a fresh three-primary cluster (``redis-cli --cluster create`` gives each a third) they land
    on different primaries: one for each third, then the rest in turn."""
    from redis.crc import key_slot

    thirds: list[list[str]] = [[], [], []]
    for n in range(300):
        name = f"q{n}"
        thirds[min(2, key_slot(f"{{{prefix}:{name}}}".encode()) * 3 // 16384)].append(name)
    return [name for group in zip(*thirds, strict=False) for name in group]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    brokers = ["sqlite", "redis", "redis-cluster", "postgres", "amqp"]
    parser.add_argument("--broker", choices=brokers, default="sqlite")
    parser.add_argument("--drain", type=int, default=10_000)
    parser.add_argument("--queues", type=int, default=1, help="spread tasks over N queues")
    parser.add_argument("--results", action="store_true", help="tasks store results")
    parser.add_argument(
        "--incr",
        action="store_true",
        help="tasks INCR a counter in Redis (--broker redis: the peers' task body)",
    )
    parser.add_argument("--variant", action="append", help="worker arguments (repeatable)")
    parser.add_argument("--py-spy", type=Path, help="profile the workers into this directory")
    parser.add_argument(
        "--py-spy-all-threads",
        action="store_true",
        help="sample every thread py-spy thinks is busy (default: only the one holding the GIL)",
    )
    parser.add_argument("--json", type=Path)
    parser.add_argument("--keep", action="store_true", help="keep worker logs and files")
    args = parser.parse_args()
    variants = args.variant or DEFAULT_VARIANTS

    tmp = Path(tempfile.mkdtemp(prefix="conveyor-variants-"))
    procs = Processes(tmp)
    server: Any = None  # RedisServer, ClusterDeployment, PostgresServer or RabbitServer
    kv_server: Any = None  # the Redis holding the RabbitMQ broker's key/value data
    server_pid = None
    nodes: list[int] = []  # Redis ports whose script calls are counted
    if args.broker == "redis-cluster":
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from tests.cluster_servers import ClusterDeployment

        server = ClusterDeployment()
        server.start()
        url = server.url
        nodes = server.primary_ports()
    elif args.broker == "redis":
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        import redis
        from tests.servers import RedisServer

        server = RedisServer(appendonly=True)
        server.start()
        redis.Redis.from_url(server.url).config_set("appendfsync", "everysec")
        url = server.url
        assert server.process is not None
        server_pid = server.process.pid
        nodes = [server.port]
    elif args.broker == "postgres":
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from tests.pg_server import PostgresServer

        server = PostgresServer(durable=True)
        server.start()
        url = server.url()
        assert server.process is not None
        server_pid = server.process.pid
    elif args.broker == "amqp":
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from tests.rabbit_server import RabbitServer
        from tests.servers import RedisServer

        kv_server = RedisServer(appendonly=False)
        kv_server.start()
        server = RabbitServer()
        server.start()
        url = f"{server.url}?kv_url={kv_server.url}"
        assert server.process is not None
        server_pid = server.process.pid
    else:
        url = f"sqlite:///{tmp}/conveyor.sqlite3"
    os.environ["CONVEYOR_BROKER_URL"] = url
    from bench import conveyor_app

    app = conveyor_app.app
    task = conveyor_app.noop_result if args.results else conveyor_app.noop
    if args.incr:
        if args.broker != "redis":
            parser.error("--incr needs --broker redis")
        task = conveyor_app.incr
    queues = [app.conf.task_default_queue]
    if args.queues > 1:
        queues = [f"q{i}" for i in range(args.queues)]
    if args.broker == "redis-cluster" and args.queues > 1:
        queues = spread_names(app.conf.broker_transport_options.get("key_prefix", "conveyor"))[
            : args.queues
        ]

    def depth() -> tuple[int, int]:
        stats = app.broker.stats(queues).values()
        return sum(s.ready for s in stats), sum(s.leased for s in stats)

    def script_calls() -> list[int]:
        import redis

        counts = []
        for port in nodes:
            with redis.Redis(port=port) as node:
                counts.append(node.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))
                node.config_resetstat()
        return counts

    print(f"logs in {tmp} (deleted at the end unless --keep)", file=sys.stderr)
    rows: list[dict[str, Any]] = []
    try:
        for variant in variants:
            sigs = [task.s().set(queue=queues[i % len(queues)]) for i in range(args.drain)]
            for start_at in range(0, len(sigs), 5000):
                app.send_many(sigs[start_at : start_at + 5000])
            script_calls()
            env = {"CONVEYOR_BROKER_URL": url, "BENCH_REDIS_URL": url}
            if variant.startswith("inproc"):
                for part in variant.split()[1:]:
                    key, _, value = part.partition("=")
                    env[f"BENCH_{key.upper()}"] = value
            started = time.perf_counter()
            worker = start(variant, procs, env, queues)
            spies: list[subprocess.Popen[bytes]] = []
            if args.py_spy is not None:
                args.py_spy.mkdir(parents=True, exist_ok=True)
                # the children started (a loaded machine takes seconds), then draining
                children = functools.partial(lambda pid: len(process_tree(pid)) > 2, worker.pid)
                wait_until(children, 60, "worker children")
                time.sleep(0.5)
                name = variant.replace(" ", "_").replace("-", "") or "default"
                for pid in process_tree(worker.pid):
                    out = args.py_spy / f"{args.broker}-{name}-{pid}"
                    spies.append(
                        subprocess.Popen(
                            [
                                *(str(BIN / "py-spy"), "record", "-p", str(pid), "-d", "5"),
                                *("-r", "200", "-f", "raw", "-o", f"{out}.txt", "--threads"),
                                *([] if args.py_spy_all_threads else ["--gil"]),
                            ],
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                        )
                    )
            drain = watch_drain(
                args.drain, started, depth, timeout=180, worker=worker.pid, server=server_pid
            )
            for spy in spies:
                spy.wait(30)
            procs.stop(worker)
            per_task = drain.cpu_per_task()
            dead = len(app.broker.dead_letters(limit=args.drain))
            row = {
                "variant": variant,
                "steady_rate": drain.steady_rate,
                "with_startup": drain.overall_rate,
                "worker_cpu_us": None if per_task[0] is None else per_task[0] * 1e6,
                "server_cpu_us": None if per_task[1] is None else per_task[1] * 1e6,
                "root_cpu_us": (drain.root_cpu_per_task() or 0.0) * 1e6,
                "left": sum(depth()),
                "dead": dead,
                "script_calls_per_node": script_calls(),
            }
            rows.append(row)
            print(row, file=sys.stderr)
            app.broker.purge(queues)
    finally:
        procs.stop_all()
        if server is not None:
            server.cleanup()
        if kv_server is not None:
            kv_server.cleanup()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    info = machine()
    info["load_after"] = os.getloadavg()[0]
    save(args.json, {"machine": info, "args": vars(args), "rows": rows})
    load = f"load {info['load_before']:.1f}"
    print(f"### Conveyor worker variants on {args.broker} ({info['date']}, {load})\n")
    print(
        f"{args.drain:,} {'INCR' if args.incr else 'no-op'} tasks over {len(queues)} queue(s), "
        f"results {'on' if args.results else 'off'}, 2 processes\n"
    )
    print(
        "| worker arguments | drain (steady) | worker CPU per task "
        "| of which the parent process | server CPU per task | left, dead "
        "| script calls per Redis primary |"
    )
    print("|---|---:|---:|---:|---:|---|---|")
    for row in rows:
        worker_cpu = row["worker_cpu_us"]
        server_cpu = row["server_cpu_us"]
        print(
            f"| `{row['variant']}` | {row['steady_rate']:,.0f}/s "
            f"| {'n/a' if worker_cpu is None else f'{worker_cpu:,.0f} µs'} "
            f"| {row['root_cpu_us']:,.0f} µs "
            f"| {'n/a' if server_cpu is None or not server_pid else f'{server_cpu:,.0f} µs'} "
            f"| {row['left']}, {row['dead']} "
            f"| {' / '.join(f'{n:,}' for n in row['script_calls_per_node']) or 'n/a'} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
