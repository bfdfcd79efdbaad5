"""Checks of the servers behind the broker and the result store: Redis memory policy and
persistence, SQLite file location, file system and journal mode; PostgreSQL (:mod:`.postgres`)
and RabbitMQ (:mod:`.rabbitmq`) in modules of their own."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._redis_urls import REDIS_SCHEMES
from .._sqlite import path_from_url
from ..brokers import redact_url, scheme_of
from .findings import Finding, error, info, ok, warning
from .postgres import postgres_findings
from .rabbitmq import rabbitmq_findings

if TYPE_CHECKING:
    from ..app import Conveyor

#: File systems on which SQLite's locks cannot be trusted.
NETWORK_FILE_SYSTEMS = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "afs", "glusterfs", "ceph"}


POSTGRES_SCHEMES = ("postgresql", "postgres")
AMQP_SCHEMES = ("amqp", "amqps", "pyamqp")


def storage_checks(app: Conveyor, *, quick: bool = False) -> list[Finding]:
    """``quick``: leave out what takes a while (RabbitMQ's alarm probe waits a second)."""
    findings: list[Finding] = []
    urls = {"broker": app.broker_url}
    if app.result_backend_url != app.broker_url:
        urls["result store"] = app.result_backend_url
    for role, url in urls.items():
        scheme = scheme_of(url)
        if scheme in REDIS_SCHEMES:
            options = (
                app.conf.broker_transport_options
                if role == "broker"
                else app.conf.result_backend_transport_options
            )
            findings += redis_findings(role, url, options)
            if role == "broker":
                findings += ingress_findings(app)
        elif scheme == "sqlite":
            findings += sqlite_findings(role, url)
        elif scheme in POSTGRES_SCHEMES:
            owner = app.broker if role == "broker" else app.results
            db = getattr(owner, "db", None)  # PostgresBroker / PostgresResultStore
            if db is not None:
                findings += postgres_findings(role, db)
        elif scheme in AMQP_SCHEMES and role == "broker":
            findings += rabbitmq_findings(app, probe_alarms=not quick)
        elif scheme == "memory":
            findings.append(
                warning(
                    role,
                    f"the {role} is memory://: it lives in one process, so nothing reaches "
                    "workers in other processes and everything is lost at exit",
                    "use redis:// or sqlite:/// outside tests",
                )
            )
    return findings


def redis_findings(role: str, url: str, options: Mapping[str, Any] | None = None) -> list[Finding]:
    """Eviction and persistence of the Redis server at ``url``: of every primary on a Redis
    Cluster (each holds its own queues)."""
    import redis  # optional dependency (the redis extra), needed only for Redis URLs
    from redis.cluster import RedisCluster

    from .._redis import connect

    where = f"{role} Redis {redact_url(url)}"
    check = f"{role}: redis"
    servers: list[tuple[str, dict[str, Any]]] = []
    with connect(url, {"socket_timeout": 5, **(options or {})}) as client:
        try:
            if isinstance(client, RedisCluster):
                primaries: list[Any] = client.get_primaries()  # type: ignore[no-untyped-call, unused-ignore]  # unannotated before redis-py 8.2
                for node in primaries:
                    servers.append(
                        (f"{where} (primary {node.host}:{node.port})", _config(client, node))
                    )
            else:
                servers.append((where, _config(client)))
        except redis.ResponseError as exc:  # CONFIG renamed or disabled (managed Redis)
            return [
                info(
                    check,
                    f"{where}: cannot read its configuration ({exc})",
                    "check by hand: maxmemory-policy noeviction, appendonly yes",
                )
            ]
    return [finding for name, config in servers for finding in _redis_config(check, name, config)]


def ingress_findings(app: Conveyor) -> list[Finding]:
    """Entries of the Redis broker's ingress list that named no queue: the scripts set them
    aside rather than drop them (docs/reliability.md); no Conveyor producer writes one."""
    from ..brokers.redis import RedisBroker  # the redis extra: a Redis URL has it

    broker = app.broker
    if not isinstance(broker, RedisBroker):
        return []
    check = "broker: redis ingress"
    count = broker.unroutable()
    if not count:
        return [ok(check, "no ingress entries were set aside")]
    key = broker.keys.unroutable
    return [
        warning(
            check,
            f"{count} entries pushed on the ingress list named no queue and were set aside on "
            f"{key} (the last 1,000 are kept): something other than a Conveyor producer "
            "wrote them, or they were damaged",
            f"LRANGE {key} 0 -1 shows them; DEL {key} once understood",
        )
    ]


def _config(client: Any, node: Any = None) -> dict[str, Any]:
    """The settings the promises depend on, of ``client``'s server (or of one Cluster node)."""
    target = {} if node is None else {"target_nodes": node}
    config: dict[str, Any] = {}
    for pattern in ("maxmemory*", "append*", "save"):
        config.update(client.config_get(pattern, **target))
    return config


def _redis_config(check: str, where: str, config: Mapping[str, Any]) -> list[Finding]:
    findings: list[Finding] = []
    policy = str(config.get("maxmemory-policy", ""))
    limited = str(config.get("maxmemory", "0")) != "0"
    if policy == "noeviction":
        findings.append(ok(check, f"{where}: maxmemory-policy noeviction"))
    else:
        level = error if limited else warning
        findings.append(
            level(
                check,
                f"{where}: maxmemory-policy is {policy}; when memory runs out Redis deletes "
                "keys: queued messages, leases and results vanish without a trace",
                "CONFIG SET maxmemory-policy noeviction (and the same line in redis.conf): "
                "a full Redis then refuses new messages with an error instead",
            )
        )
    if config.get("appendonly") != "yes":
        snapshots = str(config.get("save", "")) or "none"
        findings.append(
            warning(
                check,
                f"{where}: appendonly is off (RDB snapshots: {snapshots}); a restart or crash "
                "loses every message and result written since the last snapshot",
                "CONFIG SET appendonly yes; appendfsync everysec (at most 1 s lost) or always "
                "(nothing lost, slower); then CONFIG REWRITE",
            )
        )
    elif config.get("appendfsync") == "no":
        findings.append(
            warning(
                check,
                f"{where}: appendfsync no leaves flushing to the OS (about 30 s can be lost)",
                "CONFIG SET appendfsync everysec (or always)",
            )
        )
    else:
        findings.append(ok(check, f"{where}: AOF on, appendfsync {config.get('appendfsync', '?')}"))
    return findings


def sqlite_findings(role: str, url: str) -> list[Finding]:
    check = f"{role}: sqlite"
    path = path_from_url(url)
    findings: list[Finding] = []
    after_scheme = url.partition("://")[2]
    if not after_scheme.startswith("//"):
        findings.append(
            warning(
                check,
                f"{role} {url!r} is relative to the current directory (here {path}): a "
                "worker or producer started elsewhere uses another, empty file",
                f"use an absolute path: sqlite:///{path}",
            )
        )
    fs_type = file_system_of(path)
    if fs_type in NETWORK_FILE_SYSTEMS or fs_type.startswith("fuse"):
        findings.append(
            error(
                check,
                f"{path} is on a {fs_type} file system: SQLite's locks are not reliable there "
                "(lost or doubled tasks, corrupt files)",
                "keep the file on a local disk of the one host all workers run on, or use Redis",
            )
        )
    elif fs_type == "tmpfs" or str(path).startswith(("/tmp/", "/dev/shm/")):
        findings.append(
            warning(
                check,
                f"{path} is in temporary storage ({fs_type}): reboots and tmp cleaners "
                "delete it, queued messages and results with it",
                "move it to a persistent directory, e.g. /var/lib/<project>/conveyor.sqlite3",
            )
        )
    if not path.exists():
        findings.append(
            info(check, f"{path} does not exist yet (created by the first worker or send)")
        )
        return findings
    if not os.access(path, os.R_OK | os.W_OK) or not os.access(path.parent, os.W_OK):
        findings.append(
            error(
                check,
                f"{path} or its directory is not writable by this user",
                "give every worker and producer user write access to the file and directory "
                "(SQLite writes -wal and -shm files next to it)",
            )
        )
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            mode = str(conn.execute("PRAGMA journal_mode").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return [*findings, error(check, f"cannot read {path}: {exc}", "check the file")]
    if mode.lower() != "wal":
        findings.append(
            error(
                check,
                f"{path} is in journal mode {mode}, not WAL: readers block writers, workers "
                "stall on each other",
                f"sqlite3 {path} 'PRAGMA journal_mode=WAL' (workers set it when they open "
                "the file; a file system without shared memory refuses it)",
            )
        )
    else:
        findings.append(ok(check, f"{path}: WAL, on a local {fs_type or 'unknown'} file system"))
    return findings


def file_system_of(path: Path) -> str:
    """The type of the file system holding ``path`` (longest mount point of /proc/mounts);
    empty when unknown."""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return ""
    target = str(path.resolve())
    best, kind = "", ""
    for line in mounts:
        parts = line.split()
        if len(parts) < 3:
            continue
        point = parts[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) > len(best):
            best, kind = point, parts[2]
    return kind
