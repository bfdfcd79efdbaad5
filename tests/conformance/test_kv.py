"""The KeyValue promises (src/conveyor/kv/__init__.py), run against the ``kv`` of every broker
and every result store (fixtures ``kv``, ``kv_peer`` and ``make_kv`` in conftest.py)."""

from __future__ import annotations

import functools
import time

import pytest

from conveyor.kv import KeyValue

from .conftest import KeyValueFactory
from .support import EARLY_SLACK, new_id, run_together, wait_until


# -- claim -------------------------------------------------------------------------------
def test_claim_has_exactly_one_winner(kv: KeyValue, kv_peer: KeyValue) -> None:
    key = "beat:cleanup:1700000000"
    clients = [kv if n % 2 else kv_peer for n in range(16)]
    wins = run_together([functools.partial(client.claim, key, 60) for client in clients])
    assert wins.count(True) == 1, wins
    assert kv.claim(key, 60) is False
    assert kv_peer.claim("beat:cleanup:1700000060", 60) is True
    assert kv_peer.claim(f"{key}:2") is True  # without TTL
    assert kv.claim(f"{key}:2") is False


def test_claim_is_claimable_again_after_ttl(kv: KeyValue, kv_peer: KeyValue) -> None:
    key = "beat:cleanup:1700000000"
    claimed_at = time.monotonic()
    assert kv.claim(key, 0.5) is True
    assert kv_peer.claim(key, 0.5) is False
    wait_until(lambda: kv_peer.claim(key), 5.0, "claim TTL expiry")
    assert time.monotonic() - claimed_at >= 0.5 - EARLY_SLACK, "claim expired early"
    assert kv.claim(key, 60) is False


# -- values ------------------------------------------------------------------------------
def test_values_round_trip_ttl_and_delete(kv: KeyValue, kv_peer: KeyValue) -> None:
    raw = b"\x00\xff\xfe{binary}"
    kv.set_value("w.1", raw)
    assert kv_peer.get_value("w.1") == raw
    kv.set_value("w.1", b"v2")
    assert kv.get_value("w.1") == b"v2"
    assert kv.get_value("missing") is None

    kv.delete_value("w.1")
    assert kv.get_value("w.1") is None
    kv.delete_value("w.1")  # missing: no error

    set_at = time.monotonic()
    kv.set_value("persisted", b"old", ttl=0.3)
    kv.set_value("persisted", b"new")  # a write without ttl makes the value persistent
    kv.set_value("short", b"x", ttl=0.5)
    assert kv.get_value("short") == b"x"
    wait_until(lambda: kv.get_value("short") is None, 5.0, "value expiry")
    assert time.monotonic() - set_at >= 0.5 - EARLY_SLACK, "value expired early"
    assert kv.get_value("persisted") == b"new"


def test_get_values_reads_many_keys_live_only(kv: KeyValue, kv_peer: KeyValue) -> None:
    kv.set_value("many.1", b"one")
    kv.set_value("many.2", b"\x00two")
    kv.set_value("many.short", b"x", ttl=0.3)
    assert kv_peer.get_values(["many.1", "many.2", "many.missing", "many.1"]) == {
        "many.1": b"one",
        "many.2": b"\x00two",
    }
    assert kv.get_values([]) == {}
    wait_until(lambda: kv.get_value("many.short") is None, 5.0, "value expiry")
    assert kv.get_values(["many.short", "many.2"]) == {"many.2": b"\x00two"}
    keys = [f"many.n{i}" for i in range(1200)]  # more than one statement or MGET holds
    for key in keys[::100]:
        kv.set_value(key, key.encode())
    assert kv.get_values(keys) == {key: key.encode() for key in keys[::100]}


def test_values_by_literal_prefix(kv: KeyValue) -> None:
    for key in ["w.1", "w.2", "w", "wx.1", "x.1"]:
        kv.set_value(key, key.encode())
    kv.set_value("w.gone", b"x", ttl=0.4)
    for key in ["a*[1]?.x", "a*[1]?.y", "ab[1]c.x", "a*1?.x", "a\\b"]:
        kv.set_value(key, b"glob")

    assert kv.values("w.") == {"w.1": b"w.1", "w.2": b"w.2", "w.gone": b"x"}
    wait_until(lambda: kv.get_value("w.gone") is None, 5.0, "value expiry")
    assert kv.values("w.") == {"w.1": b"w.1", "w.2": b"w.2"}
    assert kv.values("a*[1]?.") == {"a*[1]?.x": b"glob", "a*[1]?.y": b"glob"}
    assert kv.values("a\\") == {"a\\b": b"glob"}
    assert kv.values("zz") == {}
    assert set(kv.values("")) >= {"w.1", "w.2", "w", "wx.1", "x.1", "ab[1]c.x"}


