"""Database connections opened on threads Django does not manage (worker threads).

Django closes a request's connections when the request ends; a thread that merely ends
leaves its connections to the garbage collector (a ResourceWarning, and for some drivers a
connection the server sees dropped). The worker and the result store note the connections
their threads use; they are closed when the thread ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import weakref
from typing import TYPE_CHECKING

from asgiref.sync import sync_to_async
from django.db import close_old_connections as _django_close_old_connections
from django.db import connections

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper

_local = threading.local()


class _Holder:
    """Lives in a thread-local: it is released, and its finalizer runs, when the thread ends."""

    __slots__ = ("__weakref__", "wrappers")

    def __init__(self) -> None:
        self.wrappers: dict[str, BaseDatabaseWrapper] = {}


def _close(wrappers: dict[str, BaseDatabaseWrapper]) -> None:
    for wrapper in wrappers.values():
        raw = wrapper.connection
        if raw is None:
            continue
        with contextlib.suppress(Exception):  # already broken: nothing left to release
            raw.close()
        wrapper.connection = None


def track() -> None:
    """Close the current thread's open connections when the thread ends (the main thread's
    are left to the application)."""
    if threading.current_thread() is threading.main_thread():
        return
    opened = {c.alias: c for c in connections.all(initialized_only=True) if c.connection}
    if not opened:
        return
    holder = getattr(_local, "holder", None)
    if holder is None:
        holder = _local.holder = _Holder()
        weakref.finalize(holder, _close, holder.wrappers)
    holder.wrappers.update(opened)


def close_old_connections() -> None:
    """Close this thread's connections that are broken or past ``CONN_MAX_AGE``.

    Skipped on a thread running an event loop: Django forbids it there, and async tasks
    reach the database through ``sync_to_async``, whose thread :func:`aclose_old_connections`
    takes care of."""
    if _in_event_loop():
        return
    _django_close_old_connections()


async def aclose_old_connections() -> None:
    """:func:`close_old_connections` on the thread ``sync_to_async`` runs the ORM on."""
    await sync_to_async(_django_close_old_connections, thread_sensitive=True)()


def close_idle_connections() -> None:
    """Close this thread's open connections that are not inside an atomic block."""
    for conn in connections.all(initialized_only=True):
        if conn.connection is not None and not conn.in_atomic_block:
            conn.close()


def _in_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True
