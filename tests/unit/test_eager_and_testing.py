"""Eager mode, the retry policy, the pytest plugin, and static typing of tasks."""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conveyor import Conveyor, SerializationError, Task, states
from conveyor.task import retry_delay
from conveyor.testing import TestWorker, make_test_app


@pytest.fixture
def eager_app() -> Conveyor:
    return make_test_app("eager", task_always_eager=True)


def test_eager_runs_inline_and_stores_results(eager_app: Conveyor) -> None:
    @eager_app.task
    def add(x: int, y: int) -> int:
        return x + y

    result = add.delay(2, 3)
    assert result.state == states.SUCCESS
    assert result.get() == 5
    assert eager_app.broker.stats(["default"])["default"].ready == 0


def test_eager_still_serializes_arguments(eager_app: Conveyor) -> None:
    @eager_app.task
    def save(obj: object) -> None:
        return None

    with pytest.raises(SerializationError):
        save.delay(object())


def test_eager_arguments_round_trip_like_a_real_worker(eager_app: Conveyor) -> None:
    @eager_app.task
    def kinds(value: object) -> str:
        return type(value).__name__

    assert kinds.delay((1, 2)).get() == "list"  # exactly what a worker would see


def test_eager_applies_retries(eager_app: Conveyor) -> None:
    attempts: list[int] = []

    @eager_app.task(bind=True, max_retries=3, default_retry_delay=60)
    def flaky(self: Task) -> int:  # type: ignore[type-arg]
        attempts.append(self.request.retries)
        if self.request.retries < 2:
            raise self.retry(exc=OSError("again"))
        return 42

    result = flaky.delay()
    assert result.get() == 42
    assert attempts == [0, 1, 2]
    assert result.retries == 2


def test_eager_failure_is_stored_and_optionally_propagates(eager_app: Conveyor) -> None:
    @eager_app.task
    def fail() -> None:
        raise ValueError("eager boom")

    result = fail.delay()
    assert result.state == states.FAILURE
    with pytest.raises(ValueError, match="eager boom"):
        result.get()
    eager_app.conf.task_eager_propagates = True
    with pytest.raises(ValueError, match="eager boom"):
        fail.delay()


def test_eager_async_task(eager_app: Conveyor) -> None:
    @eager_app.task
    async def double(x: int) -> int:
        return x * 2

    assert double.delay(4).get() == 8


def test_apply_runs_locally_without_eager_setting() -> None:
    app = make_test_app("apply")

    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    assert add.apply((1, 1)).get() == 2


def test_retry_policy_without_backoff_uses_the_default_delay() -> None:
    assert retry_delay(0, backoff=False, backoff_max=600, jitter=True, default_delay=180) == 180
    assert retry_delay(5, backoff=False, backoff_max=600, jitter=False, default_delay=7) == 7


def test_retry_policy_exponential_with_cap() -> None:
    delays = [
        retry_delay(n, backoff=True, backoff_max=600, jitter=False, default_delay=0)
        for n in range(12)
    ]
    assert delays[:5] == [1, 2, 4, 8, 16]
    assert delays[-1] == 600
    assert retry_delay(3, backoff=5, backoff_max=1000, jitter=False, default_delay=0) == 40


def test_retry_policy_full_jitter_is_within_bounds_and_deterministic_with_a_seed() -> None:
    rng = random.Random(7)
    values = [
        retry_delay(4, backoff=True, backoff_max=600, jitter=True, default_delay=0, rng=rng)
        for _ in range(200)
    ]
    assert all(0 <= v <= 16 for v in values)
    assert len(set(values)) > 100
    again = random.Random(7)
    assert values[0] == retry_delay(
        4, backoff=True, backoff_max=600, jitter=True, default_delay=0, rng=again
    )


def test_pytest_plugin_fixtures(conveyor_app: Conveyor, conveyor_worker: TestWorker) -> None:
    @conveyor_app.task
    def mul(x: int, y: int) -> int:
        return x * y

    assert mul.delay(6, 7).get(timeout=5) == 42
    conveyor_worker.run_until_idle(5)


def test_typing_of_tasks(tmp_path: Path) -> None:
    """``delay`` is checked against the function's signature, ``get()`` and settings are typed."""
    source = textwrap.dedent(
        """
        from conveyor import Conveyor

        app = Conveyor("typed", broker="memory://")

        @app.task
        def add(x: int, y: int) -> int:
            return x + y

        @app.task
        async def fetch(url: str) -> bytes:
            return b""

        ok: int = add.delay(1, 2).get()
        data: bytes = fetch.delay("u").get()
        add.delay(1, "x")
        wrong: str = add.delay(1, 2).get()
        lease: float = app.conf.broker_lease_timeout
        limit: float | None = app.conf.task_time_limit
        queue: int = app.conf.task_default_queue
        app.conf.brokr_url
        """
    )
    target = tmp_path / "typed_usage.py"
    target.write_text(source)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-incremental",
            "--cache-dir",
            str(tmp_path / ".mypy"),
            str(target),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    errors = [line for line in proc.stdout.splitlines() if ": error:" in line]
    assert len(errors) == 4, proc.stdout
    assert (
        'Argument 2 to "delay" of "Task" has incompatible type "str"; expected "int"' in errors[0]
    )
    assert "wrong" in source.splitlines()[int(errors[1].split(":")[1]) - 1]
    # Settings are typed: a read has the setting's type, an unknown name is an error.
    assert 'expression has type "str", variable has type "int"' in errors[2]
    assert '"Settings" has no attribute "brokr_url"' in errors[3]
