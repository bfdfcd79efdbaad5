"""Redis plumbing shared by the broker, the result store, their key/value storage and their
settlement (so it lives beside them, not inside one): clients and their errors.

Clients come from ``redis.Redis.from_url`` (``redis://``, ``rediss://``, ``unix://``) with a
connection pool (thread-safe; redis-py resets it in a forked child), a health check, keepalive,
and a short retry on connection errors so the first call after a server restart reconnects
(a command whose reply was lost with the connection may then run twice: at-least-once).
Blocking calls (BLPOP, BLMOVE) block for at most :func:`block_limit` seconds at a time, well
below the socket timeout, so a blocked call is never mistaken for a dead server. Script calls
and the small pipelines of a worker's hot path go through ``conveyor._redis_calls`` (same
settings, less client overhead per round trip).

A Redis Cluster URL (``redis+cluster://``) gives a ``redis.RedisCluster``: it finds the node of
each key's slot, follows MOVED and ASK, waits out TRYAGAIN and a failover (CLUSTERDOWN) with
retries, and refreshes its slot map. Those errors are replies to a command that did not run,
so following them never runs a script twice; a connection lost during a script may (as on one
server: at-least-once). Its calls go through ``conveyor._redis_cluster.ClusterConnections``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any
from urllib.parse import unquote

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import RedisClusterException, RedisError
from redis.retry import Retry
from redis.sentinel import MasterNotFoundError, Sentinel, SentinelConnectionPool

from ._redis_urls import is_cluster_url, is_sentinel_url, parse_cluster_url, parse_sentinel_url
from .brokers.base import redact_url
from .exceptions import BrokerError, ConfigurationError, ConveyorError

DEFAULT_SOCKET_TIMEOUT = 10.0
MAX_BLOCK = 1.0
_SAME_SERVER_KEYS = ("host", "port", "path", "db", "username", "password")

#: A client of one server (plain or through Sentinel) or of a Redis Cluster.
Client = redis.Redis | RedisCluster


def connect(
    url: str, options: Mapping[str, Any] | None = None, error: type[ConveyorError] = BrokerError
) -> Client:
    """A client for ``url``. ``options`` may set ``socket_timeout``, ``socket_connect_timeout``,
    ``health_check_interval``, ``max_connections``, ``retries``, ``client_name`` and ``ssl_*``;
    for a Sentinel URL also ``master_name`` and ``sentinel_kwargs``
    (:mod:`conveyor._redis_urls`). A Cluster client connects at once: no reachable node, or
    a cluster whose slots are not all served, raises ``error``."""
    opts = dict(options or {})
    kwargs: dict[str, Any] = {
        "socket_timeout": float(opts.get("socket_timeout", DEFAULT_SOCKET_TIMEOUT)),
        "socket_connect_timeout": float(opts.get("socket_connect_timeout", 5.0)),
        "health_check_interval": int(opts.get("health_check_interval", 15)),
        # Connection errors only: a timeout may mean the command ran, so it is not repeated.
        "retry": Retry(
            ExponentialWithJitterBackoff(base=0.02, cap=0.5),
            int(opts.get("retries", 3)),
            supported_errors=(redis.ConnectionError,),
        ),
    }
    for name in ("max_connections", "client_name"):
        if opts.get(name) is not None:
            kwargs[name] = opts[name]
    if not url.startswith("unix:"):
        kwargs["socket_keepalive"] = True
    kwargs.update(_without_maintenance_notifications())
    kwargs.update({k: v for k, v in opts.items() if k.startswith("ssl_")})
    if is_sentinel_url(url):
        return _connect_sentinel(url, opts, kwargs)
    if is_cluster_url(url):
        return _connect_cluster(url, opts, kwargs, error)
    try:
        return redis.Redis.from_url(url, **kwargs)
    except ValueError:
        raise ConfigurationError(f"invalid Redis URL {redact_url(url)!r}") from None


def _without_maintenance_notifications() -> dict[str, Any]:
    """redis-py 7+ gives each connection handlers of Redis Enterprise's maintenance
    notifications that hold it in a reference cycle. A connection dropped without a
    disconnect then waits for the garbage collector, which may finalize its socket first
    (an "unclosed socket" ResourceWarning) instead of letting the connection close it.
    Conveyor does not use those notifications (they need RESP3)."""
    try:
        from redis.maint_notifications import MaintNotificationsConfig
    except ImportError:  # redis-py before 7: no such handlers
        return {}
    return {"maint_notifications_config": MaintNotificationsConfig(enabled=False)}


def _connect_sentinel(url: str, opts: Mapping[str, Any], kwargs: dict[str, Any]) -> redis.Redis:
    """A client of the primary that the sentinels of ``url`` name; after a failover its
    connections ask them again, so it follows the new primary by itself."""
    target = parse_sentinel_url(url, opts)
    sentinel_kwargs = dict(opts.get("sentinel_kwargs") or {})
    for name in ("socket_timeout", "socket_connect_timeout"):
        sentinel_kwargs.setdefault(name, kwargs[name])
    manager = Sentinel(list(target.sentinels), sentinel_kwargs=sentinel_kwargs)  # type: ignore[no-untyped-call, unused-ignore]  # unannotated before redis-py 8.2
    kwargs.pop("max_connections", None)  # the sentinel pool sizes itself
    client: redis.Redis = manager.master_for(  # type: ignore[no-untyped-call, unused-ignore]  # unannotated before redis-py 8.2
        target.service,
        db=target.db,
        username=target.username,
        password=target.password,
        ssl=target.ssl,
        **kwargs,
    )
    return client


def _connect_cluster(
    url: str, opts: Mapping[str, Any], kwargs: dict[str, Any], error: type[ConveyorError]
) -> RedisCluster:
    target = parse_cluster_url(url)
    retry = kwargs.pop("retry")
    kwargs.pop("health_check_interval", None)
    try:
        return RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in target.nodes],  # type: ignore[no-untyped-call, unused-ignore]  # unannotated before redis-py 8.2
            username=target.username,
            password=target.password,
            ssl=target.ssl,
            require_full_coverage=True,
            # Failovers take a few seconds (cluster-node-timeout + an election): MOVED, ASK,
            # TRYAGAIN and CLUSTERDOWN are retried with backoff across that time.
            retry=Retry(
                ExponentialWithJitterBackoff(base=0.05, cap=1.0),
                int(opts.get("cluster_retries", 12)),
            ),
            **kwargs,
        )
    except (RedisClusterException, RedisError) as exc:
        text = str(exc) or type(exc).__name__
        for secret in url_passwords(url):
            text = text.replace(secret, "***")
        raise error(f"Redis Cluster at {redact_url(url)}: {text}") from None
    finally:
        kwargs["retry"] = retry


def is_cluster(client: Client) -> bool:
    return isinstance(client, RedisCluster)


def block_limit(client: Client) -> float:
    """Longest single blocking call: below the socket timeout with room for the reply."""
    if isinstance(client, RedisCluster):
        node = client.get_default_node()  # type: ignore[no-untyped-call, unused-ignore]  # unannotated before redis-py 8.2
        conn = node.redis_connection if node is not None else None
        kwargs = conn.connection_pool.connection_kwargs if conn is not None else {}
    else:
        kwargs = client.connection_pool.connection_kwargs
    timeout = kwargs.get("socket_timeout")
    return MAX_BLOCK if timeout is None else max(0.01, min(MAX_BLOCK, timeout / 2))


def mget(client: Client, keys: Sequence[str | bytes]) -> list[Any]:
    """GET of every key in ``keys`` (in any slots: split per slot on Cluster)."""
    if isinstance(client, RedisCluster):
        return list(client.mget_nonatomic(list(keys)))
    return list(client.mget(list(keys)))


def same_server(a: Client, b: Client) -> bool:
    """True when both clients talk to the same server (or cluster) and database as the same
    user."""
    if isinstance(a, RedisCluster) or isinstance(b, RedisCluster):
        if not (isinstance(a, RedisCluster) and isinstance(b, RedisCluster)):
            return False
        ka, kb = _cluster_kwargs(a), _cluster_kwargs(b)
        same_user = all(ka.get(k) == kb.get(k) for k in ("username", "password"))
        return same_user and {n.name for n in a.get_nodes()} == {n.name for n in b.get_nodes()}  # type: ignore[no-untyped-call, unused-ignore]  # unannotated before redis-py 8.2
    pa, pb = a.connection_pool, b.connection_pool
    ka, kb = pa.connection_kwargs, pb.connection_kwargs
    if isinstance(pa, SentinelConnectionPool) or isinstance(pb, SentinelConnectionPool):
        if not (isinstance(pa, SentinelConnectionPool) and isinstance(pb, SentinelConnectionPool)):
            return False
        keys: tuple[str, ...] = ("db", "username", "password")
        if pa.service_name != pb.service_name or _sentinels(pa) != _sentinels(pb):
            return False
    else:
        keys = _SAME_SERVER_KEYS
    return pa.connection_class is pb.connection_class and all(ka.get(k) == kb.get(k) for k in keys)


def _cluster_kwargs(client: RedisCluster) -> dict[str, Any]:
    node = client.get_default_node()  # type: ignore[no-untyped-call, unused-ignore]  # unannotated before redis-py 8.2
    conn = node.redis_connection if node is not None else None
    return dict(conn.connection_pool.connection_kwargs) if conn is not None else {}


def _sentinels(pool: SentinelConnectionPool) -> set[tuple[object, object]]:
    return {
        (
            s.connection_pool.connection_kwargs.get("host"),
            s.connection_pool.connection_kwargs.get("port"),
        )
        for s in pool.sentinel_manager.sentinels
    }


def url_passwords(url: str) -> list[str]:
    """The passwords written in ``url`` (each part of a ``;``-joined URL), as written and
    decoded, to scrub them from error texts."""
    found: set[str] = set()
    for part in url.split(";"):
        _, sep, rest = part.partition("://")
        at = rest.rfind("@")
        if sep and at >= 0:
            _, colon, password = rest[:at].partition(":")
            if colon and password:
                found |= {password, unquote(password)}
    return sorted(found, key=len, reverse=True)


class ErrorMapper:
    """Context manager turning redis-py errors into ``error`` with the URL redacted."""

    def __init__(self, error: type[ConveyorError], url: str, what: str) -> None:
        self._error = error
        self._where = f"{what} at {redact_url(url)}"
        self._secrets = url_passwords(url)

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if isinstance(exc, RedisError):
            text = str(exc) or type(exc).__name__
            if isinstance(exc, MasterNotFoundError):  # its text ends in a repr of the client
                text = (
                    f"{text.split(' : ', 1)[0]}: no sentinel of the URL answered with that "
                    "primary (are the sentinels running, and is the service name right?)"
                )
            for secret in self._secrets:
                text = text.replace(secret, "***")
            raise self._error(f"{self._where}: {text}") from exc
