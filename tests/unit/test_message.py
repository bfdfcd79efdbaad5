from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from enum import IntEnum, StrEnum

import pytest

from conveyor.exceptions import MalformedMessage, MessageTooLarge, SerializationError
from conveyor.message import (
    Envelope,
    decode_envelope,
    dumps,
    encode_arguments,
    encode_envelope,
    loads,
)


class Color(StrEnum):
    RED = "red"


class Level(IntEnum):
    HIGH = 9


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        3,
        2.5,
        "text ✓",
        [1, [2, 3]],
        {"a": {"b": [1, 2]}},
        dt.datetime(2026, 3, 29, 2, 30, tzinfo=dt.UTC),
        dt.datetime(2026, 3, 29, 2, 30),
        dt.date(2024, 2, 29),
        dt.time(7, 30, 15),
        uuid.UUID("12345678-1234-5678-1234-567812345678"),
        Decimal("10.05"),
        {"$type": "user data that looks like a tag", "v": 1},
        {"nested": [{"when": dt.date(2026, 1, 1)}]},
    ],
)
def test_round_trip(value: object) -> None:
    assert loads(dumps(value)) == value


def test_tagged_types_keep_their_type() -> None:
    value = loads(dumps([dt.datetime(2026, 1, 1, tzinfo=dt.UTC), Decimal("1.10")]))
    assert isinstance(value[0], dt.datetime)
    assert value[0].tzinfo is not None
    assert isinstance(value[1], Decimal)
    assert str(value[1]) == "1.10"


def test_enum_members_become_their_value() -> None:
    assert loads(dumps([Color.RED, Level.HIGH])) == ["red", 9]


def test_tuples_become_lists() -> None:
    assert loads(dumps((1, 2))) == [1, 2]


@pytest.mark.parametrize(
    ("args", "kwargs", "where"),
    [
        ((object(),), None, "argument 0"),
        ((1, {1, 2}), None, "argument 1"),
        ((), {"user": object()}, "keyword argument 'user'"),
        (([1, {"deep": b"bytes"}],), None, "argument 0[1]['deep']"),
        (({1: "int key"},), None, "key 1"),
    ],
)
def test_non_json_arguments_name_the_task_and_position(
    args: tuple[object, ...], kwargs: dict[str, object] | None, where: str
) -> None:
    with pytest.raises(SerializationError) as info:
        encode_arguments("proj.tasks.send", args, kwargs)
    assert "proj.tasks.send" in str(info.value)
    assert where in str(info.value)


def test_oversized_message_is_refused() -> None:
    envelope = Envelope(id="1", task="t", args=["x" * 5000])
    with pytest.raises(MessageTooLarge, match="message_max_bytes"):
        encode_envelope(envelope, max_bytes=1024)
    assert encode_envelope(envelope, max_bytes=10_000)


def test_envelope_round_trip() -> None:
    envelope = Envelope(
        id="abc", task="t", args=[1], kwargs={"k": "v"}, priority=9, headers={"h": 1}
    )
    assert decode_envelope(encode_envelope(envelope)) == envelope


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\xff\xfe not json", "undecodable"),
        (b"{truncated", "undecodable"),
        (b'{"task": "t"}', "malformed"),
        (b'{"id": "1", "task": "t", "args": "not a list"}', "malformed"),
        (b'{"id": "", "task": "t"}', "malformed"),
        (b"[1, 2]", "malformed"),
    ],
)
def test_bad_bytes_give_a_dead_letter_reason(body: bytes, reason: str) -> None:
    with pytest.raises(MalformedMessage) as info:
        decode_envelope(body)
    assert info.value.reason == reason
