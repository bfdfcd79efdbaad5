"""Where tasks run: task threads for sync tasks, one event-loop thread for async tasks.

A worker runs sync tasks through a :class:`TaskExecutor`: :class:`ThreadExecutor` by
default; the process model plugs in its own (``conveyor.worker.child`` runs the task in the
main thread of a one-thread process, where a signal can interrupt blocking calls).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import queue
import threading
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from ..exceptions import SoftTimeLimitExceeded, TaskRevokedError, TimeLimitExceeded
from .inflight import Running

logger = logging.getLogger("conveyor.worker")

#: Exceptions an interrupt may raise just after its task ended: ignored.
STRAY = (SoftTimeLimitExceeded, TimeLimitExceeded, TaskRevokedError)


class TaskExecutor(Protocol):
    """Where a worker runs sync tasks, and how it interrupts one that runs."""

    def submit(self, control: Running, run: Callable[[], None]) -> None:
        """Run ``run`` - the whole life of ``control``'s task - now or when a thread is
        free. ``run`` sets ``control.thread_id`` to the thread it runs in."""

    def interrupt(self, control: Running, exc_type: type[BaseException]) -> None:
        """Raise ``exc_type`` in ``control``'s task if it is still active (soft time limit,
        hard time limit, terminate); set ``control.interrupted`` when it does."""

    def shutdown(self, *, wait: bool, cancel: bool) -> None:
        """Stop once the calls submitted so far ran (``cancel``: drop those that did not
        start); ``wait`` for them."""


def interrupt_thread(control: Running, exc_type: type[BaseException]) -> None:
    """Raise ``exc_type`` asynchronously in the thread running ``control``'s task. It lands
    between two bytecodes: a blocking call (``time.sleep``, a socket read) returns first."""
    with control.lock:
        if not control.active or control.thread_id is None:
            return
        control.interrupted = exc_type
        ctypes.pythonapi.PyThreadState_SetAsyncExc(
            ctypes.c_ulong(control.thread_id), ctypes.py_object(exc_type)
        )


class ThreadExecutor:
    """A fixed number of threads running submitted calls in order: what the worker needs of
    ``ThreadPoolExecutor`` without its per-call future, locks and idle-thread semaphore.
    Threads start on demand, one per call, up to ``count``."""

    def __init__(self, count: int, name: str = "conveyor-task") -> None:
        self._count = count
        self._name = name
        self._calls: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def submit(self, control: Running, run: Callable[[], None]) -> None:
        self._calls.put(run)
        if len(self._threads) < self._count:
            with self._lock:
                if len(self._threads) < self._count:
                    thread = threading.Thread(
                        target=self._serve,
                        name=f"{self._name}_{len(self._threads)}",
                        daemon=True,
                    )
                    self._threads.append(thread)
                    thread.start()

    def interrupt(self, control: Running, exc_type: type[BaseException]) -> None:
        interrupt_thread(control, exc_type)

    def _serve(self) -> None:
        calls = self._calls
        while True:
            try:
                call = calls.get()
                if call is None:
                    return
                call()
            except STRAY:
                pass  # a time limit or terminate that landed just after its task ended
            except Exception:
                logger.exception("task thread: unexpected error")

    def shutdown(self, *, wait: bool, cancel: bool) -> None:
        if cancel:
            with contextlib.suppress(queue.Empty):
                while True:
                    self._calls.get_nowait()
        with self._lock:
            threads = list(self._threads)
            self._count = 0  # no new threads
        for _ in threads:
            self._calls.put(None)
        if wait:
            for thread in threads:
                if thread is not threading.current_thread():
                    thread.join()


class EventLoopThread:
    """One event loop, on its own thread started at first use, running every async task."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def submit(self, coroutine: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coroutine, self._running_loop())

    def interrupt(self, control: Running, exc_type: type[BaseException]) -> None:
        """Cancel ``control``'s task with an ``exc_type`` as the reason."""
        task, loop = control.loop_task, self._loop
        if task is not None and loop is not None:
            loop.call_soon_threadsafe(
                task.cancel, exc_type(f"task {control.job.envelope.id} interrupted")
            )

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            loop = asyncio.new_event_loop()
            ready = threading.Event()

            def serve() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                loop.run_forever()

            thread = threading.Thread(target=serve, name="conveyor-loop", daemon=True)
            thread.start()
            ready.wait(5)
            self._loop, self._thread = loop, thread
        return self._loop

    def stop(self) -> None:
        loop = self._loop
        if loop is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=5)
        if not loop.is_running():
            loop.close()
        self._loop = None
