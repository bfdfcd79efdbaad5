"""Redis URLs: the schemes Redis serves, Sentinel URLs (which sentinels to ask, for which
primary, as which user) and Cluster URLs (which nodes to start from). No redis-py import
here, so registries can name the schemes.

Two spellings name a Sentinel-managed primary:

- Conveyor's, one URL: ``redis+sentinel://[user:password@]host1:26379,host2:26379/mymaster/0``
  (``rediss+sentinel://`` for TLS to the primary). The path is the primary's service name as the
  sentinels know it, then the database number (default 0). The password is the primary's.
- Celery's (Kombu's): ``sentinel://:password@host1:26379;sentinel://host2:26379/0`` with the
  service name in the transport options' ``master_name``.

Sentinels that need a password of their own get it from the transport options'
``sentinel_kwargs`` (``{"password": ...}``), as in Celery.

A Redis Cluster is ``redis+cluster://[user:password@]host1:6379,host2:6379[/0]``
(``rediss+cluster://`` for TLS): any reachable nodes of the cluster (redis-py's
``RedisCluster`` discovers the others and the slot map from them; one is enough, more let the
client start while some are down). A cluster has database 0 only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from .exceptions import ConfigurationError

SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel", "sentinel")
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
#: Every URL scheme of the Redis broker and result store.
REDIS_SCHEMES = ("redis", "rediss", "unix", *SENTINEL_SCHEMES, *CLUSTER_SCHEMES)
DEFAULT_SENTINEL_PORT = 26379
DEFAULT_PORT = 6379


@dataclass(frozen=True)
class SentinelTarget:
    """The primary ``service`` as known to ``sentinels``, and how to talk to it."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    ssl: bool = False


@dataclass(frozen=True)
class ClusterTarget:
    """The startup ``nodes`` of a Redis Cluster, and how to talk to them."""

    nodes: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = None
    ssl: bool = False


def is_cluster_url(url: str) -> bool:
    return url.split("://", 1)[0].lower() in CLUSTER_SCHEMES if "://" in url else False


def parse_cluster_url(url: str) -> ClusterTarget:
    """The :class:`ClusterTarget` of ``url``. Raises :class:`ConfigurationError` naming what is
    wrong (no node, a port that is not a number, a database other than 0)."""
    scheme, _, rest = url.partition("://")
    netloc, _, path = rest.partition("/")
    netloc = netloc.split("?", 1)[0]
    userinfo, at, hosts = netloc.rpartition("@")
    username, password = _credentials(userinfo if at else "")
    nodes = tuple(_host_port(h, DEFAULT_PORT, "cluster node") for h in hosts.split(",") if h)
    if not nodes:
        raise ConfigurationError(
            "a Redis Cluster URL names at least one node: redis+cluster://host1:6379,host2:6379"
        )
    db = path.split("?", 1)[0].strip("/")
    if db not in ("", "0"):
        raise ConfigurationError(
            f"a Redis Cluster has only database 0, not {db!r}: redis+cluster://host:6379/0"
        )
    return ClusterTarget(nodes, username, password, scheme.lower() == "rediss+cluster")


def is_sentinel_url(url: str) -> bool:
    return url.split("://", 1)[0].lower() in SENTINEL_SCHEMES if "://" in url else False


def parse_sentinel_url(url: str, options: Mapping[str, Any] | None = None) -> SentinelTarget:
    """The :class:`SentinelTarget` of ``url``; ``options`` supplies ``master_name`` for
    Celery's spelling. Raises :class:`ConfigurationError` naming what is missing."""
    scheme = url.split("://", 1)[0].lower()
    if scheme == "sentinel":
        return _parse_celery_form(url, options or {})
    rest = url.split("://", 1)[1]
    netloc, _, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    username, password = _credentials(userinfo if at else "")
    parts = [p for p in path.split("?", 1)[0].split("/") if p]
    service = unquote(parts[0]) if parts else str((options or {}).get("master_name") or "")
    if not service:
        raise ConfigurationError(
            "a Redis Sentinel URL names the primary's service: "
            "redis+sentinel://host1:26379,host2:26379/mymaster/0"
        )
    db = _db(parts[1] if len(parts) > 1 else "0")
    return SentinelTarget(
        sentinels=tuple(_host_port(h) for h in hosts.split(",") if h),
        service=service,
        db=db,
        username=username,
        password=password,
        ssl=scheme == "rediss+sentinel",
    )


def _parse_celery_form(url: str, options: Mapping[str, Any]) -> SentinelTarget:
    service = options.get("master_name")
    if not service:
        raise ConfigurationError(
            "sentinel:// URLs need transport option master_name (e.g. "
            "broker_transport_options={'master_name': 'mymaster'}), or use "
            "redis+sentinel://host1:26379,host2:26379/mymaster/0"
        )
    sentinels: list[tuple[str, int]] = []
    username = password = None
    db = 0
    for part in url.split(";"):
        part = part.strip()
        if not part:
            continue
        if not part.lower().startswith("sentinel://"):
            raise ConfigurationError("every part of a sentinel:// URL starts with sentinel://")
        try:
            split = urlsplit(part)
            port = split.port or DEFAULT_SENTINEL_PORT
        except ValueError:
            raise ConfigurationError("a sentinel:// URL has a port that is not a number") from None
        sentinels.append((split.hostname or "127.0.0.1", port))
        if split.password is not None:
            username = unquote(split.username) if split.username else None
            password = unquote(split.password)
        if split.path.strip("/"):
            db = _db(split.path.strip("/"))
    return SentinelTarget(tuple(sentinels), str(service), db, username, password)


def _credentials(userinfo: str) -> tuple[str | None, str | None]:
    if not userinfo:
        return None, None
    user, colon, password = userinfo.partition(":")
    return (unquote(user) or None), (unquote(password) if colon else None)


def _host_port(
    text: str, default: int = DEFAULT_SENTINEL_PORT, what: str = "sentinel address"
) -> tuple[str, int]:
    if text.startswith("["):  # [::1]:26379
        host, _, after = text[1:].partition("]")
        port = after.removeprefix(":")
    else:
        host, _, port = text.partition(":")
    if not port:
        return host or "127.0.0.1", default
    if not port.isdigit():
        raise ConfigurationError(f"{what} {text!r}: the port is not a number")
    return host or "127.0.0.1", int(port)


def _db(text: str) -> int:
    if not text.isdigit():
        raise ConfigurationError(f"Redis database {text!r} in a Sentinel URL is not a number")
    return int(text)
