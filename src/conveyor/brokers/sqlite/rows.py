"""Rows to objects (never raising on odd data) and receipts (``"seq:token"``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..._sqlite import chunks, marks
from ..base import Delivery

#: A statement with its arguments.
Statement = tuple[str, tuple[Any, ...]]


def lease_order(row: tuple[Any, ...]) -> tuple[int, int]:
    """Sort key of a leased row: priority 9 first, then FIFO."""
    return -as_int(row[3]), as_int(row[0])


def row_problem(row: tuple[Any, ...]) -> str | None:
    """Why a row returned by the lease statement cannot be delivered (SQLite keeps whatever
    was written into a column, whatever its declared type), or None."""
    _, id_, queue, priority, _, count, _ = row
    if type(priority) is not int or not 0 <= priority <= 9:
        return f"priority {_shown(priority)} is not an integer 0-9"
    if type(count) is not int:
        return f"delivery count {_shown(count)} is not an integer"
    if type(id_) is not str or not id_ or type(queue) is not str:
        return f"id {_shown(id_)} or queue {_shown(queue)} is not text"
    return None


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def delivery_of(row: tuple[Any, ...], token: int) -> Delivery:
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


def as_text(value: Any) -> str:
    return value if type(value) is str else ("" if value is None else str(value))


def as_blob(value: Any) -> bytes:
    if type(value) is bytes:
        return value
    if value is None:
        return b""
    return str(value).encode("utf-8", "surrogateescape")


#: SQLite's INTEGER range: what as_int returns can be written back.
_INT64 = (-(2**63), 2**63 - 1)


def as_int(value: Any) -> int:
    if type(value) is int:
        return value
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        return 0
    return min(max(number, _INT64[0]), _INT64[1])  # e.g. the REAL 9.3e18


def as_float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def parse_receipt(receipt: str) -> tuple[int, int] | None:
    """``"seq:token"`` to ints; None for a receipt this broker did not issue."""
    seq, _, token = receipt.partition(":")
    try:
        return int(seq), int(token)
    except ValueError:
        return None


def receipt_statements(
    sql: str, deliveries: Sequence[Delivery], params: Sequence[Any] = ()
) -> list[Statement]:
    """``sql`` (ending in ``token = ? AND seq IN ({seqs})``) with its arguments, once per lease
    batch (and chunk) of ``deliveries``."""
    by_token: dict[int, list[int]] = {}
    for delivery in deliveries:
        held = parse_receipt(delivery.receipt)
        if held is not None:
            by_token.setdefault(held[1], []).append(held[0])
    statements = []
    for token, seqs in by_token.items():
        for part in chunks(seqs):
            statements.append((sql.format(seqs=marks(len(part))), (*params, token, *part)))
    return statements
