"""Writing events: a buffer per process, flushed in batches by a background thread.

:meth:`EventWriter.emit` only appends a dict to a list (the hot path pays that and nothing
else); the flusher thread encodes the batch and appends it to the broker's ``events`` stream
in one call every ``events_flush_interval`` seconds, or at once when ``BATCH`` events wait.
Each process writes its own batches over its own broker connection - worker children, a
``--pool solo`` worker, web processes that send tasks - so nothing crosses the supervisor's
pipes and no process waits on another.

Two exceptions: a process that forks children (the worker's supervisor) must keep one thread,
so its writer is *direct* (each event written at once; it emits only a few: worker online and
offline, tasks it fails); and a forked child starts with an empty buffer and no thread
(``os.register_at_fork``), then starts its own flusher on its first event.

If the broker cannot take a batch, the events are kept and tried again with the next flush,
up to ``MAX_BUFFER`` events; older ones are then dropped (counted, with a warning): events
never block or fail the work they describe.
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..exceptions import ConveyorError
from .model import STREAM, Fields, encode

if TYPE_CHECKING:
    from ..app import Conveyor

logger = logging.getLogger("conveyor.events")

#: Events waiting that make the flusher write at once.
BATCH = 500
#: Events kept while the broker cannot take them; older ones are dropped beyond.
MAX_BUFFER = 10_000
#: Seconds without events after which a flusher thread ends (a producer that sends rarely
#: keeps no thread).
IDLE_EXIT = 10.0
#: Seconds between ``worker-heartbeat`` events of a worker process.
HEARTBEAT_INTERVAL = 2.0

_writers: weakref.WeakSet[EventWriter] = weakref.WeakSet()


class EventWriter:
    """Buffers the events of one app in this process and writes them in batches."""

    def __init__(self, app: Conveyor) -> None:
        self._app = weakref.proxy(app)
        self.hostname = f"{socket.gethostname()}.{os.getpid()}"
        #: Write each event at once, without a thread (a process that forks).
        self.direct = False
        #: Called by the flusher every HEARTBEAT_INTERVAL: the fields of a worker-heartbeat.
        self.heartbeat: Callable[[], Fields] | None = None
        self.dropped = 0
        #: The broker keeps no streams: events are dropped (see conveyor.streams).
        self.unsupported = False
        self._reset()
        _writers.add(self)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._buffer: list[Fields] = []
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    def emit(self, kind: str, fields: Fields, hostname: str | None = None) -> None:
        """Queue one event (``type``, ``timestamp``, ``hostname`` and ``pid`` added)."""
        if self.unsupported:
            return
        event: Fields = {
            "type": kind,
            "timestamp": time.time(),
            "hostname": hostname or self.hostname,
            "pid": self._pid,
            **fields,
        }
        if self.direct:
            self._write([event])
            return
        with self._lock:
            self._buffer.append(event)
            waiting = len(self._buffer)
            if self._thread is None:
                self._start()
        if waiting >= BATCH:
            self._wake.set()

    def start(self) -> None:
        """Start the flusher now (a worker process: its heartbeats begin at once)."""
        if self.direct:
            return
        with self._lock:
            if self._thread is None:
                self._start()

    def flush(self) -> None:
        """Write what is buffered now (in the calling thread)."""
        with self._lock:
            batch, self._buffer = self._buffer, []
        if batch:
            self._write(batch)

    def close(self) -> None:
        """Stop the flusher and write what is left."""
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)
        self._thread = None
        self.flush()
        self._stop.clear()

    # -- internals -----------------------------------------------------------------------
    def _start(self) -> None:
        """(Lock held.) Start the flusher thread of this process."""
        thread = threading.Thread(target=self._run, name="conveyor-events", daemon=True)
        self._thread = thread
        thread.start()

    def _run(self) -> None:
        try:
            interval = self._app.conf.events_flush_interval
        except ReferenceError:  # the app is gone
            return
        next_beat = time.monotonic() + HEARTBEAT_INTERVAL
        idle_since = time.monotonic()
        while not self._stop.is_set():
            self._wake.wait(interval)
            self._wake.clear()
            try:
                now = time.monotonic()
                with self._lock:
                    if self._buffer or self.heartbeat is not None:
                        idle_since = now
                    elif now - idle_since > IDLE_EXIT:
                        self._thread = None  # the next event starts another
                        return
                heartbeat = self.heartbeat
                if heartbeat is not None and now >= next_beat:
                    next_beat = now + HEARTBEAT_INTERVAL
                    self.emit("worker-heartbeat", heartbeat())
                self.flush()
            except ReferenceError:
                return
            except Exception:  # never let the flusher die: events must not stop work
                logger.exception("event flusher failed (continuing)")

    def _write(self, batch: list[Fields]) -> None:
        conf = self._app.conf
        try:
            self._app.broker.streams.append(
                STREAM,
                [encode(event) for event in batch],
                max_length=conf.events_max_length,
                max_age=conf.events_max_age,
            )
        except NotImplementedError as exc:  # a broker without streams: say it once
            if not self.unsupported:
                self.unsupported = True
                logger.warning("events are not kept: %s", exc)
        except ConveyorError as exc:
            self._keep(batch, exc)

    def _keep(self, batch: list[Fields], exc: BaseException) -> None:
        """The broker did not take ``batch``: keep it for the next flush, within bounds."""
        if self.direct:
            logger.warning("could not write %d event(s): %s", len(batch), exc)
            return
        with self._lock:
            self._buffer[:0] = batch
            over = len(self._buffer) - MAX_BUFFER
            if over > 0:
                del self._buffer[:over]
                self.dropped += over
        logger.warning("could not write %d event(s) (kept for the next try): %s", len(batch), exc)


def _after_fork() -> None:
    for writer in list(_writers):
        writer.direct = False
        writer.heartbeat = None
        writer._reset()


def _flush_all() -> None:
    for writer in list(_writers):
        try:
            writer.close()
        except Exception:
            logger.exception("could not write the last events")


os.register_at_fork(after_in_child=_after_fork)
atexit.register(_flush_all)
