"""Conveyor messages to AMQP messages and back.

Conveyor's fields travel in the basic properties (``message_id``, ``priority``, ``timestamp``)
and in ``conveyor-*`` headers (queue, priority, and for dead letters reason/detail/time/count);
the body is passed through byte for byte. A message published by someone else (no message id,
no headers) is still handed to the worker, which dead-letters what it cannot decode.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Mapping

import amqp

from ..base import DeadLetter, DeadLetterReason, Message, clamp_priority

QUEUE = "conveyor-queue"
PRIORITY = "conveyor-priority"
REASON = "conveyor-reason"
DETAIL = "conveyor-detail"
DEAD_AT = "conveyor-dead-at"
DELIVERIES = "conveyor-deliveries"
#: Deliveries a released message had before it was published again (``release()``).
BEFORE = "conveyor-delivered-before"
PERSISTENT = 2
#: The largest delivery count: what an AMQP header (a signed 64-bit integer) can carry. A
#: count made of forged headers stops there, so the copy of its message (a release, a dead
#: letter) can still be published.
MAX_COUNT = 2**63 - 1

#: ``x-death`` reasons of RabbitMQ's own dead-lettering, as Conveyor reasons.
_X_DEATH_REASONS = {
    "delivery_limit": DeadLetterReason.WORKER_LOST,
    "rejected": DeadLetterReason.WORKER_LOST,
    "expired": DeadLetterReason.EXPIRED,
    "maxlen": "queue_full",
}


def to_amqp(message: Message, *, amqp_priority: bool) -> amqp.Message:
    """``amqp_priority``: set the AMQP priority property (classic queues with
    ``x-max-priority``). Quorum queues get it only in the header, so they are FIFO on every
    RabbitMQ version (4.x would otherwise serve 5-9 before 0-4, and 3.10 would not)."""
    priority = clamp_priority(message.priority)
    headers: dict[str, object] = {QUEUE: message.queue, PRIORITY: priority}
    return amqp.Message(
        message.body,
        message_id=message.id,
        priority=priority if amqp_priority else None,
        delivery_mode=PERSISTENT,
        timestamp=int(time.time()),
        content_type="application/octet-stream",
        application_headers=headers,
    )


_NONE: Mapping[str, object] = {}


def headers_of(msg: amqp.Message) -> dict[str, object]:
    """A copy of ``msg``'s headers, to change."""
    return dict(header_view(msg))


def header_view(msg: amqp.Message) -> Mapping[str, object]:
    """``msg``'s headers, to read (no copy: several are read per leased message)."""
    headers = msg.properties.get("application_headers")
    return headers if isinstance(headers, dict) else _NONE


def body_of(msg: amqp.Message) -> bytes:
    body = msg.body
    return bytes(body) if not isinstance(body, str) else body.encode()


def priority_of(msg: amqp.Message) -> int:
    value = header_view(msg).get(PRIORITY, msg.properties.get("priority", 5))
    return clamp_priority(value) if type(value) is int else 5


def problem_of(msg: amqp.Message) -> str | None:
    """Why a leased message cannot be delivered: a Conveyor header of the wrong type or out
    of range (written by a broken or hostile publisher), or None. Messages without Conveyor's
    headers (other publishers, Celery) pass: the worker judges their body."""
    headers = header_view(msg)
    for name, low, high in (
        (PRIORITY, 0, 9),
        (BEFORE, 0, None),
        ("x-delivery-count", 0, None),
        ("x-acquired-count", 0, None),
    ):
        if name not in headers:
            continue
        value = headers[name]
        if type(value) is not int or value < low or (high is not None and value > high):
            shown = repr(value)
            shown = shown if len(shown) <= 40 else shown[:37] + "..."
            limit = f"{low}-{high}" if high is not None else f">= {low}"
            return f"header {name} {shown} is not an integer {limit}"
    return None


