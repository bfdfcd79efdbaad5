"""The PostgreSQL lease's cost per task, for its variants, interleaved in one run.

    .venv/bin/python -m bench.postgres_lease [--reps 7] [--tasks 1000]

One client leases one message at a time, acking the previous one in the same statement (what
a worker with default settings does), from its own namespace of a durable PostgreSQL started on
a free loopback port. Each rep runs every variant in turn: PostgreSQL's default plan cache mode
or generic plans (``?generic_plans=``), and promoting due delayed messages in every lease or at
most every ``PROMOTE_EVERY`` s. Reports tasks/s, client CPU and server CPU (every process of
the cluster, from /proc) per task, medians over the reps: CPU per task is the figure that
survives a shared machine, whose load moves the rates.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def cluster_cpu(postmaster: int) -> float:
    """CPU seconds of the postmaster and its children."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry) == postmaster or int(fields[1]) == postmaster:
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--tasks", type=int, default=1000)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from tests.pg_server import PostgresServer

    from conveyor.brokers.base import BrokerOptions, Delivery, Message
    from conveyor.brokers.postgres import PostgresBroker
    from conveyor.brokers.postgres import statements as sql

    server = PostgresServer(durable=True)
    server.start()
    try:
        assert server.process is not None
        variants: dict[str, tuple[PostgresBroker, float]] = {}
        for plans in ("auto", "generic"):
            for every in (0.0, sql.PROMOTE_EVERY):
                query = "?generic_plans=false" if plans == "auto" else ""
                broker = PostgresBroker(
                    server.url() + query, BrokerOptions(key_prefix=uuid.uuid4().hex[:12])
                )
                name = (
                    f"{plans} plans, promote {'every lease' if not every else f'<= every {every}s'}"
                )
                variants[name] = (broker, every)
        samples: dict[str, list[tuple[float, float, float]]] = {name: [] for name in variants}
        promote_every = sql.PROMOTE_EVERY
        for _ in range(args.reps):
            for name, (broker, every) in variants.items():
                sql.PROMOTE_EVERY = every
                broker.publish(
                    [Message(str(uuid.uuid4()), "q", b"x" * 160, 0) for _ in range(args.tasks)]
                )
                held: list[Delivery] = []
                leased = 0
                start, cpu, served = (
                    time.perf_counter(),
                    time.process_time(),
                    cluster_cpu(server.process.pid),
                )
                while True:  # the last call acks the last message and finds none
                    held = broker.lease_now(["q"], 1, held)
                    if not held:
                        break
                    leased += len(held)
                wall = time.perf_counter() - start
                samples[name].append(
                    (
                        leased / wall,
                        (time.process_time() - cpu) / leased * 1e6,
                        (cluster_cpu(server.process.pid) - served) / leased * 1e6,
                    )
                )
        sql.PROMOTE_EVERY = promote_every
        print(f"load average after: {os.getloadavg()[0]:.1f}")
        print("| variant | tasks/s | client CPU per task | server CPU per task |")
        print("|---|---:|---:|---:|")
        for name, rows in samples.items():
            rate, client, srv = (statistics.median(r[i] for r in rows) for i in range(3))
            print(f"| {name} | {rate:,.0f} | {client:,.0f} µs | {srv:,.0f} µs |")
        for broker, _ in variants.values():
            broker.close()
    finally:
        server.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
