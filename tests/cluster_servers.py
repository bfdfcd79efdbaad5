"""A Redis Cluster for tests: three primaries and three replicas (``redis-server
--cluster-enabled yes`` six times, joined by ``redis-cli --cluster create --cluster-replicas 1``),
all processes of the test run on free loopback ports."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from tests.servers import RedisServer, free_port

#: Milliseconds without an answer before a node is failed over (small: tests wait for it).
NODE_TIMEOUT_MS = 1000


class ClusterDeployment:
    """Six cluster nodes. ``kill_primary()`` and ``restart_killed()`` drive failovers: the
    replica of a killed primary takes its slots, and the restarted node comes back as a replica."""

    def __init__(self, primaries: int = 3) -> None:
        self.primaries = primaries
        self.nodes: list[RedisServer] = []
        self.killed: list[RedisServer] = []

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{n.port}" for n in self.nodes[:2])
        return f"redis+cluster://{hosts}/0"

    def start(self, timeout: float = 60.0) -> None:
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError("redis-cli is not installed (scripts/test installs redis-tools)")
        for _ in range(2 * self.primaries):
            node = RedisServer(appendonly=True, extra_args=())
            node.extra_args = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                str(node.dir / "nodes.conf"),
                "--cluster-port",
                str(free_port()),
                "--cluster-node-timeout",
                str(NODE_TIMEOUT_MS),
                "--appendfsync",
                "everysec",
            ]
            node.start()
            self.nodes.append(node)
        subprocess.run(
            [
                cli,
                "--cluster",
                "create",
                *(f"127.0.0.1:{n.port}" for n in self.nodes),
                "--cluster-replicas",
                "1",
                "--cluster-yes",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=timeout,
        )
        self.wait_healthy(timeout)

    def client(self, node: RedisServer) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=node.port, socket_timeout=2)

    def _info(self, node: RedisServer) -> dict[str, str]:
        with self.client(node) as client:
            text = client.execute_command("CLUSTER", "INFO")
        raw = text.decode() if isinstance(text, bytes) else str(text)
        return dict(line.split(":", 1) for line in raw.split() if ":" in line)

    def healthy(self) -> bool:
        """Every running node says the cluster is ok, every slot served, and each primary has
        a replica in sync."""
        alive = [n for n in self.nodes if n not in self.killed]
        try:
            infos = [self._info(n) for n in alive]
            primaries = self.primary_ports()
        except (redis.RedisError, OSError):
            return False
        if not all(i.get("cluster_state") == "ok" for i in infos):
            return False
        if not all(i.get("cluster_slots_ok") == "16384" for i in infos):
            return False
        if len(primaries) != self.primaries:
            return False
        return self._replicas_in_sync() >= len(alive) - self.primaries

    def _replicas_in_sync(self) -> int:
        synced = 0
        for node in self.nodes:
            if node in self.killed:
                continue
            try:
                with self.client(node) as client:
                    info = client.info("replication")
            except (redis.RedisError, OSError):
                continue
            if info.get("role") == "slave" and info.get("master_link_status") == "up":
                synced += 1
        return synced

    def wait_healthy(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.healthy():
                return
            time.sleep(0.1)  # polling external processes; bounded by the deadline
        raise RuntimeError("the Redis Cluster did not become healthy in time")

    def primary_ports(self) -> list[int]:
        """The ports of the primaries that serve slots, as a running node sees them."""
        for node in self.nodes:
            if node in self.killed:
                continue
            with self.client(node) as client:
                slots = client.execute_command("CLUSTER", "SLOTS")
            return sorted({int(entry[2][1]) for entry in slots})
        raise RuntimeError("no node is running")

    def node(self, port: int) -> RedisServer:
        return next(n for n in self.nodes if n.port == port)

    def node_of(self, key: str) -> int:
        """The port of the primary serving ``key``'s slot."""
        with self.client(self._running()) as client:
            slot = int(client.execute_command("CLUSTER", "KEYSLOT", key))
            for start, end, primary, *_ in client.execute_command("CLUSTER", "SLOTS"):
                if int(start) <= slot <= int(end):
                    return int(primary[1])
        raise RuntimeError(f"no node serves the slot of {key!r}")

    def _running(self) -> RedisServer:
        return next(n for n in self.nodes if n not in self.killed)

    def kill_primary(self, port: int, timeout: float = 30.0) -> None:
        """SIGKILL the primary on ``port`` and wait until its replica took its slots."""
        node = self.node(port)
        node.kill()
        self.killed.append(node)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                ports = self.primary_ports()
                infos = [self._info(n) for n in self.nodes if n not in self.killed]
            except (redis.RedisError, OSError):
                ports, infos = [port], []
            if port not in ports and all(i.get("cluster_state") == "ok" for i in infos):
                return
            time.sleep(0.1)  # waiting on the cluster's election; bounded by the deadline
        raise RuntimeError("no failover happened in time")

    def restart_killed(self, timeout: float = 60.0) -> None:
        """Start the killed nodes again (with their nodes.conf): they rejoin as replicas."""
        while self.killed:
            self.killed[-1].start()
            self.killed.pop()
        self.wait_healthy(timeout)

    def node_id(self, port: int) -> str:
        with self.client(self.node(port)) as client:
            raw = client.execute_command("CLUSTER", "MYID")
        return raw.decode() if isinstance(raw, bytes) else str(raw)

    def migrate_slot(self, key: str, to_port: int, batch: int = 10) -> int:
        """Move the slot of ``key`` to the primary on ``to_port`` as ``redis-cli --cluster
        reshard`` does (IMPORTING, MIGRATING, MIGRATE of its keys a few at a time, then the
        new owner everywhere), while clients go on using it; returns how many keys moved."""
        from_port = self.node_of(key)
        source, target = self.node(from_port), self.node(to_port)
        source_id, target_id = self.node_id(from_port), self.node_id(to_port)
        moved = 0
        with self.client(source) as src, self.client(target) as dst:
            slot = int(src.execute_command("CLUSTER", "KEYSLOT", key))
            dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
            src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
            while True:
                keys = src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, batch)
                if not keys:
                    break
                src.execute_command("MIGRATE", "127.0.0.1", to_port, "", 0, 5000, "KEYS", *keys)
                moved += len(keys)
            for port in self.primary_ports():
                with self.client(self.node(port)) as client:
                    client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        return moved

    def cleanup(self) -> None:
        for node in self.nodes:
            node.cleanup()


@contextmanager
def running_cluster() -> Iterator[ClusterDeployment]:
    """A started three-primary cluster for the ``with`` block; removed after."""
    cluster = ClusterDeployment()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.cleanup()
