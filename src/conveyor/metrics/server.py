"""Serving ``/metrics``: from the caller's own loop (:class:`InlineServer`, for the worker's
supervisor, which must stay single-threaded because it forks) or on a thread
(:func:`serve_in_thread`, for ``--pool solo`` and ``conveyor metrics``)."""

from __future__ import annotations

import threading
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

from ..exceptions import ConfigurationError

#: Seconds a scraper may take to send its request before the connection is dropped (the
#: supervisor waits for it; a scrape by Prometheus takes milliseconds).
REQUEST_TIMEOUT = 1.0


class _Handler(WSGIRequestHandler):
    timeout = REQUEST_TIMEOUT

    def log_message(self, format: str, *args: object) -> None:
        """Scrapes are not logged."""


class _Server(WSGIServer):
    allow_reuse_address = True

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def handle_error(self, request: object, client_address: object) -> None:
        """A scraper that hung up or timed out is not an error worth a traceback."""


class ThreadingServer(_Server):
    """A metrics server answering each request on a thread of its own."""

    def process_request(self, request: object, client_address: object) -> None:
        threading.Thread(
            target=self._serve_one,
            args=(request, client_address),
            name="conveyor-metrics-request",
            daemon=True,
        ).start()

    def _serve_one(self, request: object, client_address: object) -> None:
        try:
            self.finish_request(request, client_address)  # type: ignore[arg-type]  # typeshed types the request as a socket tuple; ours is the socket
        finally:
            self.shutdown_request(request)  # type: ignore[arg-type]  # typeshed types the request as a socket tuple; ours is the socket


def _make[S: _Server](
    server_class: type[S], registry: CollectorRegistry, host: str, port: int
) -> S:
    app = make_wsgi_app(registry)
    try:
        server = make_server(host, port, app, server_class=server_class, handler_class=_Handler)
    except OSError as exc:
        why = exc.strerror or str(exc)
        raise ConfigurationError(f"cannot serve metrics on {host}:{port}: {why}") from None
    assert isinstance(server, server_class)
    return server


class InlineServer:
    """``/metrics`` answered one request at a time by whoever calls :meth:`handle` once
    :meth:`fileno` is readable (no thread)."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        self._server = _make(_Server, registry, host, port)
        self._server.timeout = 0.0

    @property
    def port(self) -> int:
        return self._server.port

    def fileno(self) -> int:
        return self._server.fileno()

    def handle(self) -> None:
        """Answer the waiting request (returns at once if none waits)."""
        self._server.handle_request()

    def close(self) -> None:
        self._server.server_close()


def serve_in_thread(registry: CollectorRegistry, host: str, port: int) -> ThreadingServer:
    """Serve ``registry`` on ``host:port`` from a daemon thread (one more thread per
    request); returns the server (``shutdown()`` stops it)."""
    server = _make(ThreadingServer, registry, host, port)
    threading.Thread(target=server.serve_forever, name="conveyor-metrics", daemon=True).start()
    return server
