"""Unique tasks: at most one queued (or running, or recent) task per key.

``@app.task(unique_for=600)`` or ``apply_async(unique_key="report:42", unique_for=600,
unique_mode="until_started")``: a call whose key is held returns the holder's result with
``duplicate_of`` set instead of queuing a task. Modes in :class:`UniqueMode`; semantics and
failure behaviour in docs/flow-control.md. The producer side is ``unique.producer``, the
worker side ``unique.middleware`` (built into every app).
"""

from __future__ import annotations

from .spec import UNIQUE_HEADER, UniqueCall, UniqueMode, check_task_options, unique_call

__all__ = ["UNIQUE_HEADER", "UniqueCall", "UniqueMode", "check_task_options", "unique_call"]
