"""The publish path, two versions of Conveyor interleaved: what ``send_many`` and ``delay()``
cost on the client and on the server, per message.

    .venv/bin/python -m bench.publish_cost --base /tmp/base [--count 10000] [--rounds 5]

``--base`` is a directory holding another version's ``src/`` (e.g. ``git archive <commit> src
| tar -x -C /tmp/base``); without it only this tree is measured. Each round runs every case in
a fresh process of each version in turn (so both see the same background load), against one
PostgreSQL (fsync on) and one Redis (AOF ``everysec``) this script starts on loopback ports
(or ``--pg-url`` / ``--redis-url``). Per case it reports the median over rounds of:

* ``rate``: messages per second of wall time (noisy on a shared machine);
* ``client µs``: CPU (user + sys) of the producing process per message;
* ``server µs``: CPU of the server per message (PostgreSQL: its client backends, from
  ``/proc``; Redis: ``INFO cpu``).

Cases: ``bulk``: ``send_many`` of ``--count`` no-op signatures (built inside the timing, as
the other benchmarks do); ``delay``: ``--count // 5`` single ``delay()`` calls; each with
results off (``ignore_result=True``) and on (a QUEUED record per message). With ``--memory``,
also Redis memory per queued no-op (``INFO memory`` before and after 100,000 queued, results
off), once per version.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CASES = ("bulk_off", "bulk_on", "delay_off", "delay_on")


def _proc_cpu(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0  # the backend ended
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _server_cpu(app: Any, url: str) -> Callable[[], float]:
    """A function returning the server's CPU seconds so far (for this app's connections)."""
    if url.startswith("redis"):
        client = app.broker.client

        def redis_cpu() -> float:
            info = client.info("cpu")
            return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

        return redis_cpu
    import psycopg

    admin = psycopg.connect(url, autocommit=True)
    mine = admin.info.backend_pid

    def pg_cpu() -> float:
        rows = admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> %s",
            (mine,),
        ).fetchall()
        return sum(_proc_cpu(int(row[0])) for row in rows)

    return pg_cpu


def child(url: str, case: str, count: int) -> dict[str, float]:
    """Run one case in this process; return its figures."""
    from conveyor import Conveyor

    app = Conveyor("bench", broker=url)
    noop = app.task(name="bench.noop", ignore_result=True)(lambda: None)
    noop_result = app.task(name="bench.noop_result")(lambda: None)
    task = noop_result if case.endswith("_on") else noop
    queue = app.conf.task_default_queue
    app.send_many([task.s() for _ in range(50)])  # connections, tables, scripts
    task.delay()
    app.broker.purge([queue])
    server = _server_cpu(app, url)
    n = count if case.startswith("bulk") else count // 5
    s0, c0, w0 = server(), os.times(), time.perf_counter()
    if case.startswith("bulk"):
        app.send_many([task.s() for _ in range(n)])
    else:
        for _ in range(n):
            task.delay()
    wall = time.perf_counter() - w0
    c1 = os.times()
    s1 = server()
    app.broker.purge([queue])
    app.close()
    return {
        "rate": n / wall,
        "client_us": (c1.user + c1.system - c0.user - c0.system) / n * 1e6,
        "server_us": (s1 - s0) / n * 1e6,
    }


def memory_child(url: str, count: int) -> dict[str, float]:
    """Bytes of Redis memory per queued no-op message (``count`` of them, in batches)."""
    import redis

    from conveyor import Conveyor

    app = Conveyor("bench", broker=url)
    noop = app.task(name="bench.noop", ignore_result=True)(lambda: None)
    queue = app.conf.task_default_queue
    app.send_many([noop.s() for _ in range(10)])
    app.broker.purge([queue])
    client = redis.Redis.from_url(url)
    # Ids remembered by earlier cases (publish dedupe, 60 s) would expire during the count:
    # one key per id before 2026-12, one set per minute since.
    for pattern in ("{conveyor:*}:published:*", "{conveyor:*}:pub:*"):
        for key in client.scan_iter(pattern, count=1000):
            client.delete(key)
    before = int(client.info("memory")["used_memory"])
    for _ in range(count // 10_000):
        app.send_many([noop.s() for _ in range(10_000)])
    after = int(client.info("memory")["used_memory"])
    app.broker.purge([queue])
    app.close()
    return {"bytes": (after - before) / (count // 10_000 * 10_000)}


def run_child(src: Path, url: str, case: str, count: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{ROOT}"}
    done = subprocess.run(
        [sys.executable, "-m", "bench.publish_cost", "--child", url, case, str(count)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{case} on {url} with {src} failed:\n{done.stderr[-3000:]}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        case, count = sys.argv[3], int(sys.argv[4])
        found = (
            memory_child(sys.argv[2], count)
            if case == "memory"
            else child(sys.argv[2], case, count)
        )
        print(json.dumps(found))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", type=Path, help="a directory holding another version's src/")
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--pg-url")
    parser.add_argument("--redis-url")
    parser.add_argument("--only", choices=("postgres", "redis"))
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--memory", action="store_true", help="Redis bytes per queued message")
    args = parser.parse_args()
    versions = {"this": ROOT / "src"}
    if args.base is not None:
        versions = {"base": args.base / "src", **versions}
    stop: list[Callable[[], None]] = []
    try:
        urls = _servers(args, stop)
        figures: dict[tuple[str, str, str], list[dict[str, float]]] = defaultdict(list)
        load0 = os.getloadavg()[0]
        for n in range(args.rounds):
            for broker, url in urls.items():
                for case in args.cases.split(","):
                    for version, src in versions.items():
                        figures[broker, case, version].append(run_child(src, url, case, args.count))
            print(f"round {n + 1}/{args.rounds} done", file=sys.stderr)
        memory = {}
        if args.memory and "redis" in urls:
            for version, src in versions.items():
                memory[version] = run_child(src, urls["redis"], "memory", 100_000)["bytes"]
        load1 = os.getloadavg()[0]
    finally:
        for fn in stop:
            fn()
    print(
        f"\n{args.count:,} messages per bulk case, {args.count // 5:,} delay() calls; "
        f"{args.rounds} rounds interleaved, medians; load average {load0:.2f} -> {load1:.2f}\n"
    )
    print("| broker | case | version | rate/s | client µs/msg | server µs/msg |")
    print("|---|---|---|---:|---:|---:|")
    for (broker, case, version), rows in figures.items():
        med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        print(
            f"| {broker} | {case} | {version} | {med['rate']:,.0f} | {med['client_us']:.1f} "
            f"| {med['server_us']:.1f} |"
        )
    for version, size in memory.items():
        print(f"\nRedis memory per queued no-op ({version}): {size:,.0f} bytes")
    return 0


def _servers(args: argparse.Namespace, stop: list[Callable[[], None]]) -> dict[str, str]:
    urls: dict[str, str] = {}
    sys.path.insert(0, str(ROOT))
    if args.only in (None, "postgres"):
        if args.pg_url:
            urls["postgres"] = args.pg_url
        else:
            from tests.pg_server import PostgresServer

            pg = PostgresServer(durable=True)
            pg.start()
            stop.append(pg.cleanup)
            urls["postgres"] = pg.url()
    if args.only in (None, "redis"):
        if args.redis_url:
            urls["redis"] = args.redis_url
        else:
            import redis
            from tests.servers import RedisServer

            server = RedisServer(appendonly=True)
            server.start()
            stop.append(server.stop)
            redis.Redis.from_url(server.url).config_set("appendfsync", "everysec")
            urls["redis"] = server.url
    time.sleep(0.1)
    return urls


if __name__ == "__main__":
    sys.exit(main())
