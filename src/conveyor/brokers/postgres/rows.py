"""Rows to objects (never raising on odd data), receipts (``"seq:token"``) and what makes a
leased row undeliverable."""

from __future__ import annotations

from collections.abc import Sequence

from ..base import Delivery

#: A row returned by the lease statement: seq, id, queue, priority, body, deliveries, revoked.
LeasedRow = tuple[object, ...]


def lease_order(row: LeasedRow) -> tuple[int, int]:
    """Sort key of a leased row: priority 9 first, then FIFO."""
    return -as_int(row[3]), as_int(row[0])


def row_problem(row: LeasedRow) -> str | None:
    """Why a leased row cannot be delivered (written behind Conveyor's back, say by a
    transactional enqueue with hand-written SQL), or None."""
    _, id_, queue, priority, _, _, _ = row
    if not isinstance(priority, int) or not 0 <= priority <= 9:
        return f"priority {_shown(priority)} is not an integer 0-9"
    if not isinstance(id_, str) or not id_ or not isinstance(queue, str) or not queue:
        return f"id {_shown(id_)} or queue {_shown(queue)} is empty"
    return None


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def delivery_of(row: LeasedRow, token: int) -> Delivery:
    """A row returned by the lease statement, leased with ``token``."""
    seq, id_, queue, priority, body, count, revoked = row
    return Delivery(
        as_text(id_),
        as_text(queue),
        as_blob(body),
        as_int(priority),
        f"{seq}:{token}",
        as_int(count),
        bool(revoked),
    )


def as_text(value: object) -> str:
    return value if isinstance(value, str) else ("" if value is None else str(value))


def as_blob(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, memoryview | bytearray):
        return bytes(value)
    return b"" if value is None else str(value).encode("utf-8", "surrogateescape")


def as_int(value: object) -> int:
    if type(value) is int:  # not a bool: True is an int to isinstance
        return value
    try:
        return int(value)  # type: ignore[call-overload,no-any-return]  # any column value: bad ones read as 0 below
    except (TypeError, ValueError, OverflowError):
        return 0


def as_float(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]  # any column value: bad ones read as 0.0 below
    except (TypeError, ValueError):
        return 0.0


def parse_receipt(receipt: str) -> tuple[int, int] | None:
    """``"seq:token"`` to ints; None for a receipt this broker did not issue."""
    seq, _, token = receipt.partition(":")
    try:
        return int(seq), int(token)
    except ValueError:
        return None


def receipts(deliveries: Sequence[Delivery]) -> tuple[list[int], list[int]]:
    """The (seqs, tokens) arrays of ``deliveries`` (receipts of other brokers left out)."""
    seqs: list[int] = []
    tokens: list[int] = []
    for delivery in deliveries:
        held = parse_receipt(delivery.receipt)
        if held is not None:
            seqs.append(held[0])
            tokens.append(held[1])
    return seqs, tokens
