"""Owned locks (src/conveyor/kv/locks.py) on the ``kv`` of every broker and result store:
exactly one holder under concurrent takers, hand-over and release only by value, expiry."""

from __future__ import annotations

import functools
import time

from conveyor.kv import KeyValue
from conveyor.kv.locks import Locks

from .support import EARLY_SLACK, new_id, run_together, wait_until


def _locks(kv: KeyValue) -> Locks:
    assert isinstance(kv, Locks), f"{type(kv).__name__} has no owned locks"
    return kv


def test_put_new_has_exactly_one_holder_and_everyone_learns_it(
    kv: KeyValue, kv_peer: KeyValue
) -> None:
    key = f"unique:report:{new_id()}"
    clients = [_locks(kv if n % 2 else kv_peer) for n in range(16)]
    calls = [
        functools.partial(c.put_new, key, f"task-{n}".encode(), 60) for n, c in enumerate(clients)
    ]
    held = run_together(calls)
    winners = [n for n, found in enumerate(held) if found is None]
    assert len(winners) == 1, held
    owner = f"task-{winners[0]}".encode()
    assert all(found == owner for found in held if found is not None), held
    assert kv.get_value(key) == owner
    assert _locks(kv_peer).put_new(key, b"late", 60) == owner


def test_swap_and_delete_only_with_the_holders_value(kv: KeyValue, kv_peer: KeyValue) -> None:
    mine, theirs = _locks(kv), _locks(kv_peer)
    key = f"unique:{new_id()}"
    assert mine.swap(key, b"a", b"b", 60) is False  # nothing held
    assert mine.delete_if(key, b"a") is False
    assert mine.put_new(key, b"a", 60) is None
    assert theirs.swap(key, b"x", b"b", 60) is False
    assert theirs.delete_if(key, b"x") is False
    assert kv.get_value(key) == b"a"
    swaps = run_together(
        [functools.partial(c.swap, key, b"a", b"b", 60) for c in (mine, theirs) * 4]
    )
    assert swaps.count(True) == 1, swaps
    assert kv_peer.get_value(key) == b"b"
    assert mine.delete_if(key, b"a") is False
    assert theirs.delete_if(key, b"b") is True
    assert kv.get_value(key) is None
    assert mine.put_new(key, b"c") is None  # without ttl
    assert theirs.put_new(key, b"d", 60) == b"c"


def test_an_expired_lock_is_absent(kv: KeyValue, kv_peer: KeyValue) -> None:
    mine, theirs = _locks(kv), _locks(kv_peer)
    key = f"unique:{new_id()}"
    taken = time.monotonic()
    assert mine.put_new(key, b"old", 0.5) is None
    assert theirs.put_new(key, b"new", 0.5) == b"old"
    wait_until(lambda: theirs.put_new(key, b"new", 60) is None, 5.0, "lock expiry")
    assert time.monotonic() - taken >= 0.5 - EARLY_SLACK, "lock expired early"
    assert mine.delete_if(key, b"old") is False
    assert kv.get_value(key) == b"new"
    assert mine.swap(key, b"new", b"short", 0.3) is True
    wait_until(lambda: kv.get_value(key) is None, 5.0, "swapped lock expiry")
    assert theirs.swap(key, b"short", b"x", 60) is False
