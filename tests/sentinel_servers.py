"""A Redis Sentinel deployment for tests: one primary, one replica and three sentinels, all
processes of the test run on free loopback ports."""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from tests.servers import RedisServer, free_port

SERVICE = "mymaster"


class SentinelProcess:
    """One ``redis-sentinel`` process with its own config file (sentinels rewrite it)."""

    def __init__(self, directory: Path, primary_port: int, quorum: int) -> None:
        binary = shutil.which("redis-sentinel")
        if binary is None:
            raise RuntimeError("redis-sentinel is not installed (scripts/test installs it)")
        self.binary = binary
        self.port = free_port()
        self.config = directory / f"sentinel-{self.port}.conf"
        self.config.write_text(
            f"port {self.port}\n"
            "bind 127.0.0.1\n"
            f"dir {directory}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {primary_port} {quorum}\n"
            f"sentinel down-after-milliseconds {SERVICE} 1000\n"
            f"sentinel failover-timeout {SERVICE} 4000\n"
            f"sentinel parallel-syncs {SERVICE} 1\n"
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, str(self.config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(10)
        self.process = None


class SentinelDeployment:
    """Primary + replica + three sentinels (quorum 2). ``kill_primary()`` and
    ``restart_killed()`` drive failovers; the sentinels make the restarted node a replica."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="conveyor-sentinel-"))
        self.nodes: list[RedisServer] = []
        self.sentinels: list[SentinelProcess] = []
        self.killed: list[RedisServer] = []

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{SERVICE}/0"

    def start(self, timeout: float = 30.0) -> None:
        primary = RedisServer(appendonly=True)
        primary.start()
        replica = RedisServer(
            appendonly=True, extra_args=["--replicaof", "127.0.0.1", str(primary.port)]
        )
        replica.start()
        self.nodes = [primary, replica]
        self.sentinels = [SentinelProcess(self.dir, primary.port, quorum=2) for _ in range(3)]
        for sentinel in self.sentinels:
            sentinel.start()
        self.wait_healthy(timeout)

    def primary_port(self) -> int:
        """The primary's port as the first sentinel that answers sees it."""
        for sentinel in self.sentinels:
            try:
                with sentinel.client() as client:
                    _, port = client.sentinel_get_master_addr_by_name(SERVICE)
                    return int(port)
            except (redis.RedisError, TypeError):
                continue
        raise RuntimeError("no sentinel answers")

    def node(self, port: int) -> RedisServer:
        return next(n for n in self.nodes if n.port == port)

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Until every sentinel knows the two others and a replica that is in sync, so that a
        failover can be authorised and has somewhere to go."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(self._healthy(s) for s in self.sentinels):
                return
            time.sleep(0.1)  # polling external processes; bounded by the deadline
        raise RuntimeError("the sentinel deployment did not become healthy in time")

    def _healthy(self, sentinel: SentinelProcess) -> bool:
        try:
            with sentinel.client() as client:
                master = client.sentinel_master(SERVICE)
                replicas = client.sentinel_slaves(SERVICE)
                others = client.sentinel_sentinels(SERVICE)
        except redis.RedisError:
            return False
        flags = str(master.get("flags", ""))
        good = [
            r
            for r in replicas
            if "down" not in str(r.get("flags", ""))
            and r.get("master-link-status") == "ok"
            and "disconnected" not in str(r.get("flags", ""))
        ]
        return flags == "master" and len(others) >= 2 and len(good) >= 1

    def kill_primary(self, timeout: float = 30.0) -> int:
        """SIGKILL the primary and wait until the sentinels name a new one; returns its port."""
        old = self.primary_port()
        node = self.node(old)
        node.kill()
        self.killed.append(node)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                new = self.primary_port()
            except RuntimeError:
                new = old
            if new != old:
                return new
            time.sleep(0.1)  # waiting on the sentinels' election; bounded by the deadline
        raise RuntimeError("no failover happened in time")

    def restart_killed(self, timeout: float = 30.0) -> None:
        """Start the killed nodes again; the sentinels turn them into replicas."""
        while self.killed:
            self.killed.pop().start()
        self.wait_healthy(timeout)

    def cleanup(self) -> None:
        for sentinel in self.sentinels:
            sentinel.stop()
        for node in self.nodes:
            node.cleanup()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextmanager
def running_sentinels() -> Iterator[SentinelDeployment]:
    deployment = SentinelDeployment()
    try:
        deployment.start()
        yield deployment
    finally:
        deployment.cleanup()


__all__ = ["SERVICE", "SentinelDeployment", "running_sentinels"]
