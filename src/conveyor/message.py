"""The message envelope and its JSON encoding.

Arguments and results travel as JSON. A few common Python types that JSON lacks round-trip
through type tags (``{"$type": "datetime", "v": "..."}``): datetime, date, time, UUID, Decimal,
and dicts whose keys would clash with the tag. Everything else is refused at encoding time with
an error that names where the bad value sits, so nothing half-encoded ever reaches a broker.

Decoding is bounded and total: a body nested deeper than :data:`MAX_BODY_DEPTH` levels (checked
on the bytes, before any recursive decoder sees them), larger than the worker's
``message_max_bytes``, not an object of the envelope's fields and types, or with values no
worker could act on (an empty id or task name, a non-finite or absurd time limit, a bad chord
or callback field) raises :class:`~conveyor.exceptions.MalformedMessage` with its dead-letter
reason; nothing else escapes :func:`decode_envelope`. The producer refuses values nested deeper
than :data:`MAX_DEPTH` with a :class:`~conveyor.exceptions.SerializationError` naming them.
"""

from __future__ import annotations

import datetime as dt
import math
import re
import uuid
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any, TypedDict, overload

import msgspec

from .exceptions import MalformedMessage, MessageTooLarge, SerializationError
from .signing import Signer, strip_signature

TAG = "$type"
PROTOCOL_VERSION = 1

#: How deeply lists and dicts may nest inside one argument, header or result value.
MAX_DEPTH = 100
#: How deeply a whole message body may nest: its values (:data:`MAX_DEPTH`) inside the
#: envelope and the workflow signatures of its callbacks. Far below Python's recursion limit,
#: so every decoder and walker of a message stays safe.
MAX_BODY_DEPTH = 200
#: The largest time limit (seconds) a task may have: ten years. Anything longer is a mistake
#: (and overflows the timer's clock arithmetic).
MAX_TIME_LIMIT = 10 * 365 * 86400.0

#: JSON data as :func:`to_json_value` produces it (type tags are JSON objects too).
type JSONValue = str | int | float | bool | list[JSONValue] | dict[str, JSONValue] | None


class ChordInfo(TypedDict):
    """What each header task of a chord carries (``Envelope.chord``): the chord's id and how
    many header tasks join it."""

    id: str
    size: int


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()


def to_json_value(value: object, where: str = "value", _depth: int = 0) -> JSONValue:
    """Return ``value`` as plain JSON data with type tags; raise SerializationError otherwise
    (also for lists and dicts nested deeper than :data:`MAX_DEPTH`)."""
    # Fast path for the common scalar types; exact type checks keep bool/int subclasses honest.
    kind = type(value)
    if type(value) is str or type(value) is int or type(value) is float or type(value) is bool:
        return value
    if value is None:
        return None
    if type(value) is list or type(value) is tuple:
        if _depth >= MAX_DEPTH:
            raise _too_deep(where)
        depth = _depth + 1
        return [to_json_value(item, f"{where}[{i}]", depth) for i, item in enumerate(value)]
    if type(value) is dict:
        if _depth >= MAX_DEPTH:
            raise _too_deep(where)
        depth = _depth + 1
        out: dict[str, JSONValue] = {}
        for key, item in value.items():
            if type(key) is not str:
                raise SerializationError(
                    f"{where} has a key {key!r} of type {type(key).__name__}; JSON object keys "
                    "must be strings"
                )
            out[key] = to_json_value(item, f"{where}[{key!r}]", depth)
        if TAG in out:
            return {TAG: "dict", "v": out}
        return out
    if type(value) is dt.datetime:
        return {TAG: "datetime", "v": value.isoformat()}
    if type(value) is dt.date:
        return {TAG: "date", "v": value.isoformat()}
    if type(value) is dt.time:
        return {TAG: "time", "v": value.isoformat()}
    if type(value) is uuid.UUID:
        return {TAG: "uuid", "v": str(value)}
    if type(value) is Decimal:
        return {TAG: "decimal", "v": str(value)}
    if isinstance(value, bool):  # subclasses of the JSON scalars, e.g. IntEnum / StrEnum
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    raise SerializationError(
        f"{where} is a {kind.__module__}.{kind.__qualname__}, which is not JSON-serializable. "
        "Pass plain data (ids, strings, numbers, lists, dicts) instead of objects."
    )


def _too_deep(where: str) -> SerializationError:
    # ``where`` of a deep value is long: name where it starts and how deep it goes.
    head = where if len(where) <= 80 else where[:77] + "..."
    return SerializationError(
        f"{head} nests lists/dicts more than {MAX_DEPTH} levels deep; flatten the data or "
        "store it elsewhere and pass a reference"
    )


