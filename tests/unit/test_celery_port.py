"""Celery code that ports by the import swap: task base classes, retry_kwargs, call-time
argument checks, ``current_app`` / ``task`` / ``uuid``, result sets and returned results,
errbacks, eager signals, decoded headers (issue 12)."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import uuid as uuid_module
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import conveyor
from conveyor import (
    AsyncResult,
    ConfigurationError,
    Conveyor,
    GroupResult,
    ResultSet,
    Task,
    allow_join_result,
    current_app,
    group,
    result_from_tuple,
    shared_task,
    signals,
    states,
)
from conveyor.exceptions import InvalidTaskCall
from conveyor.message import from_json_value
from conveyor.middleware import Middleware
from conveyor.testing import TestWorker, make_test_app
from conveyor.worker.job import Job, Outcome

from ..conftest import wait_until


@pytest.fixture
def eager_app() -> Iterator[Conveyor]:
    app = make_test_app("eager", task_always_eager=True)
    yield app
    app.close()


# -- 1. a Task base class overriding __call__ ------------------------------------------------


class CountingTask(Task):  # type: ignore[type-arg]
    """Seed 003's CustomTask shape: wraps the body, sees self.request."""

    calls: list[tuple[str, str, bool]] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls.append(("before", self.request.id, self.request.is_eager))
        result = super().__call__(*args, **kwargs)
        self.calls.append(("after", self.request.id, self.request.is_eager))
        return result


def test_custom_call_runs_once_in_a_worker_with_the_request(
    app: Conveyor, worker: TestWorker
) -> None:
    CountingTask.calls = []

    @app.task(base=CountingTask)
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(base=CountingTask, bind=True)
    def whoami(self: Task) -> str:  # type: ignore[type-arg]
        return self.request.id

    @app.task(base=CountingTask)
    async def double(x: int) -> int:
        return 2 * x

    r1, r2, r3 = add.delay(2, 3), whoami.delay(), double.delay(4)
    assert r1.get(timeout=10) == 5
    assert r2.get(timeout=10) == r2.id
    assert r3.get(timeout=10) == 8
    for result in (r1, r2, r3):
        assert CountingTask.calls.count(("before", result.id, False)) == 1
        assert CountingTask.calls.count(("after", result.id, False)) == 1
    assert len(CountingTask.calls) == 6


def test_custom_call_runs_once_in_eager_mode(eager_app: Conveyor) -> None:
    CountingTask.calls = []

    @eager_app.task(base=CountingTask)
    def add(x: int, y: int) -> int:
        return x + y

    result = add.delay(1, 1)
    assert result.get() == 2
    assert CountingTask.calls == [("before", result.id, True), ("after", result.id, True)]
    applied = add.apply((2, 2))
    assert applied.get() == 4
    assert CountingTask.calls[2:] == [("before", applied.id, True), ("after", applied.id, True)]


def test_seed_geo_task_routing_key_shape_runs(app: Conveyor, worker: TestWorker) -> None:
    seen: list[object] = []

    class GeoTask(Task):  # type: ignore[type-arg]
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            if self.request.is_eager:
                return super().__call__(*args, **kwargs)
            self.request.delivery_info["routing_key"] = f"geo_{args[0]}"
            seen.append(self.request.delivery_info["priority"])
            return super().__call__(*args, **kwargs)

    @app.task(base=GeoTask)
    def process_data(data: str) -> str:
        return data.upper()

    assert process_data.delay("eu").get(timeout=10) == "EU"
    assert seen == [app.conf.task_default_priority]


# -- 2. retry_kwargs ---------------------------------------------------------------------------


def test_retry_kwargs_countdown_and_max_retries_are_honoured(app: Conveyor) -> None:
    @app.task(autoretry_for=(OSError,), retry_kwargs={"countdown": 600, "max_retries": 5})
    def fetch() -> None:
        raise OSError("down")

    assert fetch.autoretry_delay(0) == 600.0
    assert fetch.autoretry_max_retries == 5
    assert fetch.max_retries == 3  # self.retry() keeps the task's own limit (as in Celery)

    @app.task(
        autoretry_for=(OSError,),
        retry_kwargs={"countdown": 600},
        retry_backoff=2,
        retry_jitter=False,
    )
    def backoff() -> None:
        raise OSError("down")

    assert [backoff.autoretry_delay(n) for n in range(3)] == [2.0, 4.0, 8.0]  # backoff wins


