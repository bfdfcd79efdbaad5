"""Generators of messages for the fuzz tests: hypothesis strategies for the property tests,
and a seeded generator of labelled malformed bodies for the injection test (each with the
dead-letter reason a worker must give it)."""

from __future__ import annotations

import datetime as dt
import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from hypothesis import strategies as st

from conveyor.message import MAX_TIME_LIMIT, Envelope, encode_envelope, to_json_value

# -- hypothesis strategies ---------------------------------------------------------------------
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
#: Python values a task may take as arguments (JSON plus the tagged types).
python_values = st.recursive(
    st.one_of(
        scalars,
        st.datetimes(timezones=st.one_of(st.none(), st.just(dt.UTC))),
        st.dates(),
        st.times(),
        st.uuids(),
        st.decimals(allow_nan=False),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=8), st.just("$type")), inner, max_size=4),
    ),
    max_leaves=20,
)
#: Any JSON document (what a hostile writer may store as a body or a field).
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=25,
)
names = st.text(min_size=1, max_size=30)
limits = st.one_of(st.none(), st.floats(min_value=0, max_value=MAX_TIME_LIMIT))


@st.composite
def envelopes(draw: st.DrawFn) -> Envelope:
    """Valid envelopes (what a producer may send), arguments already tagged."""
    args = draw(st.lists(python_values, max_size=4))
    kwargs = draw(st.dictionaries(st.text(max_size=10), python_values, max_size=4))
    return Envelope(
        id=draw(names),
        task=draw(names),
        args=[to_json_value(a) for a in args],
        kwargs={k: to_json_value(v) for k, v in kwargs.items()},
        queue=draw(names),
        priority=draw(st.integers(0, 9)),
        eta=draw(st.one_of(st.none(), st.floats(0, 4e9))),
        expires=draw(st.one_of(st.none(), st.floats(0, 4e9))),
        retries=draw(st.integers(0, 1000)),
        root_id=draw(st.one_of(st.none(), names)),
        parent_id=draw(st.one_of(st.none(), names)),
        group_id=draw(st.one_of(st.none(), names)),
        group_index=draw(st.one_of(st.none(), st.integers(0, 1000))),
        group_size=draw(st.one_of(st.none(), st.integers(1, 1000))),
        chord=draw(
            st.one_of(
                st.none(), st.builds(lambda i, n: {"id": i, "size": n}, names, st.integers(1, 1000))
            )
        ),
        headers={
            k: to_json_value(v)
            for k, v in draw(
                st.dictionaries(st.text(max_size=10), python_values, max_size=3)
            ).items()
        },
        time_limit=draw(limits),
        soft_time_limit=draw(limits),
        ignore_result=draw(st.booleans()),
        acks_late=draw(st.booleans()),
        created_at=draw(st.floats(0, 4e9)),
    )


ENVELOPE_FIELDS = list(Envelope.__struct_fields__)


