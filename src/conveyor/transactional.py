"""Enqueue from async code inside the application's own database transaction:
``await task.aapply_async(args, connection=aconn)`` with a psycopg ``AsyncConnection``.

The message (and its QUEUED record, when the result store shares the database) is written
on ``aconn`` itself, awaited on its event loop rather than in a thread, so it commits or rolls
back with whatever else that transaction writes. Only a broker in that database can do this
(PostgreSQL); others refuse with a :class:`~conveyor.exceptions.ConfigurationError`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from .middleware import call_each
from .result import AsyncResult

if TYPE_CHECKING:
    from .app import Conveyor
    from .task import Task


async def send_on(
    app: Conveyor,
    name: str,
    args: Sequence[object] | None,
    kwargs: Mapping[str, object] | None,
    options: Mapping[str, object],
    task: Task[..., object] | None = None,
) -> AsyncResult[object]:
    """Build the call like ``apply_async`` and insert it with ``options["connection"]``
    (never retried: a failure must reach the caller, whose transaction it belongs to)."""
    options = dict(options)
    connection = options.pop("connection")
    options.pop("on_commit", None)  # the connection's own commit decides
    envelope, message, record = app.prepare(name, args, kwargs, options, task)
    result: AsyncResult[object] = AsyncResult(envelope.id, app, task_name=name)
    await app.settlement.apublish_on(connection, [message], [record] if record else [])
    if app.hooks.after_publish:
        call_each(app.hooks.after_publish, app, envelope)
    return result
