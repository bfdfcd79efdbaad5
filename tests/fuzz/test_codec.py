"""Property tests of the envelope codec (issue 13, item 4): any bytes decode to an envelope or
raise :class:`MalformedMessage` with a dead-letter reason - nothing else; valid envelopes and
tagged arguments round-trip; the worker's whole decode path (``TaskRunner.prepare``) is total;
signed bodies verify only unchanged."""

from __future__ import annotations

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conveyor import Conveyor
from conveyor.brokers.base import Delivery
from conveyor.exceptions import MalformedMessage
from conveyor.message import (
    Envelope,
    decode_arguments,
    decode_envelope,
    encode_arguments,
    encode_envelope,
    from_json_value,
    to_json_value,
)
from conveyor.signing import Signer
from conveyor.worker.execution import TaskRunner
from conveyor.worker.job import Job, Outcome
from tests.fuzz.strategies import envelopes, hostile_bodies, python_values

REASONS = {"undecodable", "malformed"}
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
#: Round trips draw large structured values: fewer examples keep the module near 15 s.
ROUND_TRIP = settings(FUZZ, max_examples=120)


def decodes_or_refuses(data: bytes, signer: Signer | None = None) -> Envelope | str:
    try:
        return decode_envelope(data, 8192, signer)
    except MalformedMessage as exc:
        refused = exc
    assert refused.detail
    return refused.reason


@FUZZ
@given(st.one_of(st.binary(max_size=400), hostile_bodies()))
@example(b"")
@example(b"[" * 100_000)
@example(b'{"id":"x","task":"t","args":[' + b'{"a":' * 5000 + b"}" * 5000 + b"]}")
@example(b'{"id":"x","task":"t","priority":1e400}')
@example(b'{"id":"x","task":"t","retries":123456789012345678901234567890}')
def test_any_bytes_decode_to_an_envelope_or_a_typed_refusal(data: bytes) -> None:
    outcome = decodes_or_refuses(data)
    assert isinstance(outcome, Envelope) or outcome in REASONS


@ROUND_TRIP
@given(envelopes())
def test_valid_envelopes_round_trip(envelope: Envelope) -> None:
    assert decode_envelope(encode_envelope(envelope)) == envelope


@ROUND_TRIP
@given(st.lists(python_values, max_size=4), st.dictionaries(st.text(max_size=8), python_values))
def test_tagged_arguments_round_trip(args: list[object], kwargs: dict[str, object]) -> None:
    tagged_args, tagged_kwargs = encode_arguments("t", args, kwargs)
    envelope = decode_envelope(
        encode_envelope(Envelope(id="i", task="t", args=tagged_args, kwargs=tagged_kwargs))
    )
    assert decode_arguments(envelope) == (args, kwargs)
    for value in args:
        assert from_json_value(to_json_value(value)) == value


@ROUND_TRIP
@given(envelopes(), st.data())
def test_a_signed_envelope_verifies_only_unchanged(envelope: Envelope, data: st.DataObject) -> None:
    signer = Signer(["k" * 32, "old-" + "o" * 32])
    body = encode_envelope(envelope, signer=signer)
    assert decode_envelope(body, signer=signer) == envelope
    index = data.draw(st.integers(0, len(body) - 1))
    replacement = data.draw(st.integers(0, 255).filter(lambda b: b != body[index]))
    changed = body[:index] + bytes([replacement]) + body[index + 1 :]
    assert decodes_or_refuses(changed, signer) == "bad_signature"


_app = Conveyor("fuzz", broker="memory://", set_as_default=False, message_max_bytes=4096)


@_app.task(name="t")
def _task(*args: object, **kwargs: object) -> None:
    """A task whose name the hostile bodies use."""


_runner = TaskRunner(_app, "fuzz")


@FUZZ
@given(
    st.one_of(st.binary(max_size=300), hostile_bodies()),
    st.integers(-(2**63), 2**63),
    st.integers(-5, 20),
)
def test_the_worker_decode_path_is_total(body: bytes, priority: int, count: int) -> None:
    """Whatever a broker hands over, ``prepare`` gives a Job to run or the Outcome of not
    running it (a dead letter with a reason), and never raises."""
    delivery = Delivery("m", "default", body, priority, "r:1", count)
    prepared = _runner.prepare(delivery)
    assert isinstance(prepared, Job | Outcome)
    if isinstance(prepared, Outcome) and prepared.reason is not None:
        assert prepared.detail
    if not 1 <= count <= 4:
        assert isinstance(prepared, Outcome)
        assert prepared.reason in {"worker_lost", "malformed"}
