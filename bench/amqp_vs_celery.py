"""Conveyor vs Celery on one RabbitMQ node, same machine, same no-op task, one run.

    .venv/bin/python -m bench.amqp_vs_celery [--drain 10000] [--delay 1000] [--latency 300]

The steps, workers and report are those of :mod:`bench.redis_vs_celery` (2 worker processes
each, Conveyor's defaults: at-least-once with publisher confirms on quorum queues; Celery's
defaults: at-most-once, prefetch 4, its classic ``celery`` queue, plus one drain with
``task_acks_late=True``), with RabbitMQ as the broker of both and one Redis server as the
result backend of both (RabbitMQ stores no results for Conveyor; Celery's ``rpc://`` would
not be comparable). The node is the test suite's (:mod:`tests.rabbit_server`): its own node
name, data directory and free loopback ports.

Queue depth is RabbitMQ's ready count for both sides (AMQP reports no unacked count), so a
drain ends when nothing is waiting; at most the prefetched messages of the two processes are
still running then.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from functools import cached_property
from pathlib import Path
from typing import Any

import amqp
from redis import Redis

from bench import redis_vs_celery as on_redis
from bench._common import (
    Processes,
    add_count_options,
    add_run_options,
    machine,
    only,
    print_header,
    save_results,
    version,
    workdir,
)
from bench._latency import measure


class AMQPMixin:
    """RabbitMQ for messages, Redis for results: emptying both, reading the queue depth."""

    amqp_url: str
    redis_url: str
    name: str

    @cached_property
    def results(self) -> Redis:
        return Redis.from_url(self.redis_url)

    def ready(self, queue: str) -> int:
        port = int(self.amqp_url.rsplit(":", 1)[1].split("/", 1)[0])
        with amqp.Connection(f"127.0.0.1:{port}", userid="guest", password="guest") as conn:
            channel = conn.channel()
            try:
                _, count, _ = channel.queue_declare(queue, passive=True)
            except amqp.exceptions.NotFound:
                return 0
            return int(count)

    def purge(self, queue: str) -> None:
        port = int(self.amqp_url.rsplit(":", 1)[1].split("/", 1)[0])
        with amqp.Connection(f"127.0.0.1:{port}", userid="guest", password="guest") as conn:
            channel = conn.channel()
            try:
                channel.queue_purge(queue)
            except amqp.exceptions.NotFound:
                return

    def env(self) -> dict[str, str]:
        return {
            "CONVEYOR_BROKER_URL": self.amqp_url,
            "CONVEYOR_RESULT_BACKEND": self.redis_url,
            "BENCH_BROKER_URL": self.amqp_url,
            "BENCH_REDIS_URL": self.redis_url,
        }

    def latency(self, count: int, pause: float = 0.0) -> list[float]:
        return measure(self.name.lower(), count, {**os.environ, **self.env()}, pause)


class ConveyorSide(AMQPMixin, on_redis.ConveyorSide):
    """Conveyor on RabbitMQ (a subclass of the Redis benchmark's side: its steps apply)."""

    def __init__(self, amqp_url: str, redis_url: str, procs: Processes) -> None:
        self.amqp_url, self.redis_url = amqp_url, redis_url
        os.environ["CONVEYOR_RESULT_BACKEND"] = redis_url
        super().__init__(amqp_url, procs)

    def reset(self) -> None:
        self.mod.app.broker.purge([self.queue])
        self.results.flushall()

    def depth(self) -> tuple[int, int]:
        return self.ready(f"conveyor.q.{self.queue}"), 0

    def start_worker(self, *extra: str, **env: str) -> subprocess.Popen[bytes]:
        return super().start_worker(*extra, **{**self.env(), **env})


class CelerySide(AMQPMixin, on_redis.CelerySide):
    """Celery on RabbitMQ with its defaults."""

    def __init__(self, amqp_url: str, redis_url: str, procs: Processes) -> None:
        self.amqp_url, self.redis_url = amqp_url, redis_url
        os.environ["BENCH_BROKER_URL"] = amqp_url
        super().__init__(redis_url, procs)

    def reset(self) -> None:
        self.purge("celery")
        self.results.flushall()

    def depth(self) -> tuple[int, int]:
        return self.ready("celery"), 0

    def start_worker(self, *extra: str, **env: str) -> subprocess.Popen[bytes]:
        args = [*on_redis.CELERY_WORKER, *extra]
        return self.procs.start("celery-worker", args, {**self.env(), **env})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_count_options(parser, "tasks per timed enqueue (2000)")
    parser.add_argument("--extra-drain", type=int, default=5_000, help="tasks (5000)")
    parser.add_argument("--latency", type=int, default=300, help="round trips timed (300)")
    parser.add_argument("--idle-latency", type=int, default=30, help="after idling (30)")
    add_run_options(parser, "celery")
    args = parser.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.rabbit_server import RabbitServer
    from tests.servers import RedisServer

    info = machine()
    info.update(celery=version("celery"), kombu=version("kombu"), py_amqp=version("amqp"))
    rabbit = RabbitServer()
    redis = RedisServer(appendonly=False)
    results: dict[str, Any] = {}
    try:
        with workdir("conveyor-bench-amqp-", args.keep) as (_logdir, procs):
            rabbit.start()
            redis.start()
            print(f"RabbitMQ on {rabbit.url}, Redis (results) on {redis.url}", file=sys.stderr)
            sides = only(
                [
                    ConveyorSide(rabbit.url, redis.url, procs),
                    CelerySide(rabbit.url, redis.url, procs),
                ],
                args.only,
            )
            assert rabbit.process is not None
            results = on_redis.run(sides, args, rabbit.process.pid)  # type: ignore[arg-type]  # the RabbitMQ node stands where the Redis report names its server
    finally:
        redis.cleanup()
        rabbit.cleanup()
    if not save_results(args, info, results):
        return 0
    print_header(
        "RabbitMQ: Conveyor vs Celery",
        info,
        f"RabbitMQ 3.10 (Debian), results in Redis; Conveyor {info['conveyor']}, "
        f"Celery {info['celery']} (kombu {info['kombu']}), py-amqp {info['py_amqp']}",
    )
    print(on_redis.report(results["Conveyor"], results["Celery"], args, "RabbitMQ node"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
