"""Commands packed by hiredis (``conveyor._redis.packed``) are the bytes redis-py's own
serializer writes, and what hiredis does not take is refused by redis-py, with its error."""

from __future__ import annotations

import pytest
from redis.connection import Connection
from redis.exceptions import DataError

from conveyor._redis import Command, packed

COMMANDS: list[Command] = [
    ("SADD", b"{conveyor}:queues", "default"),
    ("EVALSHA", "a" * 40, 3, b"{q}:seq", b"{q}", "", 0, -1, 60000, 1.5, 0.1, 1e20, 10**20),
    ("SET", "k", "é ✓", b"\x00\xff"),
    ("SET", "k", float("inf"), -0.0, memoryview(b"ab")),
]


@pytest.mark.parametrize("commands", [COMMANDS[:1], COMMANDS, [COMMANDS[2]] * 3])
def test_hiredis_packs_the_bytes_redis_py_would(commands: list[Command]) -> None:
    conn = Connection()
    assert b"".join(packed(conn, commands)) == b"".join(conn.pack_commands(commands))


def test_a_large_argument_is_packed_whole() -> None:
    body = b"x" * 200_000
    conn = Connection()
    expected = b"".join(conn.pack_commands([("SET", "k", body)]))
    assert packed(conn, [("SET", "k", body)]) == [expected]  # one chunk


def test_what_hiredis_does_not_take_is_refused_by_redis_py() -> None:
    conn = Connection()
    for bad in (True, None, object()):
        with pytest.raises(DataError):  # redis-py's own refusal, not hiredis' TypeError
            packed(conn, [("SET", "k", bad)])
