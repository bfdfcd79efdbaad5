"""Rate limits (conveyor.limits): rates and options checked where given, per-key buckets,
queue limits, waiting in the broker uncharged - with an in-process worker on the memory broker.

Every store's buckets: tests/integration/test_rate_limits_stores.py; real worker processes
sharing one bucket: tests/integration/test_rate_limits_processes.py.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from conveyor import Conveyor, Queue
from conveyor.brokers.base import Delivery, Message
from conveyor.exceptions import ConfigurationError
from conveyor.limits import parse_rate
from conveyor.limits.gate import BOOKING_GRACE, FlowGate, bucket_size
from conveyor.limits.options import BOOKED_HEADER, RATE_KEY_HEADER
from conveyor.limits.store import Grant, LimitStore
from conveyor.message import Envelope
from conveyor.middleware import Middleware
from conveyor.testing import TestWorker, make_test_app
from conveyor.worker.ratelimit import LocalRateLimiter


@pytest.fixture
def app() -> Iterator[Conveyor]:
    app = make_test_app("limits")
    yield app
    app.close()


# -- rates ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "per_second"),
    [("10/s", 10.0), ("120/m", 2.0), ("3600/h", 1.0), ("8640/d", 0.1), ("5", 5.0), (2.5, 2.5)],
)
def test_rates_parse(text: str | float, per_second: float) -> None:
    assert parse_rate(text).per_second == pytest.approx(per_second)


def test_bucket_sizes_in_the_docs_are_the_implementations() -> None:
    """docs/flow-control.md's table: the bucket size of a rate (its token and the booking
    grace's worth) and the most starts it lets through in any 1-s window."""
    doc = (Path(__file__).resolve().parents[2] / "docs" / "flow-control.md").read_text()
    rows = re.findall(r'^\| `"([^"]+)"` \| (\d+) \| (\d+)', doc, re.MULTILINE)
    assert len(rows) >= 4
    for text, size, most in rows:
        rate = parse_rate(text)
        assert bucket_size(rate) == int(size), text
        assert math.floor(rate.per_second + bucket_size(rate)) == int(most), text
    assert bucket_size(parse_rate("50/s")) == 1 + math.ceil(50 * BOOKING_GRACE)
    assert bucket_size(parse_rate("1/h")) == 2  # any grace is one token more, rounded up


@pytest.mark.parametrize("bad", ["fast", "0/s", "-1/m", "10/w", "nan/s", "inf", "", True, [1]])
def test_bad_rates_fail_at_definition(app: Conveyor, bad: object) -> None:
    with pytest.raises(ConfigurationError, match="rate_limit"):
        app.task(rate_limit=bad)(lambda: None)


def test_bad_queue_rate_fails_at_declaration() -> None:
    with pytest.raises(ConfigurationError, match=r"Queue\('mail'\): rate_limit"):
        Queue("mail", rate_limit="lots")


def test_rate_limit_key_needs_a_function_and_a_rate(app: Conveyor) -> None:
    with pytest.raises(ConfigurationError, match=r"rate_limit_key .* must be a function"):
        app.task(rate_limit="1/s", rate_limit_key="customer")(lambda: None)
    with pytest.raises(ConfigurationError, match=r"rate_limit_key .* needs rate_limit"):
        app.task(rate_limit_key=lambda c: c)(lambda c: None)


# -- keys at the call site ----------------------------------------------------------------
def test_rate_key_is_computed_at_call_time(app: Conveyor) -> None:
    @app.task(rate_limit="1/s", rate_limit_key=lambda customer, **kw: f"customer:{customer}")
    def sync(customer: int, full: bool = False) -> None: ...

    seen: list[dict[str, object]] = []
    app.add_middleware(_Headers(seen))
    sync.delay(42, full=True)
    sync.apply_async((7,), rate_key="override")
    assert [h.get(RATE_KEY_HEADER) for h in seen] == ["customer:42", "override"]


@pytest.mark.parametrize(
    ("key", "error"),
    [(42, TypeError), (b"k", TypeError), ("", ConfigurationError), ("a\nb", ConfigurationError)],
)
def test_bad_rate_keys_fail_at_call_time(app: Conveyor, key: object, error: type) -> None:
    @app.task(rate_limit="1/s", rate_limit_key=lambda k: k)
    def limited(k: object) -> None: ...

    with pytest.raises(error, match=r"rate_key|rate_limit_key"):
        limited.apply_async(("x",), rate_key=key)
    with pytest.raises(error, match="rate_limit_key"):
        limited.delay(key)
    assert app.broker.stats(["default"])["default"].ready == 0  # nothing was sent