def test_values_of_a_listed_prefix(kv: KeyValue, kv_peer: KeyValue) -> None:
    """The prefixes Conveyor lists (kept in an index on Redis) keep every promise of
    ``values``: expiry, overwrite, delete, claims and a narrower prefix."""
    kv.set_value("worker:a@h", b"a")
    kv_peer.set_value("worker:b@h", b"b", ttl=60)
    kv.set_value("worker:gone@h", b"x", ttl=0.4)
    kv.set_value("worker:deleted@h", b"x")
    kv.delete_value("worker:deleted@h")
    kv.set_value("queue-paused:q", b"1", ttl=0.3)
    kv.set_value("queue-paused:q", b"1")  # persistent now: stays listed
    kv.set_value("queue-paused:probe", b"1", ttl=0.3)  # expires when q's first write would
    assert kv.claim("beat:last:nightly", 60) is True
    assert kv_peer.claim("beat:last:nightly", 1) is False  # must not shorten the listing
    kv.set_value("workers", b"not under 'worker:'")

    assert kv_peer.values("worker:") == {
        "worker:a@h": b"a",
        "worker:b@h": b"b",
        "worker:gone@h": b"x",
    }
    assert kv.values("worker:a") == {"worker:a@h": b"a"}
    wait_until(lambda: "worker:gone@h" not in kv.values("worker:"), 5.0, "value expiry")
    assert kv.values("worker:") == {"worker:a@h": b"a", "worker:b@h": b"b"}
    wait_until(lambda: kv.get_value("queue-paused:probe") is None, 5.0, "probe expiry")
    assert kv.values("queue-paused:") == {"queue-paused:q": b"1"}
    assert kv_peer.values("beat:last:") == {"beat:last:nightly": b"1"}
    kv.delete_value("worker:a@h")
    assert kv_peer.values("worker:") == {"worker:b@h": b"b"}


# -- join --------------------------------------------------------------------------------
def test_join_counts_distinct_members_under_concurrency(kv: KeyValue, kv_peer: KeyValue) -> None:
    key = f"chord:{new_id()}"
    members = [f"task-{n}" for n in range(16)]
    clients = [kv if n % 2 else kv_peer for n in range(16)]
    sizes = run_together(
        [functools.partial(c.join, key, m, 60.0) for c, m in zip(clients, members, strict=True)]
    )
    assert sorted(sizes) == list(range(1, 17)), "each first join must see its own size"

    again = run_together(
        [functools.partial(c.join, key, m, 60.0) for c, m in zip(clients, members, strict=True)]
    )
    assert again == [16] * 16, "joining a member twice must count it once"
    assert kv.join(key, "task-0") == 16
    assert kv.join(f"{key}:other", "task-0") == 1


def test_join_set_expires_and_is_deleted_with_delete_value(kv: KeyValue) -> None:
    key = f"chord:{new_id()}"
    assert kv.join(key, "a", 0.4) == 1
    joined_at = time.monotonic()
    assert kv.join(key, "b", 0.4) == 2  # each join renews the TTL
    wait_until(lambda: time.monotonic() - joined_at > 0.4 + EARLY_SLACK, 5.0, "join set expiry")
    assert kv.join(key, "c", 0.4) == 1, "an expired join set was reused"

    other = f"chord:{new_id()}"
    kv.join(other, "a")
    kv.join(other, "b")
    kv.delete_value(other)
    assert kv.join(other, "c") == 1


# -- isolation and persistence -----------------------------------------------------------
def test_key_prefix_isolates(kv: KeyValue, make_kv: KeyValueFactory, key_prefix: str) -> None:
    other = make_kv(prefix=f"{key_prefix}x")
    kv.set_value("k", b"v")
    kv.join("j", "m")
    assert kv.claim("c", 60)

    assert other.get_value("k") is None
    assert other.values("") == {}
    assert other.join("j", "n") == 1
    assert other.claim("c", 60) is True


def test_values_sets_and_claims_survive_a_new_client(
    kv: KeyValue, kv_backend: tuple[str, str], make_kv: KeyValueFactory
) -> None:
    if kv_backend[1] == "memory":
        pytest.skip("memory:// state lives in one object by design")
    kv.set_value("k", b"v")
    kv.join("j", "m")
    assert kv.claim("c", 60)

    fresh = make_kv()
    assert fresh.get_value("k") == b"v"
    assert fresh.values("k") == {"k": b"v"}
    assert fresh.join("j", "m") == 1
    assert fresh.claim("c", 60) is False
