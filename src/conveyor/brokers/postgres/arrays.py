"""One-dimensional arrays in PostgreSQL's binary format, built in one pass per array.

A bulk publish sends its messages as six arrays (``unnest`` in ``statements.PUBLISH``);
psycopg's generic array dumper looks up a dumper per element and costs several µs per
message, more than encoding the message. These build the same bytes (``array_send``'s
format: header, one dimension, then each element as length + data, -1 for NULL) with a few
C-level joins; :func:`use_arrays` lets a connection send them as they are.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from psycopg.adapt import Dumper
from psycopg.pq import Format

if TYPE_CHECKING:
    import psycopg

_HEADER = struct.Struct(">iiIii")  # ndim, has nulls, element type, length, lower bound
_EMPTY = struct.Struct(">iiI")  # ndim 0, no nulls, element type
_LENGTH = struct.Struct(">i")
_INT2 = struct.Struct(">ih")
_FLOAT8 = struct.Struct(">id")
_NULL = _LENGTH.pack(-1)

TEXT, BYTEA, INT2, FLOAT8 = 25, 17, 21, 701


class Array:
    """An array already in PostgreSQL's binary format (see :func:`text_array` etc.)."""

    __slots__ = ("data",)
    #: The element type's oid and the array type's oid.
    element: ClassVar[int]
    oid: ClassVar[int]

    def __init__(self, data: bytes) -> None:
        self.data = data


class TextArray(Array):
    __slots__ = ()
    element, oid = TEXT, 1009


class ByteaArray(Array):
    __slots__ = ()
    element, oid = BYTEA, 1001


class Int2Array(Array):
    __slots__ = ()
    element, oid = INT2, 1005


class Float8Array(Array):
    __slots__ = ()
    element, oid = FLOAT8, 1022


def _header(element: int, count: int, nulls: bool = False) -> bytes:
    if count == 0:
        return _EMPTY.pack(0, 0, element)
    return _HEADER.pack(1, int(nulls), element, count, 1)


def bytea_array(values: Sequence[bytes]) -> ByteaArray:
    parts = [_header(BYTEA, len(values))]
    for value in values:
        parts += (_LENGTH.pack(len(value)), value)
    return ByteaArray(b"".join(parts))


def text_array(values: Sequence[str], encoding: str = "utf-8") -> TextArray:
    parts = [_header(TEXT, len(values))]
    for value in values:
        data = value.encode(encoding)
        parts += (_LENGTH.pack(len(data)), data)
    return TextArray(b"".join(parts))


def int2_array(values: Sequence[int]) -> Int2Array:
    body = struct.pack(">" + "ih" * len(values), *[x for v in values for x in (2, v)])
    return Int2Array(_header(INT2, len(values)) + body)


def float8_array(values: Sequence[float | None]) -> Float8Array:
    if None not in values:
        body = struct.pack(">" + "id" * len(values), *[x for v in values for x in (8, v)])
        return Float8Array(_header(FLOAT8, len(values)) + body)
    parts = [_header(FLOAT8, len(values), nulls=True)]
    parts += [_NULL if v is None else _FLOAT8.pack(8, v) for v in values]
    return Float8Array(b"".join(parts))


class _ArrayDumper(Dumper):
    format = Format.BINARY

    def dump(self, obj: Any) -> bytes:
        data: bytes = obj.data
        return data


_DUMPERS = {
    kind: type(f"{kind.__name__}Dumper", (_ArrayDumper,), {"oid": kind.oid})
    for kind in (TextArray, ByteaArray, Int2Array, Float8Array)
}


def sends_binary(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
    """Whether ``conn``'s cursors send parameters as the server binds them. Client-side
    binding cursors (Django's default for psycopg 3: ``ClientCursor``) quote every
    parameter into the query text, so they take lists, not :class:`Array`."""
    import psycopg

    factory = conn.cursor_factory
    return not (
        isinstance(factory, type)
        and issubclass(factory, (psycopg.ClientCursor, psycopg.AsyncClientCursor))
    )


def use_arrays(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> None:
    """Let ``conn`` send :class:`Array` parameters (registered once per connection)."""
    adapters = conn.adapters
    if getattr(adapters, "_conveyor_arrays", False):
        return
    for kind, dumper in _DUMPERS.items():
        adapters.register_dumper(kind, dumper)
    adapters._conveyor_arrays = True  # type: ignore[attr-defined]