def test_rate_key_for_a_task_without_rate_limit_is_an_error(app: Conveyor) -> None:
    @app.task
    def free() -> None: ...

    with pytest.raises(ConfigurationError, match="no rate_limit"):
        free.apply_async(rate_key="customer:1")


def test_a_forged_booking_header_is_dropped(app: Conveyor) -> None:
    @app.task(rate_limit="1/s")
    def limited() -> None: ...

    seen: list[dict[str, object]] = []
    app.add_middleware(_Headers(seen))
    limited.apply_async(headers={BOOKED_HEADER: ["task:limited"]})
    assert BOOKED_HEADER not in seen[0]


# -- in a worker ----------------------------------------------------------------------------
def test_each_key_has_its_own_bucket(app: Conveyor) -> None:
    starts: dict[str, list[float]] = {"a": [], "b": []}

    @app.task(rate_limit="5/s", rate_limit_key=lambda who: who)
    def call_api(who: str) -> None:
        starts[who].append(time.monotonic())

    for _ in range(3):
        call_api.delay("a")
        call_api.delay("b")
    with TestWorker(app, concurrency=4) as worker:
        worker.run_until_idle(15)
    for times in starts.values():
        # 5/s within one key: tokens 0.2 s apart, never used early (a token may be used up
        # to BOOKING_GRACE late, so single gaps can be shorter on a loaded machine)
        assert len(times) == 3 and max(times) - min(times) >= 0.4 - 0.05
    # the two keys ran side by side, not one after the other (one bucket would take 1 s)
    assert abs(min(starts["a"]) - min(starts["b"])) < 0.15


def test_waiting_for_a_token_is_not_a_retry_nor_a_delivery(app: Conveyor) -> None:
    seen: list[tuple[int, int, float]] = []

    @app.task(rate_limit="4/s", max_retries=0)
    def limited() -> None:
        request = limited.request
        seen.append((request.retries, request.delivery_count, time.monotonic()))

    for _ in range(6):  # the last ones wait ~1 s for their tokens
        limited.delay()
    with TestWorker(app, concurrency=4) as worker:
        worker.run_until_idle(15)
    assert len(seen) == 6
    assert {(retries, count) for retries, count, _ in seen} == {(0, 1)}
    starts = sorted(at for _, _, at in seen)
    assert starts[-1] - starts[0] >= 1.2  # 6 starts at 4/s: 1.25 s


def test_queue_rate_limit_covers_every_task_of_the_queue() -> None:
    app = make_test_app("limits", task_queues=[Queue("mail", rate_limit="5/s")])
    starts: list[float] = []

    @app.task(queue="mail")
    def one() -> None:
        starts.append(time.monotonic())

    @app.task(queue="mail")
    def two() -> None:
        starts.append(time.monotonic())

    try:
        for _ in range(3):
            one.delay()
            two.delay()
        with TestWorker(app, concurrency=4, queues=["mail"]) as worker:
            worker.run_until_idle(15)
    finally:
        app.close()
    assert len(starts) == 6 and max(starts) - min(starts) >= 1.0 - 0.05  # one 5/s bucket


def test_rate_limit_changed_at_run_time_applies_to_the_next_takes(app: Conveyor) -> None:
    starts: list[float] = []

    @app.task(rate_limit="1/m")
    def limited() -> None:
        starts.append(time.monotonic())

    limited.delay()
    with TestWorker(app, concurrency=2) as worker:
        worker.run_until_idle(10)
        limited.rate_limit = "20/s"  # what app.control.rate_limit does in each worker process
        for _ in range(5):
            limited.delay()
        worker.run_until_idle(10)
    assert len(starts) == 6


def test_a_backlog_over_a_full_bucket_waits_without_a_store_round_trip_each(
    app: Conveyor,
) -> None:
    """Once the store refused a take (the bucket is booked beyond its horizon), the gate
    knows it is refused until the horizon frees up: a backlog's messages go back to wait
    without asking the store each (what stalled a PostgreSQL backlog's first pass)."""

    @app.task(rate_limit="2/s")
    def limited() -> None: ...

    assert app.broker.limits is not None
    store = _CountingStore(app.broker.limits)
    gate = FlowGate(app, store)
    local = LocalRateLimiter()
    waits = [gate.admit(limited, Envelope(f"t{i}", limited.name), local) for i in range(40)]
    # 2/s books 5 s ahead: 11 tokens (now, then every 0.5 s); the 12th take is refused
    assert waits[0] is None and all(w is not None for w in waits[1:])
    assert store.takes == 12
    assert all(w is not None and w > 0 for w in waits[11:])  # refused: wait to look again
    limited.rate_limit = "100/s"  # a rate changed at run time asks the store again
    assert gate.admit(limited, Envelope("faster", limited.name), local) is not None
    assert store.takes == 13


