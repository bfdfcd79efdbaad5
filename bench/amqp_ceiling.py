"""What any AMQP client can reach on this machine: bare py-amqp, no Conveyor code.

    .venv/bin/python -m bench.amqp_ceiling [--messages 10000] [--quick] [--json out.json]

On one RabbitMQ node started like the test suite's (:mod:`tests.rabbit_server`), with py-amqp
(the client Conveyor uses):

* **drain**: N persistent no-op messages (a 300-byte body, Conveyor-sized) are published first,
  then 1 or 2 consumer processes drain them with ``basic.consume`` and manual acks - quorum or
  classic durable queue, prefetch 1/4/32/256, an ack per message or one ``multiple=True`` ack
  every k messages (k is capped by the prefetch: a consumer holding its whole window unacked
  gets nothing more). A consumer stops after 0.5 s without a message.
* **publish**: N persistent messages from one process on a confirm-mode channel - waiting for
  each confirm, for every batch of b, or once at the end - to a quorum or classic queue.

Each row gives messages/s (first to last message), the RabbitMQ node's CPU per message (user +
system of the node process from /proc, sampled every 20 ms and integrated over exactly that
interval) and the clients' CPU per message (``time.process_time`` in each client over the same
interval). Rates on a shared machine are noisy: compare rows of one run.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import multiprocessing.synchronize
import os
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import amqp

BODY = b"x" * 300
TICKS = os.sysconf("SC_CLK_TCK")
#: A consumer that saw no message for this long is done (seconds).
IDLE = 0.5


def node_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat", "rb") as stat:
        fields = stat.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


class CpuTrace(threading.Thread):
    """Samples a process's CPU seconds every 20 ms; :meth:`between` integrates a window."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.samples: list[tuple[float, float]] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            self.samples.append((time.time(), node_cpu(self.pid)))
            self.stopped.wait(0.02)

    def between(self, start: float, end: float) -> float:
        def at(moment: float) -> float:
            before = [cpu for t, cpu in self.samples if t <= moment]
            return before[-1] if before else self.samples[0][1]

        return at(end + 0.02) - at(start)


def connect(port: int) -> amqp.Connection:
    connection = amqp.Connection(f"127.0.0.1:{port}", userid="guest", password="guest")
    connection.connect()
    return connection


def declare(channel: amqp.Channel, queue: str, kind: str) -> None:
    args: dict[str, object] = {"x-queue-type": "quorum"} if kind == "quorum" else {}
    channel.queue_declare(queue, durable=True, auto_delete=False, arguments=args)


def fill(port: int, queue: str, kind: str, count: int) -> None:
    """Publish ``count`` messages, confirmed in batches of 500 (not timed)."""
    with connect(port) as connection:
        channel = connection.channel()
        declare(channel, queue, kind)
        channel.queue_purge(queue)
        channel.confirm_select()
        confirmed = [0]
        channel.events["basic_ack"].add(lambda tag, multiple: confirmed.__setitem__(0, tag))
        sent = 0
        while sent < count:
            batch = min(500, count - sent)
            for _ in range(batch):
                channel.basic_publish(amqp.Message(BODY, delivery_mode=2), "", queue)
            sent += batch
            while confirmed[0] < sent:
                connection.drain_events(timeout=30)


@dataclass
class ClientRun:
    count: int
    first: float
    last: float
    cpu: float


def consume(
    port: int,
    queue: str,
    prefetch: int,
    ack_every: int,
    ready: multiprocessing.synchronize.Barrier,
    out: multiprocessing.Queue[ClientRun],
) -> None:
    """One consumer process: ack every ``ack_every`` messages (``multiple=True``)."""
    every = min(ack_every, prefetch)
    with connect(port) as connection:
        channel = connection.channel()
        channel.basic_qos(0, prefetch, False)
        state = {"count": 0, "unacked": 0, "first": 0.0, "cpu0": 0.0, "last": 0.0, "cpu1": 0.0}

        def on_message(msg: amqp.Message) -> None:
            if not state["count"]:
                state["first"], state["cpu0"] = time.time(), time.process_time()
            state["count"] += 1
            state["unacked"] += 1
            if state["unacked"] >= every:
                channel.basic_ack(msg.delivery_info["delivery_tag"], multiple=every > 1)
                state["unacked"] = 0
                state["last"], state["cpu1"] = time.time(), time.process_time()

        ready.wait(30)
        channel.basic_consume(queue, callback=on_message)
        while True:
            try:
                connection.drain_events(timeout=IDLE)
            except TimeoutError:
                if state["count"]:
                    break
        # the few left under k (only when the total is not a multiple of k)
        if state["unacked"]:
            channel.basic_ack(0, multiple=True)
            state["last"], state["cpu1"] = time.time(), time.process_time()
    out.put(
        ClientRun(int(state["count"]), state["first"], state["last"], state["cpu1"] - state["cpu0"])
    )


@dataclass
class Row:
    side: str
    queue: str
    setting: str
    processes: int
    messages: int
    rate: float
    node_us: float
    client_us: float


