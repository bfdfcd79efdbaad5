"""The Redis lease alone: CPU per lease (with the previous task's ack, as a default worker
makes it) of redis-server and of the client, over 1 and N queues, for the lease script as
committed and for other versions of ``lease.lua``, interleaved.

    .venv/bin/python -m bench.redis_lease [--queues 1,50] [--tasks 2500] [--rounds 4] \\
        [--lua before=/tmp/lease_before.lua]

``--lua NAME=FILE`` (repeatable) adds a variant whose lease script is FILE (with
``common.lua`` in front, as the broker loads it), e.g. an older version from
``git show REV:src/conveyor/brokers/redis/lua/lease.lua`` (``redis_scripts/`` before the
package split). The client side is always the installed broker's. One redis-server (no AOF)
is started for the run.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import time
from pathlib import Path

from bench._common import ROOT, cpu_seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queues", default="1,50", help="queue counts (1,50)")
    parser.add_argument("--tasks", type=int, default=2_500, help="leases per measurement")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds; medians")
    parser.add_argument("--lua", action="append", default=[], help="NAME=FILE: a lease.lua")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from tests.servers import RedisServer

    from conveyor import Conveyor
    from conveyor._redis_calls import Calls
    from conveyor.brokers.redis import PRELUDE, RedisBroker, lua_source, script_source

    variants = {"committed": script_source("lease")}
    for spec in args.lua:
        name, _, path = spec.partition("=")
        variants[name] = lua_source(*PRELUDE) + "\n" + Path(path).read_text()
    server = RedisServer(appendonly=False)
    server.start()
    assert server.process is not None
    try:
        app = Conveyor("lease-bench", broker_url=server.url)
        broker = app.broker
        assert isinstance(broker, RedisBroker)
        script = broker._scripts["lease"]
        results: dict[tuple[int, str], list[tuple[float, float]]] = {}
        for count in [int(n) for n in args.queues.split(",")]:
            queues = [f"q{i}" for i in range(count)]
            for _ in range(args.rounds):
                for name, source in variants.items():
                    script.source, script.sha = source, hashlib.sha1(source.encode()).hexdigest()
                    script.load()
                    broker.purge(queues)
                    sigs = [
                        app.signature("x").set(queue=queues[i % count]) for i in range(args.tasks)
                    ]
                    app.send_many(sigs)
                    leases = args.tasks - 100  # every queue keeps messages: no idle wake-ups
                    server0, client0 = cpu_seconds([server.process.pid]), time.process_time()
                    acks = broker.lease_with(Calls(), [], queues, 1, 0)
                    for _ in range(leases - 1):
                        acks = broker.lease_with(Calls(), acks, queues, 1, 0)
                    server1, client1 = cpu_seconds([server.process.pid]), time.process_time()
                    results.setdefault((count, name), []).append(
                        ((server1 - server0) / leases * 1e6, (client1 - client0) / leases * 1e6)
                    )
        print("| queues | lease.lua | redis-server CPU per lease | client CPU per lease | rounds |")
        print("|---:|---|---:|---:|---|")
        for (count, name), rows in results.items():
            server_us = statistics.median(r[0] for r in rows)
            client_us = statistics.median(r[1] for r in rows)
            raw = " / ".join(f"{r[0]:.0f}" for r in rows)
            print(f"| {count} | {name} | {server_us:.0f} µs | {client_us:.0f} µs | {raw} |")
    finally:
        server.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
