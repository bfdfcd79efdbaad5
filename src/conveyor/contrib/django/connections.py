"""Database connections opened on threads Django does not manage (worker threads).

Django closes a request's connections when the request ends; a thread that merely ends
leaves its connections to the garbage collector (a ResourceWarning, and for some drivers a
connection the server sees dropped). The worker and the result store note the connections
their threads use; they are closed when the thread ends.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from typing import Any

_local = threading.local()


class _Holder:
    """Lives in a thread-local: it is released, and its finalizer runs, when the thread ends."""

    __slots__ = ("__weakref__", "wrappers")

    def __init__(self) -> None:
        self.wrappers: dict[str, Any] = {}


def _close(wrappers: dict[str, Any]) -> None:
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
    from django.db import connections

    opened = {c.alias: c for c in connections.all(initialized_only=True) if c.connection}
    if not opened:
        return
    holder = getattr(_local, "holder", None)
    if holder is None:
        holder = _local.holder = _Holder()
        weakref.finalize(holder, _close, holder.wrappers)
    holder.wrappers.update(opened)