def message_id_of(msg: amqp.Message, fallback: str) -> str:
    value = msg.properties.get("message_id")
    return value if isinstance(value, str) and value else fallback


def counts_returns(msg: amqp.Message) -> bool:
    """Whether RabbitMQ counted every return of ``msg`` (a quorum queue's header); a
    classic queue only says whether it was delivered before."""
    headers = header_view(msg)
    return type(headers.get("x-acquired-count", headers.get("x-delivery-count"))) is int


def delivery_count_of(msg: amqp.Message) -> int:
    """1 on the first delivery: quorum queues count returns in ``x-delivery-count``, and
    from RabbitMQ 4.3 every return in ``x-acquired-count`` (its ``x-delivery-count`` then only
    counts the returns it judges failures, which may leave out a consumer that died); classic
    queues only say whether the message was delivered before (then 2)."""
    headers = header_view(msg)
    before = headers.get(BEFORE)
    base = before if type(before) is int and before > 0 else 0
    count = headers.get("x-acquired-count")
    if type(count) is not int:
        count = headers.get("x-delivery-count")
    if type(count) is int:
        total = base + count + 1
    else:
        total = base + (2 if msg.delivery_info.get("redelivered") else 1)
    return min(total, MAX_COUNT)


def copy_of(msg: amqp.Message, extra: Mapping[str, object]) -> amqp.Message:
    """A new persistent message with ``msg``'s body and properties, headers updated with
    ``extra`` (RabbitMQ's own ``x-`` headers dropped)."""
    headers = {k: v for k, v in header_view(msg).items() if not k.startswith("x-")}
    headers.update(extra)
    return amqp.Message(
        body_of(msg),
        message_id=msg.properties.get("message_id"),
        priority=msg.properties.get("priority"),
        timestamp=msg.properties.get("timestamp"),
        content_type=msg.properties.get("content_type"),
        delivery_mode=PERSISTENT,
        application_headers=headers,
    )


def as_message(msg: amqp.Message, fallback_queue: str) -> Message:
    """The Conveyor message inside an AMQP message (to replay a dead letter)."""
    headers = header_view(msg)
    queue = headers.get(QUEUE)
    return Message(
        message_id_of(msg, f"amqp-{time.time_ns()}"),
        queue if isinstance(queue, str) else fallback_queue,
        body_of(msg),
        priority_of(msg),
    )


def dead_letter_of(msg: amqp.Message) -> DeadLetter:
    """Read a message of the dead-letter queue: one Conveyor dead-lettered itself (reason in
    its headers) or one RabbitMQ dead-lettered (``x-death``: delivery limit, expiry)."""
    headers = header_view(msg)
    queue = headers.get(QUEUE)
    reason = headers.get(REASON)
    detail = headers.get(DETAIL, "")
    dead_at = headers.get(DEAD_AT)
    count = headers.get(DELIVERIES)
    deaths = headers.get("x-death")
    first = deaths[0] if isinstance(deaths, list) and deaths else {}
    if not isinstance(reason, str):
        raw = first.get("reason") if isinstance(first, dict) else None
        reason = _X_DEATH_REASONS.get(str(raw), str(raw or DeadLetterReason.MALFORMED))
        detail = f"dead-lettered by RabbitMQ ({raw})"
        when = first.get("time") if isinstance(first, dict) else None
        if isinstance(when, dt.datetime):
            dead_at = when.timestamp()
    if type(count) is not int:
        x_count = headers.get("x-delivery-count")
        count = min(x_count + 1, MAX_COUNT) if type(x_count) is int else 0
    return DeadLetter(
        id=message_id_of(msg, ""),
        queue=queue if isinstance(queue, str) else "",
        body=body_of(msg),
        reason=reason,
        detail=detail if isinstance(detail, str) else str(detail),
        dead_at=float(dead_at) if isinstance(dead_at, int | float) else 0.0,
        delivery_count=count,
    )