def test_retry_kwargs_reach_the_worker(app: Conveyor) -> None:
    delays: list[float] = []

    class Delays(Middleware):
        def on_retry(self, job: Job, outcome: Outcome) -> None:
            assert outcome.retry_message is not None
            delays.append(outcome.retry_message.countdown)

    app.add_middleware(Delays())

    @app.task(autoretry_for=(OSError,), retry_kwargs={"countdown": 600, "max_retries": 1})
    def fetch() -> None:
        raise OSError("down")

    with TestWorker(app) as worker:
        result = fetch.delay()
        wait_until(lambda: result.state == states.RETRY, what="first retry")
        worker.run_until_idle(include_delayed=False, propagate=False)
    assert delays == [600.0]


def test_retry_kwargs_bad_keys_are_refused(app: Conveyor) -> None:
    with pytest.raises(ConfigurationError, match="'queue' is not supported"):
        app.task(retry_kwargs={"queue": "x"})(lambda: None)
    with pytest.raises(ConfigurationError, match="must be a number"):
        app.task(retry_kwargs={"countdown": "soon"})(lambda: None)


# -- 4. tasks of a script run as __main__; app.start / worker_main ----------------------------

SCRIPT = """
import sys
from conveyor import Conveyor

app = Conveyor("myapp", broker="memory://")

@app.task
def add(x, y):
    return x + y

if __name__ == "__main__":
    print(add.name)
    if sys.argv[1:] == ["start"]:
        app.start(["myapp.py", "status", "--help"])
    else:
        try:
            app.worker_main(["status"])
        except ValueError as exc:
            print("refused:", exc)
"""