@overload
def from_json_value(value: list[JSONValue], _depth: int = 0) -> list[object]: ...
# A JSON object decodes to a dict, or to the value its type tag names (datetime, UUID, ...):
# this result should be `object`. It is loose only because AsyncResult.kwargs (result.py)
# returns it as a dict; once that decodes kwargs per key (as decode_arguments does), it goes.
@overload
def from_json_value(value: dict[str, JSONValue], _depth: int = 0) -> Any: ...
@overload
def from_json_value(value: object, _depth: int = 0) -> object: ...
def from_json_value(value: object, _depth: int = 0) -> object:
    """Undo :func:`to_json_value`: rebuild tagged values (a list stays a list, an untagged
    dict a dict). Raises ValueError for a bad type tag, or for lists and dicts nested deeper
    than :data:`MAX_DEPTH` (which :func:`to_json_value` never produces)."""
    if type(value) is list:
        if _depth >= MAX_DEPTH:
            raise ValueError(f"lists/dicts nested more than {MAX_DEPTH} levels deep")
        return [from_json_value(item, _depth + 1) for item in value]
    if type(value) is dict:
        if _depth >= MAX_DEPTH:
            raise ValueError(f"lists/dicts nested more than {MAX_DEPTH} levels deep")
        tag = value.get(TAG)
        if tag is None:
            return {key: from_json_value(item, _depth + 1) for key, item in value.items()}
        raw = value.get("v")
        if tag == "result":
            # A result handle a task returned (see worker.execution): its as_tuple() form, as
            # Celery's JSON serializer stores it. AsyncResult.get() rebuilds the handle.
            if not isinstance(raw, list):
                raise ValueError(f"type tag 'result' holds a {type(raw).__name__}, not a list")
            return from_json_value(raw, _depth + 1)
        if tag == "dict":
            if not isinstance(raw, dict):
                raise ValueError(f"type tag 'dict' holds a {type(raw).__name__}, not an object")
            return {key: from_json_value(item, _depth + 1) for key, item in raw.items()}
        if not isinstance(raw, str):
            raise ValueError(f"type tag {tag!r} holds a {type(raw).__name__}, not a string")
        if tag == "datetime":
            return dt.datetime.fromisoformat(raw)
        if tag == "date":
            return dt.date.fromisoformat(raw)
        if tag == "time":
            return dt.time.fromisoformat(raw)
        if tag == "uuid":
            return uuid.UUID(raw)
        if tag == "decimal":
            return Decimal(raw)
        raise ValueError(f"unknown type tag {tag!r}")
    return value


def dumps(value: object, where: str = "value") -> bytes:
    """Encode any supported value to JSON bytes (tagged)."""
    return _encoder.encode(to_json_value(value, where))


def loads(data: bytes | str) -> object:
    """Decode JSON bytes produced by :func:`dumps`."""
    decoded: object = _decoder.decode(data)
    return from_json_value(decoded)


class Envelope(msgspec.Struct, omit_defaults=True, forbid_unknown_fields=False):
    """One task message. ``args``/``kwargs`` hold tagged JSON values (see :func:`to_json_value`),
    ``callbacks``/``errbacks`` serialized signatures (``Signature.to_dict()``). They are typed
    ``object`` because msgspec cannot decode into the recursive :data:`JSONValue`.

    Times are POSIX timestamps (seconds). ``eta`` is informational here: the broker holds a
    delayed message until it is due, so a worker never waits on it.
    """

    id: str
    task: str
    args: list[object] = msgspec.field(default_factory=list)
    kwargs: dict[str, object] = msgspec.field(default_factory=dict)
    queue: str = "default"
    priority: int = 5
    eta: float | None = None
    expires: float | None = None
    retries: int = 0
    root_id: str | None = None
    parent_id: str | None = None
    group_id: str | None = None
    group_index: int | None = None
    group_size: int | None = None
    chord: ChordInfo | None = None
    callbacks: list[dict[str, object]] = msgspec.field(default_factory=list)
    errbacks: list[dict[str, object]] = msgspec.field(default_factory=list)
    headers: dict[str, object] = msgspec.field(default_factory=dict)
    time_limit: float | None = None
    soft_time_limit: float | None = None
    ignore_result: bool = False
    acks_late: bool = True
    created_at: float = 0.0
    v: int = PROTOCOL_VERSION


_envelope_decoder = msgspec.json.Decoder(Envelope)


def encode_envelope(
    envelope: Envelope, max_bytes: int | None = None, signer: Signer | None = None
) -> bytes:
    """Encode an envelope whose args/kwargs are already tagged JSON values (and sign it with
    ``signer``). Raises MessageTooLarge over ``max_bytes``, SerializationError for a body no
    worker would decode (nested deeper than :data:`MAX_BODY_DEPTH`)."""
    data = _encoder.encode(envelope)
    if max_bytes is not None and len(data) > max_bytes:
        raise MessageTooLarge(
            f"message for task {envelope.task!r} is {len(data)} bytes, over message_max_bytes "
            f"({max_bytes}). Store large data elsewhere and pass a reference (an id, a path)."
        )
    if body_depth_exceeds(data, MAX_BODY_DEPTH):
        raise SerializationError(
            f"message for task {envelope.task!r} nests more than {MAX_BODY_DEPTH} levels deep "
            "(arguments, headers and workflow callbacks together)"
        )
    return data if signer is None else signer.sign(data)


