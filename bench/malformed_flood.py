"""How much a flood of malformed messages slows good tasks (issue 20's bad-input target).

    .venv/bin/python -m bench.malformed_flood [--broker sqlite --broker redis] [--good 10000]

Per broker, two drains by a default production worker (``conveyor worker -A
bench.conveyor_app -c 2``, plus ``--variant`` arguments if given), each from a full queue:

1. ``--good`` no-op tasks (``bench.noop``, results off) alone;
2. the same number of good no-ops and ``--bad`` malformed messages, interleaved (good, bad,
   good, ...), published with the broker's raw ``publish`` so their bodies reach the worker
   as they are: random bytes, truncated JSON, JSON that is not an object, a field of the
   wrong type, an unknown task, nesting deeper than the decoder allows. Each must end as a
   dead letter.

Reported: each drain's time (workers launched until the queue is empty and nothing is in
flight) and steady rate (90% to 10% full), the good tasks' drain time with the flood over
without it (target: at most 2x), worker CPU per message, and that every bad message was
dead-lettered and every good one ran (none left, none dead).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench._common import Processes, machine, save, watch_drain
from conveyor.brokers.base import Message
from conveyor.message import Envelope, encode_envelope

GOOD_TASK = "bench.noop"
QUEUE = "default"


def bad_bodies(count: int, seed: int) -> list[bytes]:
    """``count`` malformed bodies, the kinds in turn (reproducible from ``seed``)."""
    rng = random.Random(seed)
    good = {"id": "x", "task": GOOD_TASK, "args": [], "created_at": 1.0}
    wrong = {"args": "1,2", "kwargs": [1], "priority": "9", "retries": "3", "eta": "tomorrow"}

    def random_bytes() -> bytes:
        return rng.randbytes(rng.randint(1, 200))

    def truncated() -> bytes:
        body = json.dumps({**good, "id": uuid.uuid4().hex}).encode()
        return body[: rng.randint(1, len(body) - 1)]

    def not_an_object() -> bytes:
        return json.dumps(rng.choice([[1, 2], "text", 42, None, True])).encode()

    def wrong_field() -> bytes:
        field = rng.choice(list(wrong))
        return json.dumps({**good, "id": uuid.uuid4().hex, field: wrong[field]}).encode()

    def unknown_task() -> bytes:
        return json.dumps({**good, "id": uuid.uuid4().hex, "task": "bench.nope"}).encode()

    def deep() -> bytes:
        inner = "[" * 500 + "1" + "]" * 500
        return f'{{"id":"{uuid.uuid4().hex}","task":"{GOOD_TASK}","args":{inner}}}'.encode()

    makers: list[Callable[[], bytes]] = [
        random_bytes,
        truncated,
        not_an_object,
        wrong_field,
        unknown_task,
        deep,
    ]
    return [makers[i % len(makers)]() for i in range(count)]


def good_messages(count: int) -> list[Message]:
    messages = []
    for _ in range(count):
        mid = uuid.uuid4().hex
        body = encode_envelope(
            Envelope(id=mid, task=GOOD_TASK, created_at=time.time(), ignore_result=True)
        )
        messages.append(Message(mid, QUEUE, body))
    return messages


def interleaved(good: list[Message], bad: list[bytes]) -> list[Message]:
    bad_messages = [Message(f"bad-{i}-{uuid.uuid4().hex[:8]}", QUEUE, b) for i, b in enumerate(bad)]
    mixed: list[Message] = []
    for i in range(max(len(good), len(bad_messages))):
        mixed += good[i : i + 1] + bad_messages[i : i + 1]
    return mixed


def run_broker(name: str, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    procs = Processes(tmp)
    server: Any = None
    server_pid = None
    if name == "redis":
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        import redis
        from tests.servers import RedisServer

        server = RedisServer(appendonly=True)
        server.start()
        redis.Redis.from_url(server.url).config_set("appendfsync", "everysec")
        url = server.url
        assert server.process is not None
        server_pid = server.process.pid
    else:
        url = f"sqlite:///{tmp}/{name}.sqlite3"
    os.environ["CONVEYOR_BROKER_URL"] = url
    from conveyor import Conveyor

    app = Conveyor("flood", broker=url)
    broker = app.broker

    def depth() -> tuple[int, int]:
        stats = broker.stats([QUEUE])[QUEUE]
        return stats.ready, stats.leased

    def drain(messages: list[Message]) -> dict[str, Any]:
        dead_before = broker.stats([QUEUE])[QUEUE].dead
        for at in range(0, len(messages), 5000):
            broker.publish(messages[at : at + 5000])
        worker_args = [sys.executable, "-m", "conveyor", "worker", "-A", "bench.conveyor_app"]
        worker_args += ["-c", "2", *args.variant]
        started = time.perf_counter()
        worker = procs.start(f"worker-{name}", worker_args, {"CONVEYOR_BROKER_URL": url})
        watched = watch_drain(
            len(messages), started, depth, timeout=600, worker=worker.pid, server=server_pid
        )
        procs.stop(worker)
        worker_cpu, server_cpu = watched.cpu_per_task()
        return {
            "messages": len(messages),
            "seconds": watched.finished - watched.started,
            "steady_rate": watched.steady_rate,
            "worker_cpu_us": None if worker_cpu is None else worker_cpu * 1e6,
            "server_cpu_us": None if server_cpu is None or not server_pid else server_cpu * 1e6,
            "left": sum(depth()),
            "dead": broker.stats([QUEUE])[QUEUE].dead - dead_before,
        }

    try:
        broker.lease([QUEUE], 1, 0)  # creates the schema / declares the queue
        alone = drain(good_messages(args.good))
        flood = drain(interleaved(good_messages(args.good), bad_bodies(args.bad, args.seed)))
    finally:
        procs.stop_all()
        app.close()
        if server is not None:
            server.cleanup()
    # The good tasks are spread evenly through the flood: they finish with it.
    good_share = args.good / (args.good + args.bad)
    return {
        "broker": name,
        "alone": alone,
        "flood": flood,
        "ratio": flood["seconds"] / alone["seconds"],
        "steady_ratio": alone["steady_rate"] / (flood["steady_rate"] * good_share),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--broker", action="append", choices=["sqlite", "redis"])
    parser.add_argument("--good", type=int, default=10_000)
    parser.add_argument("--bad", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=20)
    parser.add_argument("--variant", type=str, default="", help="extra worker arguments")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    args.variant = args.variant.split()
    tmp = Path(tempfile.mkdtemp(prefix="conveyor-flood-"))
    print(f"logs in {tmp}", file=sys.stderr)
    rows = []
    try:
        for name in args.broker or ["sqlite", "redis"]:
            row = run_broker(name, args, tmp)
            print(row, file=sys.stderr)
            rows.append(row)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    info = machine()
    info["load_after"] = os.getloadavg()[0]
    save(args.json, {"machine": info, "args": vars(args), "rows": rows})
    print(f"### Malformed flood ({info['date']}, load {info['load_before']:.1f})\n")
    print(f"{args.good:,} good no-ops alone, then with {args.bad:,} malformed interleaved\n")
    print(
        "| broker | good alone | good + bad | good slowed by | steady rate alone / with bad "
        "| worker CPU per message alone / with bad | left, dead (with bad) |"
    )
    print("|---|---:|---:|---:|---:|---:|---|")
    for row in rows:
        alone, flood = row["alone"], row["flood"]
        print(
            f"| {row['broker']} | {alone['seconds']:.2f} s | {flood['seconds']:.2f} s "
            f"| {row['ratio']:.2f}x "
            f"| {alone['steady_rate']:,.0f}/s / {flood['steady_rate']:,.0f}/s "
            f"| {_us(alone['worker_cpu_us'])} / {_us(flood['worker_cpu_us'])} "
            f"| {flood['left']}, {flood['dead']} |"
        )
    return 0


def _us(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f} µs"


if __name__ == "__main__":
    sys.exit(main())