def test_main_script_tasks_are_named_after_the_app_and_start_runs_the_cli(
    tmp_path: Path,
) -> None:
    script = tmp_path / "myapp.py"
    script.write_text(SCRIPT)
    run = subprocess.run(
        [sys.executable, str(script), "start"], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[0] == "myapp.add"
    assert "Usage: conveyor status" in run.stdout
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert "refused: the worker sub-command must be in argv" in run.stdout


def test_start_uses_the_app_without_dash_a(
    app: Conveyor, capsys: pytest.CaptureFixture[str]
) -> None:
    @app.task
    def ping() -> str:
        return "pong"

    ping.delay()
    with pytest.raises(SystemExit) as exit_info:
        app.start(["status"])
    assert exit_info.value.code == 0
    assert "default" in capsys.readouterr().out


# -- 5. current_app, task, uuid ---------------------------------------------------------------


def test_current_app_is_the_default_app_at_each_use() -> None:
    first = make_test_app("first")
    try:
        assert current_app._get_current_object() is first
        assert current_app.main == "first"

        @current_app.task(bind=True, max_retries=3, default_retry_delay=5)
        def retry_task(self: Task) -> str:  # type: ignore[type-arg]
            return self.name

        assert first.tasks[retry_task.name] is retry_task
        second = make_test_app("second")
        try:
            assert current_app.main == "second"
            assert "second" in repr(current_app)
        finally:
            second.close()
    finally:
        first.close()


def test_task_is_the_decorator_and_uuid_a_fresh_id() -> None:
    assert conveyor.task is shared_task
    from conveyor import task

    @task
    def shared_add(x: int, y: int) -> int:
        return x + y

    assert isinstance(shared_add, Task)
    ids = {conveyor.uuid() for _ in range(3)}
    assert len(ids) == 3 and all(str(uuid_module.UUID(i)) == i for i in ids)


# -- 6. ResultSet, allow_join_result, returning results ---------------------------------------


def test_result_set_reads_and_waits_for_its_members(app: Conveyor, worker: TestWorker) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    results = ResultSet([add.delay(1, 1), add.delay(2, 2)])
    extra = add.delay(3, 3)
    results.add(extra)
    results.add(extra)
    assert len(results) == 3
    assert results.get(timeout=10) == [2, 4, 6]
    assert results.join(timeout=10) == [2, 4, 6]
    assert results.ready() and results.successful() and results.completed_count() == 3
    results.discard(extra)
    assert len(results) == 2 and extra not in list(results)
    assert results.get(timeout=10) == [2, 4]


def test_get_inside_a_task_needs_allow_join_result(app: Conveyor, worker: TestWorker) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    @app.task
    def waits(allowed: bool) -> int:
        inner = add.delay(1, 2)
        if allowed:
            with allow_join_result():
                return inner.get(timeout=10)
        return inner.get(timeout=10)

    assert waits.delay(True).get(timeout=10) == 3
    with pytest.raises(InvalidTaskCall):
        waits.delay(False).get(timeout=10)


def test_a_task_returning_results_gives_them_back(app: Conveyor, worker: TestWorker) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    @app.task
    def fan_out(n: int) -> GroupResult:
        return group(add.s(i, i) for i in range(n)).apply_async()

    @app.task
    def one() -> AsyncResult[int]:
        return add.delay(20, 22)

    sent = one.delay()
    inner = sent.get(timeout=10)
    assert isinstance(inner, AsyncResult) and inner.get(timeout=10) == 42
    # Stored as Celery's JSON serializer stores it (the as_tuple() form); code written for
    # that (result_from_tuple(r.get())) keeps working.
    record = app.results.get(sent.id)
    assert record is not None
    assert from_json_value(record.result) == _lists(inner.as_tuple())
    assert result_from_tuple(inner, app) is inner
    rebuilt = fan_out.delay(3).get(timeout=10)
    assert isinstance(rebuilt, GroupResult)
    assert rebuilt.get(timeout=10) == [0, 2, 4]


def _lists(value: object) -> object:
    """The JSON form of an as_tuple() value: tuples become lists."""
    return [_lists(v) for v in value] if isinstance(value, list | tuple) else value


# -- 8. typing=True checks the arguments at the call site -------------------------------------


def test_typing_checks_arguments_when_sending(app: Conveyor) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(bind=True)
    def bound(self: Task, x: int) -> int:  # type: ignore[type-arg]
        return x

    @app.task(typing=False)
    def loose(x: int, y: int) -> int:
        return x + y

    with pytest.raises(TypeError, match=r"add\(x, y\): missing a required argument"):
        add.delay(1)
    with pytest.raises(TypeError, match="unexpected keyword"):
        add.apply_async((1, 2), {"z": 3})
    with pytest.raises(TypeError):
        add.s(1, 2, 3).delay()
    with pytest.raises(TypeError):
        bound.delay()
    assert app.broker.stats(["default"])["default"].ready == 0  # nothing was sent
    bound.delay(1)
    loose.delay(1)  # typing=False: sent; fails in the worker, as in Celery
    add.s(1).delay(2)  # partial + call-time arguments: complete
    assert app.broker.stats(["default"])["default"].ready == 3


def test_typing_checks_eager_calls(eager_app: Conveyor) -> None:
    @eager_app.task
    def add(x: int, y: int) -> int:
        return x + y

    with pytest.raises(TypeError):
        add.delay(1)
    with pytest.raises(TypeError):
        add.apply((1,))


# -- 10. decoded headers and kwargs; eager signals --------------------------------------------


def test_request_headers_and_result_kwargs_are_decoded() -> None:
    app = make_test_app("extended", result_extended=True)
    when = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)

    @app.task(bind=True)
    def header(self: Task, when: object) -> str:  # type: ignore[type-arg]
        value = self.request.headers["when"]
        assert isinstance(value, dt.datetime), value
        return type(value).__name__

    @app.task
    def loose(**kwargs: object) -> int:
        return len(kwargs)

    with app, TestWorker(app):
        result = header.apply_async(kwargs={"when": when}, headers={"when": when})
        assert result.get(timeout=10) == "datetime"
        assert result.kwargs == {"when": when}
        # Stored kwargs are tagged per argument: one named like the tag is still a kwarg.
        odd = loose.apply_async(kwargs={"$type": "datetime", "v": when})
        assert odd.get(timeout=10) == 2
        assert odd.kwargs == {"$type": "datetime", "v": when}


