"""Parsing the replies of the Redis broker's scripts: total (never raising on what a damaged
record holds), so a bad field is a bad value, not a crash."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from ..base import Delivery, Departure


def _by_queue(deliveries: Iterable[Delivery]) -> dict[str, list[str]]:
    """The receipts of ``deliveries`` by queue."""
    out: dict[str, list[str]] = {}
    for delivery in deliveries:
        out.setdefault(delivery.queue, []).append(delivery.receipt)
    return out


def _packed_body(value: bytes) -> bytes | None:
    """The body of a ``Q:m`` value, ``<priority> <length of id> <id><body>`` or ``<priority>
    <length of id>:<position in the body> <body>`` (None when it is neither: see common.lua)."""
    _, _, rest = value.partition(b" ")
    length, _, rest = rest.partition(b" ")
    length, at, position = length.partition(b":")
    if at:
        return rest if length.isdigit() and position.isdigit() else None
    if not length.isdigit() or int(length) > len(rest):
        return None
    return rest[int(length) :]


def _departures(queue: str, reply: list[Any]) -> list[Departure]:
    """The departures the departures script took from ``queue``: uid, value pairs (a value
    that is not '<reason> <length> <id><body>' is skipped: it frees and counts nothing)."""
    out: list[Departure] = []
    for i in range(0, len(reply) - 1, 2):
        uid, value = _text(reply[i]), _blob(reply[i + 1])
        reason, _, rest = value.partition(b" ")
        length, _, rest = rest.partition(b" ")
        if not length.isdigit() or int(length) > len(rest):
            continue
        size = int(length)
        task_id = rest[:size].decode("utf-8", "replace")
        out.append(
            Departure(
                task_id, queue, rest[size:], reason.decode("utf-8", "replace"), f"{uid}:{queue}"
            )
        )
    return out


def _deliveries(reply: list[Any]) -> list[Delivery]:
    # The lease script checked every field it returns (see message_problem in common.lua);
    # the parsing is total all the same.
    out: list[Delivery] = []
    for i in range(1, len(reply) - 6, 7):
        receipt, id_, queue, priority, body, count, revoked = reply[i : i + 7]
        # Positional (a frozen dataclass's keywords cost a third more), the usual types first.
        out.append(
            Delivery(
                id_.decode("utf-8", "replace") if type(id_) is bytes else _text(id_),
                queue.decode("utf-8", "replace") if type(queue) is bytes else _text(queue),
                body if type(body) is bytes else _blob(body),
                priority if type(priority) is int else int(_number(priority)),
                receipt.decode("utf-8", "replace") if type(receipt) is bytes else _text(receipt),
                count if type(count) is int else int(_number(count)),
                revoked == 1,
            )
        )
    return out


def _text(value: object) -> str:
    """A reply field as text (never raising: bytes that are not UTF-8 are replaced)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


def _blob(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    return b"" if value is None else str(value).encode()


def _number(value: object) -> float:
    """A reply field as a finite number, 0 when it is not one."""
    if isinstance(value, int):
        return value
    try:
        number = float(_text(value))
    except ValueError:
        return 0.0
    return number if math.isfinite(number) else 0.0
