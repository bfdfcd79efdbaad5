"""The message envelope and its JSON encoding.

Arguments and results travel as JSON. A few common Python types that JSON lacks round-trip
through type tags (``{"$type": "datetime", "v": "..."}``): datetime, date, time, UUID, Decimal,
and dicts whose keys would clash with the tag. Everything else is refused at encoding time with
an error that names where the bad value sits, so nothing half-encoded ever reaches a broker.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any, TypedDict, overload

import msgspec

from .exceptions import MalformedMessage, MessageTooLarge, SerializationError

TAG = "$type"
PROTOCOL_VERSION = 1

#: JSON data as :func:`to_json_value` produces it (type tags are JSON objects too).
type JSONValue = str | int | float | bool | list[JSONValue] | dict[str, JSONValue] | None


class ChordInfo(TypedDict):
    """What each header task of a chord carries (``Envelope.chord``): the chord's id and how
    many header tasks join it."""

    id: str
    size: int


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()


def to_json_value(value: object, where: str = "value") -> JSONValue:
    """Return ``value`` as plain JSON data with type tags; raise SerializationError otherwise."""
    # Fast path for the common scalar types; exact type checks keep bool/int subclasses honest.
    kind = type(value)
    if type(value) is str or type(value) is int or type(value) is float or type(value) is bool:
        return value
    if value is None:
        return None
    if type(value) is list or type(value) is tuple:
        return [to_json_value(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if type(value) is dict:
        out: dict[str, JSONValue] = {}
        for key, item in value.items():
            if type(key) is not str:
                raise SerializationError(
                    f"{where} has a key {key!r} of type {type(key).__name__}; JSON object keys "
                    "must be strings"
                )
            out[key] = to_json_value(item, f"{where}[{key!r}]")
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


@overload
def from_json_value(value: list[JSONValue]) -> list[object]: ...
# A JSON object decodes to a dict, or to the value its type tag names (datetime, UUID, ...):
# this result should be `object`. It is loose only because AsyncResult.kwargs (result.py)
# returns it as a dict; once that decodes kwargs per key (as decode_arguments does), it goes.
@overload
def from_json_value(value: dict[str, JSONValue]) -> Any: ...
@overload
def from_json_value(value: object) -> object: ...
def from_json_value(value: object) -> object:
    """Undo :func:`to_json_value`: rebuild tagged values (a list stays a list, an untagged
    dict a dict)."""
    if type(value) is list:
        return [from_json_value(item) for item in value]
    if type(value) is dict:
        tag = value.get(TAG)
        if tag is None:
            return {key: from_json_value(item) for key, item in value.items()}
        raw = value.get("v")
        if tag == "dict":
            if not isinstance(raw, dict):
                raise ValueError(f"type tag 'dict' holds a {type(raw).__name__}, not an object")
            return {key: from_json_value(item) for key, item in raw.items()}
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


def encode_envelope(envelope: Envelope, max_bytes: int | None = None) -> bytes:
    """Encode an envelope whose args/kwargs are already tagged JSON values."""
    data = _encoder.encode(envelope)
    if max_bytes is not None and len(data) > max_bytes:
        raise MessageTooLarge(
            f"message for task {envelope.task!r} is {len(data)} bytes, over message_max_bytes "
            f"({max_bytes}). Store large data elsewhere and pass a reference (an id, a path)."
        )
    return data


def decode_envelope(data: bytes) -> Envelope:
    """Decode broker bytes, raising :class:`MalformedMessage` with a dead-letter reason."""
    try:
        envelope = _envelope_decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise MalformedMessage("malformed", str(exc)) from None
    except msgspec.DecodeError as exc:
        raise MalformedMessage("undecodable", str(exc)) from None
    if not envelope.id or not envelope.task:
        raise MalformedMessage("malformed", "empty id or task name")
    return envelope


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
