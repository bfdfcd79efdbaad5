"""Defining and sending tasks (no worker involved)."""

from __future__ import annotations

import asyncio
import datetime as dt
import time

import pytest

from conveyor import ConfigurationError, Conveyor, SerializationError, Task, shared_task, states
from conveyor.brokers.memory import MemoryBroker
from conveyor.message import decode_envelope, from_json_value


def lease_one(app: Conveyor, queue: str = "default", wait: float = 0.0):  # type: ignore[no-untyped-def]
    deliveries = app.broker.lease([queue], 1, wait)
    assert deliveries, f"no message in {queue!r}"
    return deliveries[0], decode_envelope(deliveries[0].body)


def test_decorator_forms_and_default_names(app: Conveyor) -> None:
    @app.task
    def plain(x: int) -> int:
        return x

    @app.task(name="custom.name", queue="q", priority=7)
    def named() -> None:
        return None

    assert plain.name == f"{__name__}.test_decorator_forms_and_default_names.<locals>.plain"
    assert named.name == "custom.name"
    assert app.tasks["custom.name"] is named
    assert plain(3) == 3  # calling runs inline


def test_task_options_are_validated(app: Conveyor) -> None:
    with pytest.raises(ConfigurationError, match="unknown task option"):
        app.task(retries_max=3)(lambda: None)
    with pytest.raises(ConfigurationError, match="priority"):
        app.task(priority=12)(lambda: None)


def test_bound_task_receives_itself(app: Conveyor) -> None:
    @app.task(bind=True)
    def whoami(self: Task, x: int) -> str:  # type: ignore[type-arg]
        return f"{self.name}:{x}"

    assert whoami(1).endswith(":1")


def test_async_def_is_a_task(app: Conveyor) -> None:
    @app.task
    async def fetch(x: int) -> int:
        await asyncio.sleep(0)
        return x * 2

    assert fetch.is_async
    assert asyncio.run(fetch(2)) == 4


def test_delay_publishes_and_records_queued(app: Conveyor) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    result = add.delay(2, 3)
    assert result.state == states.QUEUED
    _, envelope = lease_one(app)
    assert envelope.id == result.id
    assert envelope.task == add.name
    assert envelope.args == [2, 3]
    assert envelope.root_id == result.id


def test_unknown_ids_are_pending(app: Conveyor) -> None:
    assert app.AsyncResult("never-sent").state == states.PENDING


def test_apply_async_options(app: Conveyor) -> None:
    @app.task
    def job(**kwargs: object) -> None:
        return None

    result = job.apply_async(
        kwargs={"when": dt.date(2026, 1, 1)},
        queue="reports",
        priority=9,
        task_id="fixed-id",
        headers={"trace": "abc"},
        expires=60,
        time_limit=10,
        soft_time_limit=5,
    )
    assert result.id == "fixed-id"
    _, envelope = lease_one(app, "reports")
    assert envelope.priority == 9
    assert envelope.headers == {"trace": "abc"}
    assert from_json_value(envelope.kwargs) == {"when": dt.date(2026, 1, 1)}
    assert envelope.expires is not None
    assert 55 < envelope.expires - time.time() <= 60
    assert (envelope.time_limit, envelope.soft_time_limit) == (10, 5)


def test_countdown_and_eta_wait_in_the_broker(app: Conveyor) -> None:
    @app.task
    def later() -> None:
        return None

    later.apply_async(countdown=30)
    later.apply_async(eta=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5))
    assert app.broker.lease(["default"], 10, 0) == []
    stats = app.broker.stats(["default"])["default"]
    assert stats.delayed == 2


def test_unknown_call_option_is_an_error(app: Conveyor) -> None:
    @app.task
    def job() -> None:
        return None

    with pytest.raises(ConfigurationError, match="countdwn"):
        job.apply_async(countdwn=3)


def test_non_json_argument_fails_at_call_site_and_sends_nothing(app: Conveyor) -> None:
    @app.task
    def send(user: object) -> None:
        return None

    with pytest.raises(SerializationError, match="argument 0"):
        send.delay(object())
    with pytest.raises(SerializationError, match="keyword argument 'user'"):
        send.apply_async(kwargs={"user": {1, 2}})
    assert app.broker.stats(["default"])["default"].ready == 0


