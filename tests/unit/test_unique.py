"""Unique tasks (conveyor.unique) on the memory broker with an in-process worker: the four
modes, keys from arguments or given, release on every ending, bad input at the call site."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from conveyor import Conveyor, states
from conveyor.exceptions import ConfigurationError, Reject
from conveyor.testing import TestWorker, make_test_app
from tests.conftest import wait_until


@pytest.fixture
def app() -> Iterator[Conveyor]:
    app = make_test_app("unique")
    yield app
    app.close()


def queued(app: Conveyor) -> int:
    stats = app.broker.stats(["default"])["default"]
    return stats.ready + stats.delayed


def held(app: Conveyor, key: str) -> bytes | None:
    return app.kv.get_value(key)


def test_same_arguments_return_the_queued_task(app: Conveyor) -> None:
    @app.task(unique_for=60)
    def build(user: int, kind: str = "pdf") -> str:
        return f"{user}.{kind}"

    first = build.delay(42)
    assert first.duplicate_of is None
    again = build.delay(42)
    assert again.id == first.id and again.duplicate_of == first.id
    assert build.apply_async((42,), {"kind": "pdf"}).duplicate_of is None  # other arguments
    other = build.delay(7)
    assert other.duplicate_of is None and other.id != first.id
    assert queued(app) == 3
    with TestWorker(app) as worker:
        worker.run_until_idle()
    assert again.get(timeout=5) == "42.pdf"
    # until_finished: free again once it ended
    assert build.delay(42).duplicate_of is None


def test_send_many_does_not_deduplicate_and_refuses_unique_options(app: Conveyor) -> None:
    @app.task(unique_for=60)
    def build(user: int) -> int:
        return user

    held_already = build.delay(1)
    results = app.send_many([build.s(1), build.s(1)])  # as a group: one publish, no keys
    assert [r.duplicate_of for r in results] == [None, None]
    assert len({held_already.id, *(r.id for r in results)}) == 3
    assert queued(app) == 3
    with pytest.raises(ConfigurationError, match="unique_for"):
        app.send_many([build.s(2).set(unique_for=30)])
    assert queued(app) == 3


def test_given_key_and_call_options(app: Conveyor) -> None:
    @app.task
    def sync(account: int) -> int:
        return account

    a = sync.apply_async((1,), unique_key="account:1", unique_for=30)
    b = sync.apply_async((2,), unique_key="account:1", unique_for=30)
    assert b.duplicate_of == a.id
    c = sync.apply_async((1,), unique_key="account:2", unique_for=30)
    assert c.duplicate_of is None
    assert sync.delay(1).duplicate_of is None  # without options: not unique
    assert queued(app) == 3


def test_key_function_on_the_task(app: Conveyor) -> None:
    @app.task(unique_for=30, unique_key=lambda user, **_: f"user:{user}")
    def report(user: int, fmt: str = "pdf") -> str:
        return fmt

    first = report.delay(5)
    assert report.delay(5, fmt="csv").duplicate_of == first.id
    assert report.delay(6).duplicate_of is None


def test_until_started_frees_the_key_when_the_task_starts(app: Conveyor) -> None:
    started, release = threading.Event(), threading.Event()

    @app.task(unique_for=60, unique_mode="until_started")
    def slow(n: int) -> int:
        started.set()
        release.wait(10)
        return n

    first = slow.delay(1)
    assert slow.delay(1).duplicate_of == first.id
    with TestWorker(app, concurrency=1) as worker:  # the next one waits for the slot
        worker.start()
        assert started.wait(10)
        wait_until(lambda: slow.delay(1).duplicate_of is None, 5, "key freed at start")
        second_dup = slow.delay(1)
        assert second_dup.duplicate_of is not None and second_dup.id != first.id
        release.set()
        worker.run_until_idle()


def test_until_finished_holds_while_running_and_through_retries(app: Conveyor) -> None:
    started, release = threading.Event(), threading.Event()
    tries: list[int] = []

    @app.task(bind=True, unique_for=60, max_retries=2, default_retry_delay=0.05)
    def flaky(self: Any, n: int) -> int:
        tries.append(n)
        if len(tries) == 1:
            raise self.retry()
        started.set()
        release.wait(10)
        return n

    first = flaky.delay(3)
    with TestWorker(app) as worker:
        worker.start()
        assert started.wait(10)  # second try, after a retry
        assert flaky.delay(3).duplicate_of == first.id
        release.set()
        assert first.get(timeout=10) == 3
        wait_until(lambda: held(app, _key(app, flaky.name, 3)) is None, 5, "released")
        assert flaky.delay(3).duplicate_of is None
        worker.run_until_idle()


def _key(app: Conveyor, name: str, *args: object) -> str:
    from conveyor.unique.spec import arguments_digest

    return f"unique:{name}:args:{arguments_digest(name, args, {})}"


@pytest.mark.parametrize("ending", ["failure", "reject", "revoke", "expire"])
def test_until_finished_is_released_on_every_ending(app: Conveyor, ending: str) -> None:
    @app.task(unique_for=60, max_retries=0)
    def job(n: int) -> int:
        if ending == "failure":
            raise ValueError("boom")
        if ending == "reject":
            raise Reject("poison")
        return n

    options: dict[str, object] = {"expires": 0.01} if ending == "expire" else {}
    first = job.apply_async((1,), **options)
    key = _key(app, job.name, 1)
    assert held(app, key) == first.id.encode()
    if ending == "revoke":
        app.revoke(first.id)
    with TestWorker(app) as worker:
        worker.run_until_idle(propagate=False)
    wait_until(lambda: held(app, key) is None, 5, f"released after {ending}")
    assert first.state in states.READY_STATES


def test_a_revoked_holder_is_replaced_at_once(app: Conveyor) -> None:
    @app.task(unique_for=600)
    def job(n: int) -> int:
        return n

    first = job.apply_async((1,), countdown=300)
    app.revoke(first.id)  # no worker sees it for five minutes: its key must not block
    second = job.delay(1)
    assert second.duplicate_of is None and second.id != first.id
    assert job.delay(1).duplicate_of == second.id


def test_throttle_holds_a_fixed_window(app: Conveyor) -> None:
    @app.task(unique_for=1, unique_mode="throttle")
    def ping() -> str:
        return "pong"

    first = ping.delay()
    with TestWorker(app) as worker:
        worker.run_until_idle()
    assert first.get(timeout=5) == "pong"
    assert ping.delay().duplicate_of == first.id  # finished, but inside the window
    wait_until(lambda: ping.delay().duplicate_of is None, 5, "window over")


def test_debounce_keeps_the_latest_arguments_and_restarts_the_delay(app: Conveyor) -> None:
    seen: list[str] = []

    @app.task(unique_for=1, unique_mode="debounce", unique_key=lambda text: "search-index")
    def reindex(text: str) -> str:
        seen.append(text)
        return text

    first = reindex.delay("a")
    second = reindex.delay("ab")
    third = reindex.delay("abc")
    assert second.replaced == first.id and third.replaced == second.id
    assert third.duplicate_of is None
    with TestWorker(app) as worker:
        worker.run_until_idle()
        assert third.get(timeout=10) == "abc"
    assert seen == ["abc"]
    assert first.state == states.REVOKED and second.state == states.REVOKED


def test_eager_runs_without_a_key(app: Conveyor) -> None:
    @app.task(unique_for=60)
    def job(n: int) -> int:
        return n * 2

    assert job.apply((2,)).get() == 4
    assert held(app, _key(app, job.name, 2)) is None
    eager = make_test_app("eager", task_always_eager=True)

    @eager.task(unique_for=60)
    def job2(n: int) -> int:
        return n

    assert job2.delay(1).get() == 1 and job2.delay(1).duplicate_of is None
    eager.close()


def test_a_failed_publish_frees_the_key(app: Conveyor) -> None:
    @app.task(unique_for=60)
    def job(n: int) -> int:
        return n

    with pytest.raises(ConfigurationError):
        job.apply_async((1,), priority=99)  # refused after the key was taken
    assert job.delay(1).duplicate_of is None


def test_concurrent_producers_queue_one_task(app: Conveyor) -> None:
    @app.task(unique_for=60)
    def job(n: int) -> int:
        return n

    barrier = threading.Barrier(24)
    ids: list[str] = []
    lock = threading.Lock()

    def call() -> None:
        barrier.wait(10)
        result = job.delay(9)
        with lock:
            ids.append(result.id)

    threads = [threading.Thread(target=call) for _ in range(24)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert len(ids) == 24 and len(set(ids)) == 1
    assert queued(app) == 1


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"unique_for": 0.5}, ConfigurationError),
        ({"unique_for": "60"}, ConfigurationError),
        ({"unique_for": True}, ConfigurationError),
        ({"unique_for": float("inf")}, ConfigurationError),
        ({"unique_for": 60, "unique_mode": "until_lunch"}, ConfigurationError),
        ({"unique_for": 60, "unique_key": 42}, TypeError),
        ({"unique_for": 60, "unique_key": ""}, TypeError),
        ({"unique_key": "k"}, ConfigurationError),
        ({"unique_mode": "throttle"}, ConfigurationError),
    ],
)
def test_bad_call_options_fail_at_the_call_site(
    app: Conveyor, options: dict[str, object], error: type[Exception]
) -> None:
    @app.task
    def job() -> None: ...

    with pytest.raises(error):
        job.apply_async(**options)
    assert queued(app) == 0


@pytest.mark.parametrize(
    "options",
    [
        {"unique_for": 0},
        {"unique_for": -5},
        {"unique_for": 60, "unique_mode": "forever"},
        {"unique_for": 60, "unique_key": "not callable"},
        {"unique_key": lambda: "k"},
    ],
)
def test_bad_task_options_fail_at_definition(app: Conveyor, options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):

        @app.task(**options)
        def job() -> None: ...


def test_key_function_returning_a_non_string_fails_at_the_call(app: Conveyor) -> None:
    @app.task(unique_for=60, unique_key=lambda n: n)
    def job(n: int) -> None: ...

    with pytest.raises(TypeError, match="unique_key"):
        job.delay(3)
    assert queued(app) == 0


def test_unique_options_inside_a_workflow_are_refused(app: Conveyor) -> None:
    from conveyor import group

    @app.task
    def job(n: int) -> int:
        return n

    sig = job.s(1).set(unique_for=30)
    assert sig.apply_async().duplicate_of is None  # a single signature: unique
    assert job.s(1).set(unique_for=30).apply_async().duplicate_of is not None
    with pytest.raises(ConfigurationError, match="unique_for"):
        group(job.s(2).set(unique_for=30), job.s(3)).apply_async()


def test_debounce_honours_a_countdown_and_gives_the_key_back_if_the_send_fails(
    app: Conveyor,
) -> None:
    @app.task(unique_for=30, unique_mode="debounce", unique_key=lambda n: "k")
    def job(n: int) -> int:
        return n

    first = job.apply_async((1,), countdown=0.2)
    with pytest.raises(ConfigurationError):
        job.apply_async((2,), countdown=0.2, priority=99)  # refused after the key changed hands
    key = f"unique:{job.name}:key:k"
    assert held(app, key) == first.id.encode()  # still the first, which still runs
    with TestWorker(app) as worker:
        worker.run_until_idle()
    assert first.get(timeout=10) == 1
