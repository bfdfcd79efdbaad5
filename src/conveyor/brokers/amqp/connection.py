"""AMQP URLs and connections: ``amqp://``, ``amqps://`` and Celery's ``pyamqp://``.

``amqp://user:password@host:port/vhost?heartbeat=60&connect_timeout=5`` with Kombu's
defaults (``guest``/``guest``, port 5672 or 5671 for ``amqps``, vhost ``/``). The vhost is the
URL's path without its first ``/``, percent-decoded: ``//`` and a missing path both mean ``/``,
``/%2F`` also ``/``, ``/jobs`` the vhost ``jobs``. TLS: ``amqps://`` (or ``?ssl=true``) with
the system's trusted CAs; ``?cafile=`` names the CA certificates to trust instead, ``?certfile=``
and ``?keyfile=`` a client certificate. The server's certificate must name the URL's host.

:class:`Connector` opens py-amqp connections and turns every failure into one
:class:`~conveyor.exceptions.BrokerError` that says what was wrong (refused, bad credentials,
unknown vhost) with the password redacted.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

import amqp
from amqp.exceptions import AccessRefused, AMQPError, ConnectionForced, NotAllowed

from ...exceptions import BrokerError, ConfigurationError
from ..base import redact_url

SCHEMES = ("amqp", "amqps", "pyamqp")
#: Longest wait for RabbitMQ to answer or to take what we send (seconds): a node that is
#: alive on TCP but does not answer (stalled, or a queue that lost its leader) fails the call,
#: and the connection is dropped, instead of blocking the caller (and the session lock) forever.
RPC_TIMEOUT = 30.0
#: Longest wait for the server's reply to our close (the connection is dropped anyway).
CLOSE_TIMEOUT = 2.0
#: Errors of the client and the network that mean "the connection is gone".
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    AMQPError,
    OSError,
    EOFError,
    socket.timeout,
)
_TRUE = {"1", "true", "yes", "on"}


@dataclass(frozen=True, slots=True)
class AMQPParams:
    """Where and how to connect, parsed from a URL."""

    host: str
    port: int
    userid: str
    password: str
    vhost: str
    #: TLS, as py-amqp's ``ssl=`` options (None: plain AMQP).
    tls: dict[str, object] | None
    heartbeat: int
    connect_timeout: float
    #: ``kv_url`` query parameter: where the broker's key/value data lives.
    kv_url: str | None


def parse_url(url: str) -> AMQPParams:
    """Parse an AMQP URL; a malformed one raises ConfigurationError (password redacted)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigurationError(f"malformed AMQP URL {redact_url(url)!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise ConfigurationError(f"not an AMQP URL: {redact_url(url)!r}")
    query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    unknown = set(query) - {"heartbeat", "connect_timeout", "ssl", "cafile", "certfile", "keyfile"}
    unknown.discard("kv_url")
    if unknown:
        raise ConfigurationError(
            f"AMQP URL {redact_url(url)!r}: unknown parameter(s) {', '.join(sorted(unknown))}"
        )
    use_tls = scheme == "amqps" or query.get("ssl", "").lower() in _TRUE
    host = parts.hostname or "localhost"
    tls = _tls_options(url, host, query) if use_tls else None
    path = parts.path
    vhost = unquote(path[1:]) if len(path) > 1 else "/"
    try:
        heartbeat = int(query.get("heartbeat", "60"))
        connect_timeout = float(query.get("connect_timeout", "5"))
    except ValueError as exc:
        raise ConfigurationError(f"AMQP URL {redact_url(url)!r}: {exc}") from None
    return AMQPParams(
        host=host,
        port=port or (5671 if use_tls else 5672),
        userid=unquote(parts.username) if parts.username else "guest",
        password=unquote(parts.password) if parts.password is not None else "guest",
        vhost=vhost,
        tls=tls,
        heartbeat=heartbeat,
        connect_timeout=connect_timeout,
        kv_url=query.get("kv_url") or None,
    )


def _tls_options(url: str, host: str, query: dict[str, str]) -> dict[str, object]:
    """py-amqp's ``ssl=`` options: verify the server against ``cafile`` (else the system's
    CAs) and its certificate's names against ``host``. (py-amqp takes a dict: an SSLContext
    given as ``ssl=`` would be replaced by an unverified default one.) The files are loaded
    once here, so a missing or unreadable one is a ConfigurationError naming it."""
    cafile, certfile = query.get("cafile") or None, query.get("certfile") or None
    keyfile = query.get("keyfile") or None
    try:
        check = ssl.create_default_context(cafile=cafile)
        if certfile:
            check.load_cert_chain(certfile, keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(f"AMQP URL {redact_url(url)!r}: TLS files: {exc}") from None
    if keyfile and not certfile:
        raise ConfigurationError(f"AMQP URL {redact_url(url)!r}: keyfile= needs certfile=")
    return {
        "cert_reqs": ssl.CERT_REQUIRED,
        "ca_certs": cafile,
        "certfile": certfile,
        "keyfile": keyfile,
        "server_hostname": host,
    }


class Connector:
    """Opens connections for one URL; errors name the URL with its password hidden."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.params = parse_url(url)

    def open(self) -> amqp.Connection:
        p = self.params
        connection = amqp.Connection(
            f"{p.host}:{p.port}",
            userid=p.userid,
            password=p.password,
            virtual_host=p.vhost,
            ssl=p.tls or False,
            heartbeat=p.heartbeat,
            connect_timeout=p.connect_timeout,
            confirm_publish=False,
            read_timeout=RPC_TIMEOUT,
            write_timeout=RPC_TIMEOUT,
        )
        try:
            connection.connect()
        except AccessRefused as exc:
            raise self.error(f"login refused for user {p.userid!r} ({exc.reply_text})") from None
        except NotAllowed as exc:
            raise self.error(
                f"vhost {p.vhost!r} refused for user {p.userid!r} ({exc.reply_text}); "
                "does it exist and may the user use it?"
            ) from None
        except ConnectionForced as exc:
            raise self.error(f"closed by the server ({exc.reply_text})") from None
        except (ssl.SSLError, socket.gaierror) as exc:
            raise self.error(str(exc)) from None
        except CONNECTION_ERRORS as exc:
            raise self.error(f"cannot connect ({type(exc).__name__}: {exc})") from None
        return connection

    def error(self, what: str) -> BrokerError:
        # without the query: kv_url may carry another server's password
        return BrokerError(f"RabbitMQ broker {redact_url(self.url.split('?', 1)[0])}: {what}")


def close_quietly(connection: amqp.Connection | None) -> None:
    """Close ``connection`` (or drop its socket) without raising."""
    if connection is None:
        return
    try:
        sock = connection.sock
        if sock is not None:  # a stalled server never answers our close
            sock.settimeout(CLOSE_TIMEOUT)
        connection.close()
    except Exception:  # already broken: drop the socket
        try:
            connection.collect()
        except Exception:  # nothing more to release
            return