def test_oversized_message_fails_at_call_site(app: Conveyor) -> None:
    app.conf.message_max_bytes = 2048

    @app.task
    def big(blob: str) -> None:
        return None

    with pytest.raises(SerializationError, match="message_max_bytes"):
        big.delay("x" * 4096)
    assert app.broker.stats(["default"])["default"].ready == 0


def test_routes_by_name_and_glob(app: Conveyor) -> None:
    app.conf.task_routes = {"billing.charge": "payments", "reports.*": {"queue": "slow"}}
    assert app.route("billing.charge") == "payments"
    assert app.route("reports.monthly") == "slow"
    assert app.route("other") == "default"

    @app.task(name="reports.yearly")
    def yearly() -> None:
        return None

    yearly.delay()
    lease_one(app, "slow")


def test_send_task_by_name_needs_no_registration(app: Conveyor) -> None:
    result = app.send_task("remote.only", args=[1], kwargs={"a": 2}, priority=2)
    _, envelope = lease_one(app)
    assert (envelope.id, envelope.task, envelope.priority) == (result.id, "remote.only", 2)


def test_signatures(app: Conveyor) -> None:
    @app.task
    def greet(first: str, last: str) -> str:
        return f"Hello {first} {last}"

    sig = greet.signature(("John", "Doe"), countdown=0)
    assert sig.args == ("John", "Doe")
    result = sig.apply_async()
    _, envelope = lease_one(app)
    assert envelope.id == result.id
    partial = greet.s("Jane").set(queue="names")
    partial.delay("Roe")
    _, envelope = lease_one(app, "names")
    assert envelope.args == ["Roe", "Jane"]  # arguments given at call time are prepended
    immutable = greet.si("A", "B")
    assert immutable.clone(("ignored",)).args == ("A", "B")


def test_send_many_is_one_batch_and_all_or_nothing(app: Conveyor) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    results = app.send_many([add.s(i, i) for i in range(100)])
    assert len({r.id for r in results}) == 100
    assert app.broker.stats(["default"])["default"].ready == 100
    with pytest.raises(SerializationError):
        app.send_many([add.s(1, 1), add.s(object(), 1)])
    assert app.broker.stats(["default"])["default"].ready == 100


def test_defining_and_importing_tasks_opens_no_connection() -> None:
    app = Conveyor("lazy", broker="redis://127.0.0.1:1/0")  # nothing listens there

    @app.task
    def job() -> None:
        return None

    assert app._broker is None and app._results is None


def test_shared_task_binds_to_the_default_app() -> None:
    @shared_task
    def shared_add(x: int, y: int) -> int:
        return x + y

    first = Conveyor("first", broker="memory://")
    second = Conveyor("second", broker="memory://")
    assert shared_add.name in first.tasks and shared_add.name in second.tasks
    shared_add.delay(1, 2)
    assert second.broker.stats(["default"])["default"].ready == 1
    assert isinstance(first._broker, MemoryBroker | type(None))


def test_async_sending_helpers(app: Conveyor) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    async def main() -> tuple[str, str]:
        a = await add.adelay(1, 2)
        b = await add.aapply_async((3, 4), priority=9)
        return a.id, b.id

    a_id, b_id = asyncio.run(main())
    ids = {d.id for d in app.broker.lease(["default"], 10, 0)}
    assert ids == {a_id, b_id}


def test_on_commit_without_django_hook_is_a_clear_error(app: Conveyor) -> None:
    app.commit_hook = None  # as without conveyor.contrib.django (other tests may load it)

    @app.task
    def job() -> None:
        return None

    with pytest.raises(ConfigurationError, match=r"conveyor\.contrib\.django"):
        job.delay_on_commit()


def test_revoke_is_stored_in_the_broker(app: Conveyor) -> None:
    result = app.send_task("x")
    result.revoke()
    assert app.broker.revoked([result.id]) == {result.id}
