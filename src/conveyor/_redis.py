"""Redis plumbing shared by the broker, the result store, their key/value storage and their
settlement (so it lives beside them, not inside one): clients, errors, script calls, pipelines.

Clients come from ``redis.Redis.from_url`` (``redis://``, ``rediss://``, ``unix://``) with a
connection pool (thread-safe; redis-py resets it in a forked child), a health check, keepalive,
and a short retry on connection errors so the first call after a server restart reconnects
(a command whose reply was lost with the connection may then run twice: at-least-once).
Blocking calls (BLPOP, BLMOVE) block for at most :func:`block_limit` seconds at a time, well
below the socket timeout, so a blocked call is never mistaken for a dead server. Script calls
and the small pipelines of a worker's hot path go through :class:`Connections` (same settings,
less client overhead per round trip).

A Redis Cluster URL (``redis+cluster://``) gives a ``redis.RedisCluster``: it finds the node of
each key's slot, follows MOVED and ASK, waits out TRYAGAIN and a failover (CLUSTERDOWN) with
retries, and refreshes its slot map. Those errors are replies to a command that did not run,
so following them never runs a script twice; a connection lost during a script may (as on one
server: at-least-once). Its calls go through ``conveyor._redis_cluster.ClusterConnections``.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from functools import partial
from types import TracebackType
from typing import Any
from urllib.parse import unquote

import hiredis
import redis
from redis.backoff import ExponentialWithJitterBackoff, NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import NoScriptError, RedisClusterException, RedisError, ResponseError
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


#: A Redis command with its arguments, e.g. ``("SET", key, value)``.
Command = tuple[Any, ...]


class Script:
    """A Lua script, called by its SHA1 (EVALSHA) and loaded again after NOSCRIPT (a server
    restart or ``SCRIPT FLUSH``)."""

    def __init__(self, client: Client, source: str) -> None:
        self._client = client
        self.source = source
        self.sha = hashlib.sha1(source.encode("utf-8")).hexdigest()

    def command(self, keys: Sequence[str], args: Sequence[Any]) -> Command:
        return ("EVALSHA", self.sha, len(keys), *keys, *args)

    def load(self) -> None:
        """Load the script (on every primary of a cluster)."""
        self._client.script_load(self.source)


class Calls:
    """Commands and script calls to send in one round trip (:meth:`Connections.execute`)."""

    __slots__ = ("commands", "hidden", "later", "scripts", "targets")

    def __init__(self) -> None:
        self.commands: list[Command] = []
        #: Script calls sent once the others are done (on Cluster they may go to other nodes,
        #: e.g. a wake-up after a publish); their replies are not returned.
        self.later: list[tuple[Script, Command]] = []
        self.scripts: dict[int, Script] = {}
        #: Commands without keys that go to the node of a key on Cluster (index -> key), e.g.
        #: WAIT after a publish; on one server they go with the rest. On Cluster one that
        #: fails (its node is no longer the key's primary) replies 0: nothing confirmed.
        self.targets: dict[int, str] = {}
        #: How many replies at the end are not returned (the later calls, once appended).
        self.hidden = 0

    def add(self, commands: Iterable[Command]) -> None:
        self.commands.extend(commands)

    def script(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> None:
        """A call of ``script`` on ``keys`` (all in one slot on Cluster: the call runs on
        their node) with ``args``."""
        self.scripts[len(self.commands)] = script
        self.commands.append(script.command(keys, args))

    def script_later(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> None:
        """A script call sent after the others have run (:attr:`later`)."""
        self.later.append((script, script.command(keys, args)))

    def __len__(self) -> int:
        return len(self.commands)


class Connections:
    """Connections of one process for the calls a worker makes for every task (scripts and
    small pipelines): a call packs its commands into one write and reads their replies, without
    the client's per-call pool checkout (a ``getpid`` and a readiness poll each way), locks and
    wrappers - about half of a round trip's CPU time on the client.

    Connections are made with the client pool's settings, reused by any thread (one at a time)
    and kept until :meth:`close`; a forked child makes its own and never touches its parent's.
    Connection errors are retried as the client's retry policy says (the command may then run
    twice: at-least-once, as with the client); any failure during a call disconnects its
    connection, so a late reply is never read by the next call.
    """

    def __init__(self, client: redis.Redis) -> None:
        self._pool = client.connection_pool
        # redis-py's send_packed_command connects without asking the sentinels (its own pool
        # checkout connects first), so connections of a Sentinel pool are connected here.
        self._connect_first = isinstance(self._pool, SentinelConnectionPool)
        self._retry: Retry = client.get_retry() or Retry(NoBackoff(), 0)
        self._pid = os.getpid()
        self._idle: list[Any] = []
        self._made: list[Any] = []
        self._lock = threading.Lock()

    def _take(self) -> Any:
        pid = os.getpid()
        if pid != self._pid:  # forked: the parent's connections are not ours to use
            self._pid, self._idle, self._made = pid, [], []
            self._lock = threading.Lock()
        try:
            return self._idle.pop()
        except IndexError:
            pass
        conn = self._pool.make_connection()
        with self._lock:
            self._made.append(conn)
        return conn

    def _exchange(self, commands: Sequence[Command]) -> list[Any]:
        conn = self._take()
        try:
            return self._retry.call_with_retry(
                partial(_exchange, conn, commands, self._connect_first),
                lambda error: conn.disconnect(),
            )
        except BaseException:
            conn.disconnect()  # it reconnects on its next use
            raise
        finally:
            self._idle.append(conn)

    def send(self, commands: Sequence[Command]) -> Any:
        """Write ``commands`` on a connection (no retry) and return it for :meth:`receive`."""
        conn = self._take()
        try:
            if self._connect_first:
                conn.connect()
            conn.send_packed_command(packed(conn, commands))
        except BaseException:
            conn.disconnect()
            self._idle.append(conn)
            raise
        return conn

    def receive(self, conn: Any, count: int) -> list[Any]:
        """Read the ``count`` replies of :meth:`send` (error replies as values)."""
        try:
            replies: list[Any] = []
            for _ in range(count):
                try:
                    replies.append(conn.read_response())
                except ResponseError as exc:  # read in full: the connection stays in step
                    replies.append(exc)
            return replies
        except BaseException:
            conn.disconnect()  # it reconnects on its next use
            raise
        finally:
            self._idle.append(conn)

    def execute(self, calls: Calls) -> list[Any]:
        """Send ``calls`` in one round trip and return their replies. A script call that met
        NOSCRIPT is loaded and run again on its own; then the first error reply is raised."""
        if calls.later:  # one connection: its commands run in order anyway
            calls = _with_later(calls)
        if not calls.commands:
            return []
        return self._settled(calls, self._exchange(calls.commands))

    def _settled(self, calls: Calls, replies: list[Any]) -> list[Any]:
        """The replies of ``calls`` once the script calls that met NOSCRIPT ran again; the
        first error reply raised."""
        for index, reply in enumerate(replies):
            script = calls.scripts.get(index)
            if isinstance(reply, NoScriptError) and script is not None:
                script.load()
                reply = replies[index] = self._exchange([calls.commands[index]])[0]
            if isinstance(reply, Exception):
                raise reply
        return replies[: len(replies) - calls.hidden]

    def stream(self, calls: Calls) -> Stream:
        """A :class:`Stream` of ``calls`` (no later calls): the commands added to it are
        sent as they come, so the server runs the first while the caller builds the next."""
        assert not calls.later
        return Stream(self, calls)

    def call(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run one script call (one round trip)."""
        calls = Calls()
        calls.script(script, keys, args)
        return self.execute(calls)[0]

    def close(self) -> None:
        """Disconnect every connection made in this process (they reconnect if used again)."""
        if self._pid != os.getpid():
            return
        with self._lock:
            made = list(self._made)
        for conn in made:
            conn.disconnect()


