"""Signed messages (issue 13, item 6): HMAC-SHA256 over the envelope with key rotation. An
unsigned, badly signed or altered message - every single-bit flip of a sample - is
dead-lettered as ``bad_signature`` and never run, on every broker; keys are never shown."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor import ConfigurationError, Conveyor
from conveyor.brokers.base import Message
from conveyor.cli.dlq import preview
from conveyor.exceptions import MalformedMessage
from conveyor.message import Envelope, decode_envelope, encode_envelope
from conveyor.signing import PREFIX, Signer, check_keys, signer_for, strip_signature
from conveyor.testing import TEST_SETTINGS, TestWorker
from tests.conftest import wait_until
from tests.helpers import redis_fixture
from tests.servers import RedisServer

OLD = "old-key-" + "o" * 40
NEW = "new-key-" + "n" * 40
OTHER = "attacker-" + "a" * 40

redis_server = redis_fixture(appendonly=False)


def sample() -> Envelope:
    return Envelope(
        id="0f8e2d3c-5a1b-4c6d-9e7f-0a1b2c3d4e5f",
        task="payments.refund",
        args=[42, "EUR"],
        kwargs={"amount": {"$type": "decimal", "v": "9.99"}},
        queue="billing",
        priority=7,
        retries=1,
        root_id="r-1",
        headers={"trace": "abc"},
        time_limit=30.0,
        created_at=1_790_000_000.25,
    )


# -- the codec -------------------------------------------------------------------------------
def test_a_signed_envelope_round_trips_and_rotation_accepts_every_listed_key() -> None:
    old, rotated = Signer([OLD]), Signer([NEW, OLD])
    signed_old = encode_envelope(sample(), signer=old)
    assert signed_old.startswith(PREFIX)
    assert decode_envelope(signed_old, signer=rotated) == sample()  # old key still accepted
    signed_new = encode_envelope(sample(), signer=rotated)  # the first key signs
    assert decode_envelope(signed_new, signer=Signer([NEW])) == sample()
    with pytest.raises(MalformedMessage) as refused:
        decode_envelope(signed_new, signer=old)  # the old key alone: not accepted
    assert refused.value.reason == "bad_signature"


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (encode_envelope(sample()), "not signed"),
        (encode_envelope(sample(), signer=Signer([OTHER])), "matches no accepted key"),
        (PREFIX + b"00" * 32, "not 64 hex digits"),
        (PREFIX + b"short:{}", "not 64 hex digits"),
        (b"", "not signed"),
    ],
    ids=["unsigned", "other-key", "no-payload", "short", "empty"],
)
def test_unsigned_and_badly_signed_bodies_are_bad_signature(body: bytes, detail: str) -> None:
    with pytest.raises(MalformedMessage) as refused:
        decode_envelope(body, signer=Signer([NEW, OLD]))
    assert (refused.value.reason, detail in refused.value.detail) == ("bad_signature", True)


def test_every_single_bit_flip_of_a_signed_message_is_refused() -> None:
    signer = Signer([NEW, OLD])
    body = encode_envelope(sample(), signer=signer)
    assert decode_envelope(body, signer=signer) == sample()
    outcomes: dict[int, str] = {}
    for bit in range(len(body) * 8):
        flipped = bytearray(body)
        flipped[bit // 8] ^= 1 << (bit % 8)
        try:
            decode_envelope(bytes(flipped), signer=signer)
            outcomes[bit] = "accepted"
        except MalformedMessage as exc:
            outcomes[bit] = exc.reason
    assert {bit: r for bit, r in outcomes.items() if r != "bad_signature"} == {}
    assert len(body) * 8 > 2000  # the sample covers prefix, digest and a real envelope


def test_without_keys_a_signature_is_stripped_unverified() -> None:
    body = encode_envelope(sample(), signer=Signer([NEW]))
    assert decode_envelope(body) == sample()
    assert strip_signature(body) == encode_envelope(sample())
    assert preview(body, 200).startswith("payments.refund(42")  # dlq list shows signed bodies


def test_keys_are_never_shown() -> None:
    signer = signer_for([NEW, OLD])
    assert signer is not None and NEW not in repr(signer) and "2 key(s)" in repr(signer)
    assert signer_for([]) is None
    for bad, says in [
        ("x" * 40, "not one string"),
        (["short-secret"], "12 characters"),
        ([NEW, NEW], "repeats"),
        ([NEW, 5], "must be a string"),
    ]:
        with pytest.raises(ConfigurationError) as refused:
            check_keys("message_signing_keys", bad)
        assert says in str(refused.value)
        assert "short-secret" not in str(refused.value) and NEW not in str(refused.value)
    with pytest.raises(ConfigurationError):
        Conveyor("x", broker="memory://", set_as_default=False, message_signing_keys="k" * 40)


# -- on every broker: a real worker -------------------------------------------------------------
@pytest.fixture(params=["memory", "sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def signed_app(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Conveyor]:
    if request.param == "memory":
        url = "memory://"
    elif request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/conveyor.db"
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        url = server.url
    app = Conveyor(
        "signed",
        broker=url,
        set_as_default=False,
        broker_transport_options={"key_prefix": f"s{uuid.uuid4().hex[:8]}"},
        message_signing_keys=[NEW, OLD],
        **TEST_SETTINGS,
    )
    yield app
    app.close()


def test_a_worker_runs_signed_messages_and_dead_letters_every_other_one(
    signed_app: Conveyor, caplog: pytest.LogCaptureFixture
) -> None:
    ran: list[str] = []

    @signed_app.task(name="refund")
    def refund(who: str) -> str:
        ran.append(who)
        if who == "retry-once" and ran.count(who) == 1:
            raise refund.retry(countdown=0)  # the retried message is signed too
        return who

    good = Envelope(id="good", task="refund", args=["good"])
    signed_old = encode_envelope(Envelope(id="old", task="refund", args=["old"]), None)
    body = encode_envelope(good, signer=Signer([NEW]))
    bad: dict[str, bytes] = {
        "unsigned": encode_envelope(Envelope(id="unsigned", task="refund", args=["unsigned"])),
        "other-key": encode_envelope(
            Envelope(id="other-key", task="refund", args=["other-key"]), signer=Signer([OTHER])
        ),
    }
    # A sample of flips across the whole body (every flip is checked in the codec test above).
    for bit in range(0, len(body) * 8, 7):
        flipped = bytearray(body)
        flipped[bit // 8] ^= 1 << (bit % 8)
        bad[f"flip-{bit}"] = bytes(flipped)
    messages = [Message(key, "default", data) for key, data in bad.items()]
    messages.append(Message("old", "default", Signer([OLD]).sign(signed_old)))
    signed_app.broker.publish(messages)
    results = [refund.delay("sent"), refund.delay("retry-once")]

    caplog.set_level(logging.DEBUG)
    worker = TestWorker(signed_app)
    worker.start()
    try:
        dead = wait_until(
            lambda: len(got := signed_app.broker.dead_letters(limit=10_000)) >= len(bad) and got,
            30,
            "every bad message dead-lettered",
        )
        assert [r.get(timeout=20) for r in results] == ["sent", "retry-once"]
        worker.drain(20)
    finally:
        worker.stop(timeout=10)
    assert {d.id: d.reason for d in dead} == dict.fromkeys(bad, "bad_signature")
    assert sorted(ran) == ["old", "retry-once", "retry-once", "sent"]  # no bad one ran
    assert NEW not in caplog.text and OLD not in caplog.text
