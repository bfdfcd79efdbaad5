"""The publish path's shortcuts: ids drawn in batches, argument shapes checked once, the
settings read once per batch - each must give what the long way gives."""

from __future__ import annotations

import gc
import os
import uuid

import pytest

from conveyor import ConfigurationError, Conveyor, SerializationError
from conveyor.calling import PAUSE_GC_FROM
from conveyor.config import Settings
from conveyor.ids import new_id, new_ids
from conveyor.message import Envelope, decode_envelope
from conveyor.middleware import Middleware
from conveyor.signing import signer_for


def test_ids_are_random_version_4_uuids_and_unique() -> None:
    ids = new_ids(5000) + [new_id() for _ in range(600)]
    assert len(set(ids)) == len(ids)
    for text in ids[:50] + ids[-50:]:
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122


def test_a_forked_child_never_reuses_the_parents_ids() -> None:
    new_id()  # the pool holds ids drawn by this process
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: send its next ids and leave at once
        os.write(write, ",".join(new_id() for _ in range(10)).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read) as f:
        child = set(f.read().split(","))
    parent = {new_id() for _ in range(10)}
    assert len(child) == 10 and not child & parent


def test_argument_shapes_are_remembered_but_wrong_calls_still_fail(app: Conveyor) -> None:
    @app.task
    def add(x: int, y: int = 1) -> int:
        return x + y

    add.delay(1)
    add.delay(2)  # a shape seen before
    add.delay(1, y=2)
    with pytest.raises(TypeError, match="too many positional"):
        add.delay(1, 2, 3)
    with pytest.raises(TypeError, match="unexpected keyword"):
        add.delay(1, z=2)
    with pytest.raises(TypeError, match="missing a required"):
        add.delay()
    with pytest.raises(TypeError, match="missing a required"):
        add.delay(y=2)
    with pytest.raises(TypeError, match="too many positional"):
        app.send_many([add.s(1), add.s(1, 2, 3)])
    assert app.broker.stats(["default"])["default"].ready == 3


def _envelopes(app: Conveyor, queue: str, count: int) -> list[Envelope]:
    deliveries = app.broker.lease([queue], count, 0)
    assert len(deliveries) == count
    return [decode_envelope(d.body) for d in deliveries]


def test_a_batch_mixes_defaults_and_options_per_call(app: Conveyor) -> None:
    @app.task(queue="work", priority=3, time_limit=10, expires=60)
    def job(n: int) -> int:
        return n

    @app.task(ignore_result=True)
    def quiet() -> None:
        return None

    app.conf.task_default_priority = 4
    results = app.send_many(
        [
            job.s(1),
            job.s(2).set(priority=9, queue="urgent", headers={"h": 1}),
            quiet.s(),
            job.s(3).set(countdown=30),
            job.s(4),
        ]
    )
    work = _envelopes(app, "work", 2)  # job 3 is delayed
    assert [e.args for e in work] == [[1], [4]]
    for envelope in work:
        assert envelope.priority == 3 and envelope.time_limit == 10
        assert envelope.expires == pytest.approx(envelope.created_at + 60)
        assert envelope.root_id == envelope.id
    (urgent,) = _envelopes(app, "urgent", 1)
    assert urgent.priority == 9 and urgent.headers == {"h": 1}
    (default,) = _envelopes(app, "default", 1)
    assert default.task == quiet.name and default.priority == 4
    assert default.ignore_result
    assert app.broker.stats(["work"])["work"].delayed == 1
    ids = [r.id for r in results]
    assert len(set(ids)) == 5
    assert [r.state for r in results] == ["QUEUED", "QUEUED", "PENDING", "QUEUED", "QUEUED"]


def test_bad_defaults_of_a_task_fail_each_call_with_the_long_ways_error(
    app: Conveyor,
) -> None:
    @app.task
    def job() -> None:
        return None

    job.priority = 12  # set after the decorator checked it
    with pytest.raises(ConfigurationError, match="priority must be an integer 0-9"):
        job.delay()
    with pytest.raises(ConfigurationError, match="priority must be an integer 0-9"):
        app.send_many([job.s()])
    job.priority = None
    app.conf.task_routes = {job.name: {"queue": "routed"}}
    job.delay()
    assert _envelopes(app, "routed", 1)


def test_settings_changed_between_batches_apply_to_the_next(app: Conveyor) -> None:
    @app.task
    def job() -> None:
        return None

    app.send_many([job.s()])
    app.conf.task_default_queue = "other"
    app.conf.task_time_limit = 5
    app.send_many([job.s()])
    (first,) = _envelopes(app, "default", 1)
    (second,) = _envelopes(app, "other", 1)
    assert first.time_limit is None and second.time_limit == 5