# A JSON string (escapes included), so that brackets inside strings are not counted.
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_BRACKET_WEIGHTS = bytes.maketrans(b"[{]}", b"\x02\x02\x00\x00")


def body_depth_exceeds(data: bytes, limit: int) -> bool:
    """Whether the JSON text ``data`` nests arrays/objects more than ``limit`` levels deep,
    found without a recursive parser (C-speed counts over the bytes; it only runs for bodies
    holding more than ``limit`` brackets). Malformed text that is not too deep answers False:
    the decoder then says what is wrong with it; unbalanced text that opens more than
    ``limit`` levels somewhere answers True, as a recursive decoder would descend them."""
    if data.count(b"[") + data.count(b"{") <= limit:
        return False
    # Opening brackets as 2, closing ones as 0: over n brackets the depth changes by twice
    # the 2s counted less n. From depth d it cannot pass ``limit`` within the next
    # ``limit - d`` brackets, so only the depth after each such stretch is computed: a deep
    # body is found in a few counts, a shallow one in len / limit.
    brackets = _JSON_STRING.sub(b"", data).translate(_BRACKET_WEIGHTS, _NOT_BRACKETS)
    at, depth, end = 0, 0, len(brackets)
    while at < end:
        stop = min(at + limit - depth + 1, end)
        depth += 2 * brackets.count(2, at, stop) - (stop - at)
        if depth > limit:
            return True
        at = stop
    return False


def decode_envelope(
    data: bytes, max_bytes: int | None = None, signer: Signer | None = None
) -> Envelope:
    """Decode broker bytes, raising :class:`MalformedMessage` with a dead-letter reason
    (``undecodable``: not JSON, or not bytes at all; ``malformed``: JSON, but too large, too
    deep, a missing field, a wrong type or an impossible value; ``bad_signature``: with a
    ``signer``, a body not signed by one of its keys). Nothing else escapes. Without a
    signer, a signature is stripped unverified (see :mod:`conveyor.signing`)."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MalformedMessage("undecodable", f"the body is a {type(data).__name__}, not bytes")
    data = strip_signature(data) if signer is None else signer.verify(data)
    if max_bytes is not None and len(data) > max_bytes:
        raise MalformedMessage(
            "malformed", f"the body is {len(data)} bytes, over message_max_bytes ({max_bytes})"
        )
    if body_depth_exceeds(bytes(data), MAX_BODY_DEPTH):
        raise MalformedMessage("malformed", f"nested more than {MAX_BODY_DEPTH} levels deep")
    try:
        envelope = _envelope_decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise MalformedMessage("malformed", str(exc)) from None
    except msgspec.DecodeError as exc:
        raise MalformedMessage("undecodable", str(exc)) from None
    except RecursionError:  # not reached after the depth check; kept as a last guard
        raise MalformedMessage("malformed", "nested too deeply to decode") from None
    problem = envelope_problem(envelope)
    if problem:
        raise MalformedMessage("malformed", problem)
    return envelope


def envelope_problem(envelope: Envelope) -> str | None:
    """What makes a well-typed envelope impossible to act on, or None."""
    if not envelope.id or not envelope.task:
        return "empty id or task name"
    for name in ("time_limit", "soft_time_limit"):
        limit: float | None = getattr(envelope, name)
        if limit is not None and (not math.isfinite(limit) or not 0 <= limit <= MAX_TIME_LIMIT):
            return f"{name} {limit!r} is not a number of seconds from 0 to {MAX_TIME_LIMIT:.0f}"
    chord = envelope.chord
    if chord is not None and (not chord["id"] or chord["size"] < 1):
        return f"chord {chord!r} needs a non-empty id and a size of at least 1"
    return None


def encode_arguments(
    task: str, args: Iterable[object] | None, kwargs: Mapping[str, object] | None
) -> tuple[list[object], dict[str, object]]:
    """Tag call arguments, naming the task and the argument in any error."""
    try:
        tagged_args: list[object] = [
            to_json_value(a, f"argument {i}") for i, a in enumerate(args or ())
        ]
        tagged_kwargs: dict[str, object] = {}
        for key, value in (kwargs or {}).items():
            if not isinstance(key, str):
                raise SerializationError(f"keyword argument name {key!r} is not a string")
            tagged_kwargs[key] = to_json_value(value, f"keyword argument {key!r}")
    except SerializationError as exc:
        raise SerializationError(f"cannot send task {task!r}: {exc}") from None
    return tagged_args, tagged_kwargs


def decode_arguments(envelope: Envelope) -> tuple[list[object], dict[str, object]]:
    """Rebuild the tagged arguments of an envelope."""
    return (
        [from_json_value(a) for a in envelope.args],
        {k: from_json_value(v) for k, v in envelope.kwargs.items()},
    )
