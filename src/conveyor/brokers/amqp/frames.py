"""Fewer system calls per pushed message: py-amqp's plain TCP transport reads each frame with
a ``recv`` of its 7-byte header and one of its payload (a message is three frames), and
:meth:`~.session.Session.pump` asked ``select`` before each frame.

:func:`read_ahead` makes the transport's ``recv`` ask for up to :data:`CHUNK` bytes: py-amqp
keeps what it did not need in its read buffer and serves the next frames from there (its
``_read`` loop takes whatever ``recv`` returns and slices off exactly what it asked for).
:func:`frame_buffered` then says whether a whole frame waits in that buffer, which the socket
no longer shows: the session reads it without ``select`` and without a timeout (nothing
touches the socket). TLS transports are left alone (their reads go through ``SSLSocket``,
whose pending data :func:`~.session._readable` already counts).

Both look at py-amqp internals (``TCPTransport._quick_recv`` and ``_read_buffer``, the same
since py-amqp 5.0); if those are not there, nothing changes and reading works as before.
"""

from __future__ import annotations

import amqp
import amqp.transport

#: Bytes asked of the socket per ``recv`` (a few dozen pushed messages).
CHUNK = 65536
#: An AMQP frame: type (1 byte), channel (2), payload size (4), payload, end marker (1).
_HEADER = 7


def read_ahead(connection: amqp.Connection) -> None:
    """Let the plain TCP transport of ``connection`` read up to :data:`CHUNK` bytes at once."""
    transport = connection.transport
    if type(transport) is not amqp.transport.TCPTransport:
        return
    recv = getattr(transport, "_quick_recv", None)
    if recv is None or not hasattr(transport, "_read_buffer"):
        return

    def quick_recv(n: int) -> bytes:
        data: bytes = recv(max(n, CHUNK))
        return data

    transport._quick_recv = quick_recv


def frame_buffered(connection: amqp.Connection) -> bool:
    """Whether a whole frame waits in the transport's read buffer."""
    buffer = getattr(connection.transport, "_read_buffer", b"")
    if len(buffer) < _HEADER:
        return False
    return len(buffer) >= _HEADER + int.from_bytes(buffer[3:7], "big") + 1
