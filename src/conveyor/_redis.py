"""Redis plumbing shared by the broker and the result store: clients, errors, Lua scripts.

Clients come from ``redis.Redis.from_url`` (``redis://``, ``rediss://``, ``unix://``) with a
connection pool (thread-safe; redis-py resets it in a forked child), a health check, keepalive,
and a short retry on connection errors so the first call after a server restart reconnects
(a command whose reply was lost with the connection may then run twice: at-least-once).
Blocking calls (BLPOP, BLMOVE) block for at most :func:`block_limit` seconds at a time, well
below the socket timeout, so a blocked call is never mistaken for a dead server.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from importlib.resources import files
from types import TracebackType
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.client import Pipeline
from redis.exceptions import NoScriptError, RedisError
from redis.retry import Retry

from .brokers.base import redact_url
from .exceptions import ConfigurationError, ConveyorError

DEFAULT_SOCKET_TIMEOUT = 10.0
MAX_BLOCK = 1.0
_SAME_SERVER_KEYS = ("host", "port", "path", "db", "username", "password")


def connect(url: str, options: Mapping[str, Any] | None = None) -> redis.Redis:
    """A client for ``url``. ``options`` may set ``socket_timeout``, ``socket_connect_timeout``,
    ``health_check_interval``, ``max_connections``, ``retries``, ``client_name`` and ``ssl_*``."""
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
    kwargs.update({k: v for k, v in opts.items() if k.startswith("ssl_")})
    try:
        return redis.Redis.from_url(url, **kwargs)
    except ValueError:
        raise ConfigurationError(f"invalid Redis URL {safe_redact(url)!r}") from None


def safe_redact(url: str) -> str:
    """:func:`redact_url`, which can raise on a malformed port."""
    try:
        return redact_url(url)
    except ValueError:
        return "<invalid url>"


def block_limit(client: redis.Redis) -> float:
    """Longest single blocking call: below the socket timeout with room for the reply."""
    timeout = client.connection_pool.connection_kwargs.get("socket_timeout")
    return MAX_BLOCK if timeout is None else max(0.01, min(MAX_BLOCK, timeout / 2))


def same_server(a: redis.Redis, b: redis.Redis) -> bool:
    """True when both clients talk to the same server and database as the same user."""
    ka, kb = a.connection_pool.connection_kwargs, b.connection_pool.connection_kwargs
    return a.connection_pool.connection_class is b.connection_pool.connection_class and all(
        ka.get(k) == kb.get(k) for k in _SAME_SERVER_KEYS
    )


class ErrorMapper:
    """Context manager turning redis-py errors into ``error`` with the URL redacted."""

    def __init__(self, error: type[ConveyorError], url: str, what: str) -> None:
        self._error = error
        self._where = f"{what} at {safe_redact(url)}"
        password = urlsplit(url).password if "://" in url else None
        self._secrets = [s for s in {password, unquote(password or "")} if s]

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
            for secret in self._secrets:
                text = text.replace(secret, "***")
            raise self._error(f"{self._where}: {text}") from exc


def lua_source(*names: str) -> str:
    """Concatenated Lua files from ``conveyor/brokers/redis_scripts``."""
    folder = files("conveyor.brokers").joinpath("redis_scripts")
    return "\n".join(folder.joinpath(f"{name}.lua").read_text("utf-8") for name in names)


class Script:
    """A Lua script, run on its own (reloaded after NOSCRIPT) or queued in a :class:`Batch`."""

    def __init__(self, client: redis.Redis, source: str) -> None:
        self._script = client.register_script(source)

    def __call__(self, args: Sequence[Any]) -> Any:
        return self._script(args=args)

    def queue(self, pipe: Pipeline, args: Sequence[Any]) -> None:
        pipe.evalsha(self._script.sha, 0, *args)


class Batch:
    """A non-transactional pipeline: many commands and script calls in one round trip.

    redis-py checks ``SCRIPT EXISTS`` before every pipeline that holds scripts (one more round
    trip); this sends EVALSHA directly and re-runs a call that hit NOSCRIPT (after a restart)."""

    def __init__(self, client: redis.Redis) -> None:
        self.pipe = client.pipeline(transaction=False)
        self._scripts: dict[int, tuple[Script, Sequence[Any]]] = {}

    def script(self, script: Script, args: Sequence[Any]) -> None:
        self._scripts[len(self.pipe)] = (script, args)
        script.queue(self.pipe, args)

    def execute(self) -> list[Any]:
        if not len(self.pipe):
            return []
        results = self.pipe.execute(raise_on_error=False)
        for index, result in enumerate(results):
            if isinstance(result, NoScriptError) and index in self._scripts:
                script, args = self._scripts[index]
                results[index] = script(args)
            elif isinstance(result, Exception):
                raise result
        return results
