"""Single and bulk enqueue on Redis, interleaved: Conveyor (and another version of it) against
its peers' single enqueue, per call: rate, client CPU and redis-server CPU.

    .venv/bin/python -m bench.enqueue_cost [--calls 10000] [--rounds 5] [--base DIR]
        [--only Conveyor,Huey] [--bulk 100000]

``bench.redis_peers`` measures each system's enqueue once, minutes apart from the others; on
a shared machine that is not enough to tell two fast clients apart. Here every round runs
each system's ``--calls`` single calls (``task.delay()``, Huey's ``task()``, ...) with no
worker running, each in a fresh process, one system after the other, on one redis-server
(AOF ``everysec``, as ``redis_peers``); Conveyor also sends ``--bulk`` tasks with
``app.send_many`` (0: not). With ``--client-only`` (and ``--only Conveyor``) the
settlement's publish is replaced by a no-op: what is left is Conveyor's own part of a call.
``--base`` is a directory holding another Conveyor's ``src/`` (``git archive <commit> src |
tar -x -C DIR``): it runs as "Conveyor (base)" in the same
rounds. Reported: the median over rounds of the rate, the client's CPU (user + sys) per
call and redis-server's (``INFO cpu``) per call, and the ratio of each Conveyor's single
enqueue rate to the fastest peer's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from redis import Redis

from bench._common import PYTHON, ROOT

BASE = "Conveyor (base)"


def _cpu() -> float:
    times = os.times()
    return times.user + times.system


def child(system: str, calls: int, bulk: int) -> dict[str, float]:
    """In a fresh process: ``calls`` single enqueues (and a bulk one) of ``system``."""
    from bench.redis_peers import PEERS

    url = os.environ["BENCH_REDIS_URL"]
    redis = Redis.from_url(url)

    def server() -> float:
        info = redis.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    peer = PEERS[system.removesuffix(" (base)")](url)
    peer.enqueue(200)  # imports, connections, scripts
    if os.environ.get("BENCH_CLIENT_ONLY"):
        # Conveyor's own part of a call: the broker's publish (script call, packing, round
        # trip) replaced by nothing, so only building, encoding and bookkeeping are timed.
        peer.app().app.settlement.publish = lambda messages, records: None
    if bulk:
        peer.bulk(200)
    redis.flushall()
    out: dict[str, float] = {}
    s0, c0, w0 = server(), _cpu(), time.perf_counter()
    peer.enqueue(calls)
    wall, c1, s1 = time.perf_counter() - w0, _cpu(), server()
    out |= {"rate": calls / wall, "client_us": (c1 - c0) / calls * 1e6}
    out["server_us"] = (s1 - s0) / calls * 1e6
    redis.flushall()
    if bulk:
        s0, c0, w0 = server(), _cpu(), time.perf_counter()
        if peer.bulk(bulk):
            wall, c1, s1 = time.perf_counter() - w0, _cpu(), server()
            out |= {"bulk_rate": bulk / wall, "bulk_client_us": (c1 - c0) / bulk * 1e6}
            out["bulk_server_us"] = (s1 - s0) / bulk * 1e6
        redis.flushall()
    return out


def run_child(system: str, url: str, args: argparse.Namespace) -> dict[str, float]:
    src = args.base / "src" if system == BASE else ROOT / "src"
    bulk = args.bulk if system.startswith("Conveyor") else 0
    env = {**os.environ, "BENCH_REDIS_URL": url, "PYTHONPATH": f"{src}{os.pathsep}{ROOT}"}
    if args.client_only:
        env["BENCH_CLIENT_ONLY"] = "1"
    done = subprocess.run(
        [PYTHON, "-m", "bench.enqueue_cost", "--child", system, str(args.calls), str(bulk)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{system} failed:\n{done.stderr[-3000:]}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=10_000, help="single calls (10000)")
    parser.add_argument("--bulk", type=int, default=100_000, help="send_many size (100000)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--base", type=Path, help="a directory holding another version's src/")
    parser.add_argument("--only", default="Conveyor,Huey", help="systems (Conveyor,Huey)")
    parser.add_argument(
        "--client-only",
        action="store_true",
        help="Conveyor without its broker call (the client's own part; use --only Conveyor)",
    )
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from tests.servers import RedisServer

    systems = [s.strip() for s in args.only.split(",")]
    if args.base is not None:
        systems.insert(systems.index("Conveyor") + 1 if "Conveyor" in systems else 0, BASE)
    server = RedisServer(appendonly=True)
    figures: dict[str, list[dict[str, float]]] = {s: [] for s in systems}
    try:
        server.start()
        Redis.from_url(server.url).config_set("appendfsync", "everysec")
        load0 = os.getloadavg()
        for n in range(args.rounds):
            for system in systems:
                figures[system].append(run_child(system, server.url, args))
            print(f"round {n + 1}/{args.rounds} done", file=sys.stderr)
        load1 = os.getloadavg()
    finally:
        server.cleanup()
    print(
        f"{args.calls:,} single calls and a send_many of {args.bulk:,} per system and round, "
        f"{args.rounds} rounds interleaved, medians; load average {load0[0]:.2f} -> "
        f"{load1[0]:.2f} ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})\n"
    )
    print(report(figures))
    return 0


def report(figures: dict[str, list[dict[str, float]]]) -> str:
    med: dict[str, dict[str, float]] = {
        system: {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        for system, rows in figures.items()
    }
    peers = {s: m["rate"] for s, m in med.items() if not s.startswith("Conveyor")}
    best = max(peers, key=lambda s: peers[s]) if peers else None
    lines = [
        "| system | enqueue/s | client µs/call | server µs/call | vs fastest peer "
        "| send_many/s | client µs/msg | server µs/msg |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for system, m in med.items():
        ratio = f"{m['rate'] / peers[best]:.2f}x" if best and system not in peers else "-"
        bulk = (
            f"{m['bulk_rate']:,.0f} | {m['bulk_client_us']:.1f} | {m['bulk_server_us']:.1f}"
            if "bulk_rate" in m
            else "- | - | -"
        )
        lines.append(
            f"| {system} | {m['rate']:,.0f} | {m['client_us']:.1f} | {m['server_us']:.1f} "
            f"| {ratio} | {bulk} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