def test_delay_sees_every_change_to_what_it_keeps_between_calls(app: Conveyor) -> None:
    """``delay()`` keeps the settings and each task's defaults between calls: a setting set,
    a route or signing key changed in place, a task option changed - each applies to the
    next call."""

    @app.task
    def job() -> None:
        return None

    job.delay()
    (first,) = _envelopes(app, "default", 1)
    app.conf.task_default_priority = 7  # set: a new settings version
    job.delay()
    assert _envelopes(app, "default", 1)[0].priority == 7
    app.conf.task_routes[job.name] = "routed"  # changed in place: no new version
    job.delay()
    assert _envelopes(app, "routed", 1)
    del app.conf.task_routes[job.name]
    job.priority = 2
    job.time_limit = 30
    job.delay()
    (changed,) = _envelopes(app, "default", 1)
    assert (changed.priority, changed.time_limit) == (2, 30)
    assert first.priority == 5 and first.time_limit is None
    job.expires = 60  # relative: a time of its own for each call
    job.delay()
    (expiring,) = _envelopes(app, "default", 1)
    assert expiring.expires == pytest.approx(expiring.created_at + 60)
    app.conf.message_signing_keys.append("k" * 32)  # signing turned on in place
    job.delay()
    (delivery,) = app.broker.lease(["default"], 1, 0)
    assert decode_envelope(delivery.body, signer=signer_for(["k" * 32])).task == job.name


def test_a_router_function_is_asked_at_every_call(app: Conveyor) -> None:
    @app.task
    def job() -> None:
        return None

    turn = iter(["a", "b"])
    app.conf.task_routes = [lambda name: next(turn)]
    job.delay()
    job.delay()
    assert _envelopes(app, "a", 1) and _envelopes(app, "b", 1)


def test_settings_version_changes_on_every_set() -> None:
    settings = Settings()
    start = settings.version
    settings.task_default_queue = "x"
    settings.update(task_default_priority=3)
    settings["task_time_limit"] = 5
    assert settings.version == start + 3


@pytest.mark.parametrize("args", ["ab", b"ab", {1, 2}, iter([1]), 5])
def test_args_that_are_not_a_list_or_tuple_fail_at_the_call_site(
    app: Conveyor, args: object
) -> None:
    @app.task
    def job(*items: object) -> None:
        return None

    with pytest.raises(TypeError, match=r"args of .* must be a list or tuple"):
        job.apply_async(args)  # type: ignore[arg-type]  # the wrong type is the point
    with pytest.raises(TypeError, match=r"args of .* must be a list or tuple"):
        app.send_task(job.name, args)  # type: ignore[arg-type]
    job.apply_async((1,))
    job.apply_async([1, 2])
    job.apply_async(None)
    assert app.broker.stats(["default"])["default"].ready == 3


class _CollectorWatch(Middleware):
    """Records whether the garbage collector ran while each message was built."""

    def __init__(self) -> None:
        self.enabled: list[bool] = []

    def before_publish(self, app: Conveyor, envelope: Envelope) -> None:
        self.enabled.append(gc.isenabled())


def test_a_large_batch_is_built_with_the_collector_paused_and_restored(app: Conveyor) -> None:
    @app.task(ignore_result=True)
    def job(n: int) -> None:
        return None

    watch = _CollectorWatch()
    app.add_middleware(watch)
    assert gc.isenabled()
    app.send_many([job.s(n) for n in range(PAUSE_GC_FROM)])
    assert watch.enabled == [False] * PAUSE_GC_FROM and gc.isenabled()
    watch.enabled.clear()
    app.send_many([job.s(n) for n in range(PAUSE_GC_FROM - 1)])  # small: left alone
    app.send_many(job.s(n) for n in range(PAUSE_GC_FROM))  # an iterator: left alone
    assert all(watch.enabled) and len(watch.enabled) == 2 * PAUSE_GC_FROM - 1
    bad = [job.s(n) for n in range(PAUSE_GC_FROM)] + [job.s(object())]
    with pytest.raises(SerializationError):
        app.send_many(bad)
    assert gc.isenabled()  # back on after a failed batch
    gc.disable()  # the caller's choice stays
    try:
        app.send_many([job.s(n) for n in range(PAUSE_GC_FROM)])
        assert not gc.isenabled()
    finally:
        gc.enable()
    assert app.broker.stats(["default"])["default"].ready == 4 * PAUSE_GC_FROM - 1