def test_a_booking_used_within_the_grace_runs_a_later_one_books_again(
    app: Conveyor, caplog: pytest.LogCaptureFixture
) -> None:
    """A message back on time with its booked token runs without a take; one back more than
    BOOKING_GRACE late books again, and says how late it was at DEBUG (how issue 18's
    starvation on RabbitMQ was measured: docs/flow-control.md)."""

    @app.task(rate_limit="2/s")
    def limited() -> None: ...

    assert app.broker.limits is not None
    store = _CountingStore(app.broker.limits)
    gate = FlowGate(app, store)
    local = LocalRateLimiter()
    booked = {"due": time.time() - BOOKING_GRACE / 2, "keys": [f"task:{limited.name}"]}
    on_time = Envelope("on-time", limited.name, headers={BOOKED_HEADER: dict(booked)})
    assert gate.admit(limited, on_time, local) is None
    assert store.takes == 0
    stale = {**booked, "due": time.time() - 3.0}
    late = Envelope("late", limited.name, headers={BOOKED_HEADER: stale})
    with caplog.at_level("DEBUG", logger="conveyor.worker"):
        assert gate.admit(limited, late, local) is None  # a free token: it takes one now
    assert store.takes == 1
    (line,) = [r.getMessage() for r in caplog.records if "lapsed" in r.getMessage()]
    assert re.search(r"\[late\]: its booking lapsed \(3\.\d{3} s late\)", line)


class _CountingStore:
    """A limit store that counts the takes it passes on to a real one."""

    def __init__(self, store: LimitStore) -> None:
        self.store = store
        self.takes = 0

    def take(
        self, key: str, interval: float, tolerance: float, after: float = 0.0, horizon: float = 0.0
    ) -> Grant:
        self.takes += 1
        return self.store.take(key, interval, tolerance, after, horizon)

    def acquire(self, key: str, limit: int, holder: str, ttl: float) -> bool:
        return self.store.acquire(key, limit, holder, ttl)

    def release(self, key: str, holder: str) -> None:
        self.store.release(key, holder)

    def renew(self, held: Sequence[tuple[str, str]], ttl: float) -> None:
        self.store.renew(held, ttl)

    def holders(self, key: str) -> list[str]:
        return self.store.holders(key)


class _Headers(Middleware):
    """Keeps the headers of each published envelope."""

    def __init__(self, seen: list[dict[str, object]]) -> None:
        self.seen = seen

    def after_publish(self, app: Conveyor, envelope: Envelope) -> None:
        self.seen.append(dict(envelope.headers))


@pytest.mark.parametrize("local_clock", [False, True], ids=["broker-clock", "local-clock"])
def test_a_booked_put_back_asks_for_its_due_time_where_delays_use_the_local_clock(
    app: Conveyor, monkeypatch: pytest.MonkeyPatch, local_clock: bool
) -> None:
    """RabbitMQ times delays by the publisher's clock: a put-back holding a booked token asks
    for the token's due time (``eta``), so the time until it is published does not make it
    late; brokers with their own clock keep the countdown (never early on their clock)."""
    broker = app.broker
    monkeypatch.setattr(broker, "delays_by_local_clock", local_clock)
    sent: list[Message] = []
    one, many = broker.retry_later, broker.retry_later_many

    def retry_later(delivery: Delivery, message: Message) -> None:
        sent.append(message)
        one(delivery, message)

    def retry_later_many(retries: Sequence[tuple[Delivery, Message]]) -> None:
        sent.extend(message for _, message in retries)
        many(retries)

    monkeypatch.setattr(broker, "retry_later", retry_later)
    monkeypatch.setattr(broker, "retry_later_many", retry_later_many)

    @app.task(rate_limit="5/s")
    def limited() -> None: ...

    for _ in range(3):
        limited.delay()
    with TestWorker(app, concurrency=3) as worker:
        worker.run_until_idle(15)
    booked = [m for m in sent if m.priority == 9]  # put back holding a booked token
    assert booked
    for message in booked:
        if local_clock:
            assert message.eta is not None and message.countdown == 0
        else:
            assert message.eta is None and message.countdown > 0