def drain_row(
    port: int, trace: CpuTrace, kind: str, prefetch: int, ack_every: int, procs: int, n: int
) -> Row:
    queue = f"ceiling-{kind}"
    fill(port, queue, kind, n)
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(procs + 1)
    out: multiprocessing.Queue[ClientRun] = context.Queue()
    workers = [
        context.Process(target=consume, args=(port, queue, prefetch, ack_every, barrier, out))
        for _ in range(procs)
    ]
    for worker in workers:
        worker.start()
    barrier.wait(60)
    runs = [out.get(timeout=300) for _ in workers]
    for worker in workers:
        worker.join(30)
    first = min(r.first for r in runs)
    last = max(r.last for r in runs)
    total = sum(r.count for r in runs)
    if total != n:
        raise RuntimeError(f"drained {total} of {n} messages")
    ack = "each" if ack_every == 1 else f"multiple every {min(ack_every, prefetch)}"
    return Row(
        side="drain",
        queue=kind,
        setting=f"prefetch {prefetch}, ack {ack}",
        processes=procs,
        messages=n,
        rate=n / (last - first),
        node_us=trace.between(first, last) / n * 1e6,
        client_us=sum(r.cpu for r in runs) / n * 1e6,
    )


def publish_row(port: int, trace: CpuTrace, kind: str, batch: int, n: int) -> Row:
    """``batch`` messages per wait for confirms (1: each waits; n: one wait at the end)."""
    queue = f"ceiling-pub-{kind}"
    with connect(port) as connection:
        channel = connection.channel()
        declare(channel, queue, kind)
        channel.queue_purge(queue)
        channel.confirm_select()
        confirmed = [0]

        def on_ack(tag: int, multiple: bool) -> None:
            confirmed[0] = max(confirmed[0], tag)

        channel.events["basic_ack"].add(on_ack)
        start, cpu0 = time.time(), time.process_time()
        sent = 0
        while sent < n:
            size = min(batch, n - sent)
            for _ in range(size):
                channel.basic_publish(amqp.Message(BODY, delivery_mode=2), "", queue)
            sent += size
            while confirmed[0] < sent:
                connection.drain_events(timeout=30)
        end, cpu = time.time(), time.process_time() - cpu0
        channel.queue_purge(queue)
    setting = "confirm each" if batch == 1 else f"confirms per {batch}"
    return Row(
        "publish",
        kind,
        setting,
        1,
        n,
        n / (end - start),
        trace.between(start, end) / n * 1e6,
        cpu / n * 1e6,
    )


def drain_grid(quick: bool) -> Iterator[tuple[str, int, int, int]]:
    """(queue type, prefetch, ack every, processes)."""
    if quick:
        yield from [
            ("quorum", 4, 1, 2),
            ("quorum", 32, 1, 2),
            ("quorum", 32, 16, 2),
            ("classic", 8, 1, 1),
        ]
        return
    for kind in ("quorum", "classic"):
        for procs in (1, 2):
            for prefetch in (1, 4, 32, 256):
                yield kind, prefetch, 1, procs
                if prefetch >= 4:
                    yield kind, prefetch, 16 if prefetch >= 32 else prefetch // 2, procs
    yield "classic", 8, 1, 1  # Celery's transport at its defaults: one consumer, 4 x 2


def table(rows: list[Row]) -> str:
    lines = [
        "| side | queue | setting | processes | messages/s | node CPU µs/msg | client CPU µs/msg |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.side} | {r.queue} | {r.setting} | {r.processes} | {r.rate:,.0f} "
            f"| {r.node_us:,.0f} | {r.client_us:,.0f} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=10_000, help="per row (10000)")
    parser.add_argument("--quick", action="store_true", help="4 drain rows, 2 publish rows")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    if args.messages < 1:
        parser.error("--messages must be at least 1")

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.rabbit_server import RabbitServer

    rabbit = RabbitServer()
    rows: list[Row] = []
    load_before = os.getloadavg()[0]
    try:
        rabbit.start()
        assert rabbit.process is not None
        trace = CpuTrace(rabbit.process.pid)
        trace.start()
        publish = [(kind, b) for kind in ("quorum", "classic") for b in (1, 100, args.messages)]
        if args.quick:
            publish = [("quorum", 1), ("quorum", 100)]
        for kind, batch in publish:
            rows.append(publish_row(rabbit.port, trace, kind, batch, args.messages))
            print(table(rows[-1:]).splitlines()[-1], file=sys.stderr)
        for kind, prefetch, every, procs in drain_grid(args.quick):
            rows.append(drain_row(rabbit.port, trace, kind, prefetch, every, procs, args.messages))
            print(table(rows[-1:]).splitlines()[-1], file=sys.stderr)
        trace.stopped.set()
    finally:
        rabbit.cleanup()
    load = f"load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after"
    print(f"bare py-amqp {amqp.__version__}, {args.messages} messages a row, {load}\n")
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps({"load": load, "rows": [asdict(r) for r in rows]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