class Stream:
    """Commands of one :class:`Calls` written to one connection as the caller adds them
    (:meth:`send`), their replies read at the end (:meth:`finish`): what
    :meth:`Connections.execute` returns for them, with the server's work overlapping the
    caller's. A connection error on the way sends them all again through ``execute`` (and its
    retries), so every command must be safe to run twice, as there."""

    def __init__(self, connections: Connections, calls: Calls) -> None:
        self._connections = connections
        self._calls = calls
        self._conn: Any = None
        self._sent = 0
        self._broken = False

    def send(self) -> None:
        """Write the commands added since the last call."""
        commands = self._calls.commands
        if self._broken or self._sent == len(commands):
            return
        connections = self._connections
        if self._conn is None:
            self._conn = connections._take()
        try:
            if connections._connect_first:
                self._conn.connect()
            self._conn.send_packed_command(packed(self._conn, commands[self._sent :]))
        except redis.ConnectionError:
            self._drop()
            self._broken = True  # finish() sends everything again
            return
        except BaseException:
            self._drop()
            raise
        self._sent = len(commands)

    def finish(self) -> list[Any]:
        """Send the rest, read every reply; as :meth:`Connections.execute`."""
        self.send()
        calls, connections = self._calls, self._connections
        if self._broken:
            return connections.execute(calls)
        conn = self._conn
        replies: list[Any] = []
        try:
            for _ in range(self._sent):
                try:
                    replies.append(conn.read_response())
                except ResponseError as exc:  # read in full: the connection stays in step
                    replies.append(exc)
        except redis.ConnectionError:
            self._drop()
            return connections.execute(calls)
        except BaseException:
            self._drop()
            raise
        connections._idle.append(conn)
        self._conn = None
        return connections._settled(calls, replies)

    def abort(self) -> None:
        """Give up (the caller failed while adding): drop the connection with whatever
        replies it still owes. What was sent may have run, as with any interrupted call."""
        self._drop()

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.disconnect()  # it reconnects on its next use
            self._connections._idle.append(self._conn)
            self._conn = None


def _with_later(calls: Calls) -> Calls:
    """``calls`` with its later calls appended (their replies hidden)."""
    joined = Calls()
    joined.commands = list(calls.commands)
    joined.scripts = dict(calls.scripts)
    joined.targets = dict(calls.targets)
    for script, command in calls.later:
        joined.scripts[len(joined.commands)] = script
        joined.commands.append(command)
    joined.hidden = len(calls.later)
    return joined


def packed(conn: Any, commands: Sequence[Command]) -> list[bytes]:
    """``commands`` in RESP, as ``conn`` would pack them (chunks for its
    ``send_packed_command``): hiredis does it in C, a sixth of the time redis-py's serializer
    takes for a publish's arguments (the same bytes: str as UTF-8, numbers as ``repr``)."""
    try:
        return [b"".join([hiredis.pack_command(command) for command in commands])]
    except TypeError:  # a type hiredis does not take: redis-py encodes it or says why not
        return list(conn.pack_commands(commands))


def _exchange(conn: Any, commands: Sequence[Command], connect_first: bool) -> list[Any]:
    if connect_first:
        conn.connect()
    conn.send_packed_command(packed(conn, commands))
    replies: list[Any] = []
    for _ in commands:
        try:
            replies.append(conn.read_response())
        except ResponseError as exc:  # read in full: the connection stays in step
            replies.append(exc)
    return replies