def test_eager_runs_send_task_signals(eager_app: Conveyor) -> None:
    seen: list[tuple[str, object]] = []

    def prerun(sender: object, task_id: str, **kwargs: object) -> None:
        seen.append(("prerun", task_id))

    def postrun(sender: object, task_id: str, state: str, **kwargs: object) -> None:
        seen.append(("postrun", state))

    def success(sender: object, result: object, **kwargs: object) -> None:
        seen.append(("success", result))

    def failure(sender: object, exception: BaseException, **kwargs: object) -> None:
        seen.append(("failure", type(exception).__name__))

    @eager_app.task
    def add(x: int, y: int) -> int:
        return x + y

    @eager_app.task
    def boom() -> None:
        raise KeyError("x")

    receivers = [
        (signals.task_prerun, prerun),
        (signals.task_postrun, postrun),
        (signals.task_success, success),
        (signals.task_failure, failure),
    ]
    for signal, receiver in receivers:
        signal.connect(receiver)
    try:
        result = add.delay(2, 3)
        boom.delay()
    finally:
        for signal, receiver in receivers:
            signal.disconnect(receiver)
    assert seen == [
        ("prerun", result.id),
        ("success", 5),
        ("postrun", states.SUCCESS),
        ("prerun", seen[3][1]),
        ("failure", "KeyError"),
        ("postrun", states.FAILURE),
    ]


# -- 7. errbacks in Celery's shapes; plain functions refused ----------------------------------


def test_celery_style_and_old_style_errbacks(app: Conveyor, worker: TestWorker) -> None:
    seen: list[tuple[object, ...]] = []

    @app.task
    def boom(x: int) -> None:
        raise ValueError(f"boom {x}")

    @app.task
    def on_error(request: conveyor.Request, exc: BaseException, traceback: str) -> None:
        seen.append(("celery", request.id, request.args, type(exc), str(exc), traceback))

    @app.task(bind=True)
    def bound_error(self: Task, req: object, exc: object, tb: object, tag: str) -> None:  # type: ignore[type-arg]
        seen.append(("bound", tag, type(exc)))

    @app.task
    def old_style(task_id: str) -> None:
        seen.append(("old", task_id))

    @app.task
    def raises(request: object, exc: object, traceback: object) -> None:
        raise RuntimeError("errback bug")

    failed = boom.apply_async(
        (7,), link_error=[on_error.s(), bound_error.s("t"), old_style.s(), raises.s()]
    )
    with pytest.raises(ValueError, match="boom 7"):
        failed.get(timeout=10)
    wait_until(lambda: len(seen) == 3, what="three errbacks")
    by_kind = {entry[0]: entry for entry in seen}
    _, task_id, args, exc_type, message, traceback = by_kind["celery"]
    assert (task_id, args, exc_type, message) == (failed.id, [7], ValueError, "boom 7")
    assert isinstance(traceback, str) and "ValueError: boom 7" in traceback
    assert by_kind["bound"] == ("bound", "t", ValueError)
    assert by_kind["old"] == ("old", failed.id)
    # a raising Celery-style errback is logged; the failed task stays settled
    worker.run_until_idle(propagate=False)
    assert failed.state == states.FAILURE


def test_celery_style_errback_in_eager_mode(eager_app: Conveyor) -> None:
    seen: list[object] = []

    @eager_app.task
    def boom() -> None:
        raise KeyError("k")

    @eager_app.task
    def on_error(request: object, exc: object, traceback: object) -> None:
        seen.append(exc)

    boom.apply_async(link_error=on_error.s())
    assert len(seen) == 1 and isinstance(seen[0], KeyError)


def test_plain_function_links_are_refused_at_the_call_site(app: Conveyor) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    def on_success(result: object) -> None:
        return None

    with pytest.raises(TypeError, match="on_success is a plain function, not a task"):
        add.apply_async((1, 2), link=on_success)
    with pytest.raises(TypeError, match="plain function"):
        add.s(1, 2).set(link_error=print).delay()
    assert app.broker.stats(["default"])["default"].ready == 0
