"""The in-memory broker's own edges (the conformance suite covers its contract)."""

from __future__ import annotations

import pytest

from conveyor.brokers import BrokerOptions, create_broker
from conveyor.brokers.base import Message


def test_a_refused_batch_adds_nothing_and_its_ids_stay_free() -> None:
    broker = create_broker("memory://", BrokerOptions())
    good = Message("good", "q", b"1")
    malformed = Message("bad", "q", b"2", eta="tomorrow")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        broker.publish([good, malformed])
    assert broker.lease(["q"], 10, 0) == []  # all or nothing
    # The corrected publish of the same ids is not dropped as a duplicate.
    broker.publish([good, Message("bad", "q", b"2")])
    assert [d.id for d in broker.lease(["q"], 10, 0)] == ["good", "bad"]
