"""Sending tasks: a call, or a batch, validated and encoded at the call site, then published
(retried as the publish policy says), in the caller's transaction, or at its commit.

:class:`~conveyor.app.Conveyor` sends through these functions (``send_task``, ``send_many``,
``Task.apply_async``, signatures); :mod:`conveyor.calling` builds and encodes each call.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from .brokers.base import Message, redact_url
from .call_settings import Calls
from .calling import build_call, collection_paused, encode_call
from .canvas import Signature, as_signature
from .exceptions import ConfigurationError
from .message import Envelope
from .middleware import call_each
from .publishing import (
    PUBLISH_ERRORS,
    RetryPolicy,
    is_connection_error,
    publish_with_retry,
    queued_once,
)
from .result import AsyncResult
from .results.base import ResultRecord
from .settlement.stream import CHUNK as STREAM_CHUNK
from .settlement.stream import BulkStream
from .unique.producer import send_unique, wants_unique
from .worker.eager import run_eager

if TYPE_CHECKING:
    from .app import Conveyor
    from .task import Task


def send_call(
    app: Conveyor,
    name: str,
    args: Sequence[object] | None,
    kwargs: Mapping[str, object] | None,
    options: Mapping[str, object],
    *,
    task: Task[..., object] | None = None,
    eager: bool = False,
) -> AsyncResult[object]:
    """:meth:`Conveyor.send_call`: validate, encode, then publish now, in the caller's
    transaction (``connection=``, or the enclosing one), or at its commit (``on_commit``)."""
    task = task or app.tasks.get(name)
    if wants_unique(task, options):
        return send_unique(app, name, args, kwargs, options, task=task, eager=eager)
    options = dict(options)
    on_commit = options.pop("on_commit", None)
    connection = options.pop("connection", None)
    calls = Calls(app)
    policy = calls.publish_policy(options)
    envelope, message, record = prepare(app, calls, name, args, kwargs, options, task)
    result: AsyncResult[object] = AsyncResult(envelope.id, app, task_name=name)
    if eager or app.conf.task_always_eager:
        run_eager(app, envelope, message.body)
        return result
    if connection is None and on_commit is None:
        # Inside a transaction of the broker's database: enqueue in it (on_commit=False
        # still means "send now, on a connection of its own").
        connection = enclosing_connection(app)
    if connection is not None:
        # Part of the caller's transaction: no retry (a failure must reach the caller).
        app.settlement.publish_on(connection, [message], [record] if record else [])
        hooks = app.hooks.after_publish
        if hooks:
            call_each(hooks, app, envelope)
        return result
    if on_commit is None and app.conf.task_enqueue_on_commit:
        on_commit = app.in_transaction()
    if on_commit:
        if app.commit_hook is None:
            raise ConfigurationError(
                "on_commit=True needs a transaction hook: add 'conveyor.contrib.django' "
                "to INSTALLED_APPS"
            )
        app.commit_hook(
            lambda: publish(app, [envelope], [message], [record] if record else [], policy)
        )
        return result
    publish(app, [envelope], [message], [record] if record else [], policy)
    return result


def enclosing_connection(app: Conveyor) -> object | None:
    """The connection of the enclosing database transaction (Django's atomic block) if
    the broker can enqueue in it, else None."""
    found = app.transaction_connection()
    if found is None or not app.settlement.can_publish_on(found):
        return None
    return found


def send_many(
    app: Conveyor, signatures: Iterable[Signature | Task[..., object]]
) -> list[AsyncResult[object]]:
    """:meth:`Conveyor.send_many`: each message encoded in turn, large batches handed to
    the settlement's stream chunk by chunk (PostgreSQL), the rest published at once."""
    envelopes: list[Envelope] = []
    messages: list[Message] = []
    records: list[ResultRecord] = []
    results: list[AsyncResult[object]] = []
    policy: RetryPolicy | None = None
    calls = Calls(app)
    tasks = app.tasks
    eager = app.conf.task_always_eager
    stream: BulkStream | None = None
    streams = not eager  # whether to ask the settlement for a stream
    sent = kept = 0  # messages and records given to the stream
    try:
        with collection_paused(signatures):
            for item in signatures:
                sig = as_signature(item, app)
                name = sig.task
                options = sig.options
                if options:
                    options = dict(options)
                    options.pop("on_commit", None)
                # One publish for the batch: it is retried as its first call says.
                first_policy = calls.publish_policy(options)
                if not envelopes:
                    policy = first_policy
                envelope, message, record = prepare(
                    app, calls, name, sig.args, sig.kwargs, options, tasks.get(name)
                )
                envelopes.append(envelope)
                messages.append(message)
                if record is not None:
                    records.append(record)
                results.append(AsyncResult(envelope.id, app, task_name=name))
                if streams and len(messages) - sent >= STREAM_CHUNK:
                    if stream is None:
                        stream = app.settlement.open_stream()
                        streams = stream is not None
                    if stream is not None:
                        stream.add(messages[sent:], records[kept:])
                        sent, kept = len(messages), len(records)
    except BaseException:
        if stream is not None:
            stream.abort()
        raise
    if eager:
        for envelope, message in zip(envelopes, messages, strict=True):
            run_eager(app, envelope, message.body)
        return results
    if stream is not None:
        if len(messages) > sent:
            stream.add(messages[sent:], records[kept:])
        error = stream.finish()
        if error is None:
            after_publish(app, envelopes)
        elif isinstance(error, PUBLISH_ERRORS) and policy and is_connection_error(error):
            # Nothing or everything landed: publish it all again, as a retry would.
            publish(app, envelopes, messages, records, policy, retrying=True)
        else:
            raise error
    elif messages:
        publish(app, envelopes, messages, records, policy)
    return results


def publish(
    app: Conveyor,
    envelopes: Sequence[Envelope],
    messages: Sequence[Message],
    records: Sequence[ResultRecord],
    policy: RetryPolicy | None,
    *,
    retrying: bool = False,
) -> None:
    """Publish (retrying connection errors as ``policy`` says), then ``after_publish``."""
    settlement = app.settlement
    publish_with_retry(
        queued_once(
            lambda kept: settlement.publish(messages, kept),
            records,
            app.results.get_many,
            retrying=retrying,
        ),
        policy,
        where=lambda: redact_url(app.broker_url),
    )
    after_publish(app, envelopes)


def after_publish(app: Conveyor, envelopes: Sequence[Envelope]) -> None:
    hooks = app.hooks.after_publish
    if hooks:
        for envelope in envelopes:
            call_each(hooks, app, envelope)


def prepare(
    app: Conveyor,
    calls: Calls,
    name: str,
    args: Sequence[object] | None,
    kwargs: Mapping[str, object] | None,
    options: Mapping[str, object],
    task: Task[..., object] | None,
) -> tuple[Envelope, Message, ResultRecord | None]:
    call = build_call(calls, name, args, kwargs, options, task)
    if calls.before:
        call_each(calls.before, app, call.envelope)
    message, record = encode_call(call, calls)
    if calls.parent is not None:
        calls.parent.children.append(call.envelope.id)
    return call.envelope, message, record