@st.composite
def hostile_bodies(draw: st.DrawFn) -> bytes:
    """Bytes a hostile or broken writer may store as a message body: random bytes, any JSON,
    an envelope with any field replaced by any JSON value, truncations and deep nesting."""
    kind = draw(st.sampled_from(["bytes", "json", "field", "truncated", "deep", "tag"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    valid = json.loads(encode_envelope(draw(envelopes())))
    if kind == "field":
        for field in draw(st.lists(st.sampled_from(ENVELOPE_FIELDS), min_size=1, max_size=3)):
            valid[field] = draw(json_values)
        return json.dumps(valid).encode()
    if kind == "truncated":
        data = json.dumps(valid).encode()
        return data[: draw(st.integers(0, max(len(data) - 1, 0)))]
    if kind == "deep":
        depth = draw(st.integers(50, 3000))
        field = draw(st.sampled_from(["args", "kwargs", "headers", "callbacks", "chord"]))
        opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
        value = opener * depth + "1" + closer * depth
        return f'{{"id":"x","task":"t","{field}":{value}}}'.encode()
    # A bad type tag somewhere in the arguments.
    tag = draw(st.sampled_from(["datetime", "date", "time", "uuid", "decimal", "dict", "nope"]))
    valid["args"] = [{"$type": tag, "v": draw(json_values)}]
    return json.dumps(valid).encode()


# -- labelled malformed bodies for the injection test -------------------------------------------
@dataclass(frozen=True)
class Bad:
    """One bad message to inject: its storage-level id, its body, its stored priority and
    delivery count (forged for some), and the dead-letter reasons it may get (``a|b``)."""

    id: str
    body: bytes
    reason: str
    kind: str
    priority: object = 5
    deliveries: object = 0


GOOD_TASK = "fuzzapp.record"  # tests/fuzz/fuzzapp.py
SQLITE_BAD_PRIORITIES: list[object] = ["high", 12, -1, 1.5, b"\x05", None]
BAD_COUNTS: list[object] = ["many", 1.5, b"\x01"]
#: Delivery counts so far that are over ``task_max_deliveries`` (4).
OVER_COUNTS: list[object] = [4, 50, 10**9]


@dataclass(frozen=True)
class StoredFields:
    """The bad priorities and delivery counts a broker's storage can hold (PostgreSQL's columns
    are typed, RabbitMQ's headers are AMQP table values)."""

    priorities: list[object]
    bad_counts: list[object]
    over_counts: list[object]


SQLITE_FIELDS = StoredFields(SQLITE_BAD_PRIORITIES, BAD_COUNTS, OVER_COUNTS)
#: smallint priority and integer count columns: out of range, or at the column's limits.
POSTGRES_FIELDS = StoredFields(
    [12, -1, 10, 2**15 - 1, -(2**15)], [-1, -(2**31)], [*OVER_COUNTS, 2**31 - 1]
)
#: ``conveyor-priority`` and ``conveyor-delivered-before`` headers of any AMQP type.
AMQP_FIELDS = StoredFields(
    ["high", 12, -1, 1.5, None, True], ["many", 1.5, -1, None, [3]], [*OVER_COUNTS, 2**62]
)


def _good_fields(rng: random.Random, mid: str) -> dict[str, object]:
    return {"id": mid, "task": GOOD_TASK, "args": [f"/dev/null-{mid}"], "created_at": 1.0}


#: Per envelope field: values of a wrong type, or impossible ones (each checked to be refused).
_IMPOSSIBLE: dict[str, list[object]] = {
    "id": ["", 5, None, ["x"], True],
    "task": ["", 5, None, {"n": 1}],
    "args": ["1,2", {"a": 1}, 5, [{"$type": "uuid", "v": "not-a-uuid"}]],
    "kwargs": [[1, 2], "k=v", {"a": {"$type": "decimal", "v": "1.2.3"}}],
    "priority": ["9", 1.5, [9], None],
    "chord": [{"x": 1}, {"id": "", "size": 1}, {"id": "c", "size": 0}, "c", [1]],
    "callbacks": [[{"task": 5}], [{"task": ""}], "cb", [1], [{"task": "x", "args": "no"}]],
    "errbacks": [[{"task": 5}], [{}], "eb"],
    "headers": [[1], "h"],
    "time_limit": [-1, 1e300, "10"],
    "soft_time_limit": [-1, 1e300, "10"],
    "retries": [1.5, "3"],
    "eta": ["tomorrow", [1]],
    "queue": [5, None, {"q": 1}],
    "expires": ["later"],
    "group_index": [1.5, "1"],
    "ignore_result": ["yes", 1.5],
    "acks_late": ["no", [True]],
    "created_at": ["now"],
}


def malformed_messages(
    count: int, seed: int, max_bytes: int, stored: StoredFields = SQLITE_FIELDS
) -> Iterator[Bad]:
    """``count`` labelled bad messages, reproducible from ``seed``. ``max_bytes`` is the
    worker's body limit (``2 * message_max_bytes``): "huge" bodies exceed it. ``stored``: the
    forged priorities and delivery counts the broker's storage can hold."""
    rng = random.Random(seed)
    makers: list[Callable[[str], Bad]] = []

    def bad(mid: str, body: bytes, reason: str, kind: str, **fields: object) -> Bad:
        return Bad(mid, body, reason, kind, **fields)  # type: ignore[arg-type]

    def random_bytes(mid: str) -> Bad:
        data = rng.randbytes(rng.randint(0, 300))
        # Bytes that start like a JSON value may fail as the wrong type first.
        return bad(mid, data, "undecodable|malformed", "random-bytes")

    def truncated(mid: str) -> Bad:
        data = json.dumps(_good_fields(rng, mid)).encode()
        return bad(mid, data[: rng.randint(1, len(data) - 1)], "undecodable", "truncated")

    def deep(mid: str) -> Bad:
        depth = rng.choice([201, 500, 2000, 20_000])
        field = rng.choice(["args", "kwargs", "headers", "callbacks"])
        inner = "[" * depth + "1" + "]" * depth
        value = {
            "args": inner,
            "kwargs": f'{{"a":{inner}}}',
            "headers": f'{{"h":{inner}}}',
            "callbacks": f"[{inner}]",
        }[field]
        body = f'{{"id":"{mid}","task":"{GOOD_TASK}","{field}":{value}}}'
        return bad(mid, body.encode(), "malformed", "deep")

    def huge(mid: str) -> Bad:
        fields = _good_fields(rng, mid)
        fields["args"] = ["x" * (max_bytes + rng.randint(1, 1000))]
        return bad(mid, json.dumps(fields).encode(), "malformed", "huge")

    def not_an_object(mid: str) -> Bad:
        body = json.dumps(rng.choice([[1, 2], "text", 42, None, True, []])).encode()
        return bad(mid, body, "malformed", "not-an-object")

    def wrong_field(mid: str) -> Bad:
        fields = _good_fields(rng, mid)
        field = rng.choice(list(_IMPOSSIBLE))
        fields[field] = rng.choice(_IMPOSSIBLE[field])
        return bad(mid, json.dumps(fields).encode(), "malformed", f"wrong-{field}")

    def unknown_task(mid: str) -> Bad:
        fields = _good_fields(rng, mid)
        fields["task"] = rng.choice(["os.system", "fuzzapp.nope", "é" * 40, "x" * 200])
        return bad(mid, json.dumps(fields).encode(), "unknown_task", "unknown-task")

    def forged_count(mid: str) -> Bad:
        body = json.dumps(_good_fields(rng, mid)).encode()
        if rng.random() < 0.5:  # over the limit: the broker dead-letters it before any run
            count = rng.choice(stored.over_counts)
            return bad(mid, body, "worker_lost", "count-over", deliveries=count)
        return bad(mid, body, "malformed", "count-bad", deliveries=rng.choice(stored.bad_counts))

    def bad_priority(mid: str) -> Bad:
        body = json.dumps(_good_fields(rng, mid)).encode()
        return bad(mid, body, "malformed", "priority", priority=rng.choice(stored.priorities))

    makers = [
        random_bytes,
        truncated,
        deep,
        huge,
        not_an_object,
        wrong_field,
        wrong_field,
        wrong_field,
        unknown_task,
        forged_count,
        bad_priority,
    ]
    for i in range(count):
        yield rng.choice(makers)(f"bad-{seed}-{i}")


def good_message(path: str, mid: str) -> bytes:
    """The body of a good task message (recording its run in ``path``)."""
    return encode_envelope(Envelope(id=mid, task=GOOD_TASK, args=[path, mid], created_at=1.0))


__all__ = [
    "AMQP_FIELDS",
    "POSTGRES_FIELDS",
    "Bad",
    "StoredFields",
    "envelopes",
    "good_message",
    "hostile_bodies",
    "json_values",
    "malformed_messages",
    "python_values",
]
