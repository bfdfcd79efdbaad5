"""Wake-ups across processes for the SQLite broker, so an idle worker starts a task published by
another process at once instead of at its next poll.

SQLite tells no one about a commit, so the broker keeps a doorbell beside the database file: a
directory ``<file>.wake/`` where each consumer waiting for messages binds a Unix datagram
socket for as long as it waits. A process that made messages ready (publish, put back, replay)
sends one byte to every socket there; a waiting consumer wakes, drains its socket and looks at
the file. It is best effort: the consumer still looks every ``poll_interval`` (a lost wake-up,
a full socket buffer, a process of another user that may not write to the socket, a path too
long for a socket name where there is no ``/proc/self/fd`` to shorten it, or a platform without
Unix sockets all fall back to the poll). Sockets left by killed processes refuse the byte and
are removed by the next sender.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import select
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

#: Longest socket path the kernel takes (``sun_path``, less its terminating byte).
_MAX_PATH = 107
#: Linux names an open directory ``/proc/self/fd/<n>``: a short path for a deep directory.
_PROC_FD = os.path.isdir("/proc/self/fd")


class Doorbell:
    """The doorbell of the database file at ``path``; thread-safe."""

    def __init__(self, path: Path) -> None:
        self.directory = Path(f"{path}.wake")
        self.enabled = hasattr(socket, "AF_UNIX") and hasattr(select, "poll")
        self._listing: tuple[int, tuple[str, ...]] = (-1, ())
        self._directory_fd: tuple[int, int] | None = None  # (inode, fd)
        self._opened_fds: list[int] = []
        # One sending socket per thread (and per process: a child after fork makes its own).
        self._senders = threading.local()
        self._opened: list[socket.socket] = []

    def ring(self) -> None:
        """Wake every consumer waiting on this file (never raises)."""
        if not self.enabled:
            return
        try:
            found = os.stat(self.directory)
            names = self._waiting(found.st_mtime_ns)
        except OSError:
            return
        for name in names:
            try:
                target = self._address(name, found.st_ino)
                if target is None:
                    return
                self._send(target)
            except (ConnectionRefusedError, FileNotFoundError):
                with contextlib.suppress(OSError):  # its process is gone
                    os.unlink(os.path.join(self.directory, name))
            except OSError:  # buffer full (it has a wake-up pending already), or no right to write
                pass

    @contextlib.contextmanager
    def listening(self) -> Iterator[Listener | None]:
        """A socket that the next :meth:`ring` wakes, for the duration of the block (None
        when this file has no doorbell: the caller polls)."""
        listener = self._listen() if self.enabled else None
        try:
            yield listener
        finally:
            if listener is not None:
                listener.close()

    def close(self) -> None:
        for sender in self._opened:
            sender.close()
        self._opened.clear()
        for fd in self._opened_fds:
            os.close(fd)
        self._opened_fds.clear()
        self._directory_fd = None

    def _waiting(self, mtime: int) -> tuple[str, ...]:
        # Listing the directory costs more than its stat: list again only when it changed.
        cached, names = self._listing
        if cached != mtime:
            names = tuple(n for n in os.listdir(self.directory) if n.endswith(".sock"))
            self._listing = (mtime, names)
        return names

    def _send(self, target: str) -> None:
        senders = self._senders
        if getattr(senders, "pid", None) != os.getpid() or senders.socket.fileno() < 0:
            sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sender.setblocking(False)
            senders.socket, senders.pid = sender, os.getpid()
            self._opened.append(sender)
        senders.socket.sendto(b"!", target)

    def _address(self, name: str, inode: int) -> str | None:
        """The path to bind or send to for socket ``name`` (None: too long to use)."""
        path = os.path.join(self.directory, name)
        if len(os.fsencode(path)) <= _MAX_PATH:
            return path
        if not _PROC_FD:
            return None
        held = self._directory_fd
        if held is None or held[0] != inode:  # first use, or the directory was made again
            fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
            self._opened_fds.append(fd)
            self._directory_fd = held = (inode, fd)
        return f"/proc/self/fd/{held[1]}/{name}"

    def _listen(self) -> Listener | None:
        try:
            self.directory.mkdir(exist_ok=True)
            name = f"{os.getpid()}-{threading.get_native_id()}-{secrets.token_hex(4)}.sock"
            address = self._address(name, os.stat(self.directory).st_ino)
            if address is None:
                return None
            return Listener(address, os.path.join(self.directory, name))
        except OSError:
            return None


class Listener:
    """One waiting consumer's socket."""

    def __init__(self, address: str, path: str) -> None:
        self.path = path
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self._socket.bind(address)
        except OSError:
            self._socket.close()
            raise
        self._socket.setblocking(False)
        self._poll = select.poll()
        self._poll.register(self._socket, select.POLLIN)

    def clear(self) -> None:
        """Drop the wake-ups received so far."""
        with contextlib.suppress(BlockingIOError):
            while True:
                self._socket.recv(64)

    def wait(self, timeout: float) -> bool:
        """Block until a wake-up arrives (True) or ``timeout`` s pass (False)."""
        return bool(self._poll.poll(max(0, round(timeout * 1000))))

    def close(self) -> None:
        self._socket.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)
