"""The canvas on real brokers (SQLite, Redis): seed 003's examples, failure propagation, a
1,000-task chord, and a chord whose header task's worker is SIGKILLed at each dangerous point.

The crash test runs a real ``python -m conveyor worker -A tests.integration.test_canvas_brokers``:
this module is also that worker's app module (``app`` exists only when ``CANVAS_IT_BROKER`` is
set), and it installs the crash hook named by ``CANVAS_IT_CRASH`` in the worker processes.
Everything synchronises on facts with deadlines (result states, files, queue sizes).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from conveyor import ChordError, Conveyor, states
from conveyor.canvas import chain, chord, followup_id, group
from conveyor.result import GroupResult
from conveyor.testing import TestWorker
from tests.conftest import wait_until
from tests.helpers import redis_fixture
from tests.servers import RedisServer
from tests.unit.test_canvas import run_seed

ROOT = Path(__file__).resolve().parents[2]
SETTINGS: dict[str, Any] = {"broker_lease_timeout": 1.0, "broker_sweep_interval": 1.0}

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("redis", id="redis", marks=pytest.mark.redis),
]


# -- the app (shared by the tests and the worker processes) ---------------------------------


def mark(path: Path, text: str) -> None:
    with path.open("a") as file:
        file.write(f"{os.getpid()} {text}\n")


def lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []


def first_time(marker: Path) -> bool:
    """True exactly once per marker, across processes."""
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return False
    return True


def create_app(broker: str, prefix: str) -> Conveyor:
    app = Conveyor(
        "canvas_it",
        broker=broker,
        set_as_default=False,
        broker_transport_options={"key_prefix": prefix},
        **SETTINGS,
    )

    @app.task(name="canvas_it.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="canvas_it.mul")
    def mul(x: int, y: int) -> int:
        return x * y

    @app.task(name="canvas_it.boom")
    def boom(x: Any = None) -> None:
        raise ValueError(f"boom {x}")

    @app.task(name="canvas_it.tsum")
    def tsum(values: list[int]) -> int:
        return sum(values)

    @app.task(name="canvas_it.errback")
    def errback(task_id: str, info: dict[str, Any], directory: str) -> None:
        mark(Path(directory) / "errbacks", json.dumps([task_id, info]))

    @app.task(name="canvas_it.body")
    def body(values: list[int], directory: str) -> list[int]:
        mark(Path(directory) / "body", json.dumps(values))
        return values

    @app.task(name="canvas_it.victim")
    def victim(i: int, directory: str) -> int:
        folder = Path(directory)
        mark(folder / "victim", "start")
        if os.environ.get("CANVAS_IT_CRASH") == "mid_run" and first_time(folder / "crashed"):
            os.kill(os.getpid(), signal.SIGKILL)
        deadline = time.monotonic() + 30
        while not (folder / "go").exists():  # the test says when every other header task is done
            if time.monotonic() > deadline:
                raise TimeoutError("no go")
            time.sleep(0.02)  # polling a file under a deadline
        return i * 10

    return app


def install_crash_hook(mode: str, folder: Path) -> None:
    """Kill this worker process at ``mode``, the first time the victim task gets there:

    * ``before_join``: its result is stored; its follow-ups (the chord join) never ran;
    * ``before_ack``: result stored, join done, body sent; the message is not acked;
    * ``after_claim``: it claimed the sending of the body and died before sending it.
    """
    from conveyor.worker import execution

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    if mode in {"before_join", "before_ack"}:
        real = execution.on_task_finished

        def hooked(app: Conveyor, envelope: Any, state: str, value: Any) -> None:
            victim = envelope.task == "canvas_it.victim"
            if victim and mode == "before_join" and first_time(folder / "crashed"):
                die()
            real(app, envelope, state, value)
            if victim and mode == "before_ack" and first_time(folder / "crashed"):
                die()

        execution.on_task_finished = hooked  # type: ignore[assignment]
    elif mode == "after_claim":
        from conveyor.kv.redis import RedisKeyValue
        from conveyor.kv.sqlite import SQLiteKeyValue

        for cls in (SQLiteKeyValue, RedisKeyValue):
            real_claim = cls.claim

            def claim(
                self: Any, key: str, ttl: float | None = None, _real: Any = real_claim
            ) -> bool:
                won = bool(_real(self, key, ttl))
                if won and key.endswith(":sending") and first_time(folder / "crashed"):
                    die()
                return won

            cls.claim = claim  # type: ignore[method-assign]


if os.environ.get("CANVAS_IT_BROKER"):  # imported by `conveyor worker -A` in the crash test
    app = create_app(os.environ["CANVAS_IT_BROKER"], os.environ["CANVAS_IT_PREFIX"])
    install_crash_hook(os.environ.get("CANVAS_IT_CRASH", ""), Path(os.environ["CANVAS_IT_DIR"]))


# -- fixtures -------------------------------------------------------------------------------


redis_server = redis_fixture(appendonly=False)


@pytest.fixture(params=BACKENDS)
def broker_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    backend = str(request.param)
    if backend == "sqlite":
        return f"sqlite:///{tmp_path}/conveyor.db"
    server: RedisServer = request.getfixturevalue("redis_server")
    return server.url


@pytest.fixture
def prefix() -> str:
    return f"cv{uuid.uuid4().hex[:10]}"


@pytest.fixture
def it_app(broker_url: str, prefix: str) -> Iterator[Conveyor]:
    app = create_app(broker_url, prefix)
    yield app
    app.close()


@pytest.fixture
def t(it_app: Conveyor) -> SimpleNamespace:
    return SimpleNamespace(
        **{n.split(".")[1]: task for n, task in it_app.tasks.items() if n.startswith("canvas_it.")}
    )


@pytest.fixture
def worker(it_app: Conveyor) -> Iterator[TestWorker]:
    worker = TestWorker(it_app, concurrency=8).start()
    yield worker
    worker.stop(timeout=10)


def idle(app: Conveyor, queues: list[str]) -> bool:
    stats = app.broker.stats(queues)
    return not any(s.ready or s.leased or s.delayed for s in stats.values())


# -- tests ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "imports",
    [
        pytest.param("from conveyor.canvas import chain, group", id="canvas"),
        pytest.param("from conveyor import chain\nfrom conveyor import group", id="verbatim"),
    ],
)
def test_seed_003_examples(
    it_app: Conveyor, worker: TestWorker, capsys: pytest.CaptureFixture[str], imports: str
) -> None:
    run_seed(imports, it_app, capsys)


def test_failure_propagation(
    it_app: Conveyor, worker: TestWorker, t: SimpleNamespace, tmp_path: Path
) -> None:
    errback = t.errback.s(str(tmp_path))
    broken = chain(t.add.s(1, 1), t.boom.s(), t.mul.s(2)).apply_async(link_error=errback)
    with pytest.raises(ValueError, match="boom 2"):
        broken.get(timeout=10)
    failed = broken.parent
    assert failed is not None and failed.state == states.FAILURE
    assert "not run" in (broken.traceback or "")
    body = chord([t.add.s(1, 1), t.boom.s(3)], t.tsum.s()).apply_async(link_error=errback)
    with pytest.raises(ChordError, match="boom 3"):
        body.get(timeout=10)
    outcomes = chord([t.add.s(2, 2), t.boom.s(4)], t.body.s(str(tmp_path)), propagate=False)()
    assert [o["state"] for o in outcomes.get(timeout=10)] == ["SUCCESS", "FAILURE"]
    wait_until(lambda: len(lines(tmp_path / "errbacks")) == 2, 10, "two errbacks")
    called = [json.loads(line.split(" ", 1)[1])[0] for line in lines(tmp_path / "errbacks")]
    assert sorted(called) == sorted([failed.id, body.id])
    assert it_app.AsyncResult(followup_id(failed.id, "errback", 0)).get(timeout=10) is None


def test_nested_workflows(it_app: Conveyor, worker: TestWorker, t: SimpleNamespace) -> None:
    flow = chain(t.add.s(1, 1), group(t.mul.s(2), t.mul.s(3) | t.add.s(1)), t.tsum.s())
    assert flow().get(timeout=10) == 11
    fan = group(chain(t.add.s(1, 1), t.mul.s(5)), chord([t.add.s(1, 2)], t.tsum.s()))()
    assert fan.get(timeout=10) == [10, 3]
    fan.save()
    restored = GroupResult.restore(fan.id, app=it_app)
    assert restored is not None and restored.get(timeout=10) == [10, 3]


def test_thousand_task_chord(it_app: Conveyor, worker: TestWorker, t: SimpleNamespace) -> None:
    result = chord(t.add.s(i, i) for i in range(1000))(t.tsum.s())
    assert result.get(timeout=40) == sum(2 * i for i in range(1000))
    header = result.parent
    assert isinstance(header, GroupResult) and header.completed_count() == 1000


class CliWorker:
    """``python -m conveyor worker -A tests.integration.test_canvas_brokers`` in its own
    session (so it and its children can be killed together)."""

    def __init__(self, env: dict[str, str], log: Path, queues: str) -> None:
        self.log = log.open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                *("-m", "conveyor", "worker", "-A", "tests.integration.test_canvas_brokers"),
                *("-c", "1", "-Q", queues, "-l", "warning"),
            ],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        self.log.close()


@pytest.mark.parametrize("crash", ["mid_run", "before_join", "before_ack", "after_claim"])
def test_chord_body_fires_once_when_a_header_worker_is_killed(
    it_app: Conveyor,
    worker: TestWorker,
    t: SimpleNamespace,
    broker_url: str,
    prefix: str,
    tmp_path: Path,
    crash: str,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    env.update(
        CANVAS_IT_BROKER=broker_url,
        CANVAS_IT_PREFIX=prefix,
        CANVAS_IT_CRASH=crash,
        CANVAS_IT_DIR=str(tmp_path),
        PYTHONPATH=str(ROOT),
    )
    cli = CliWorker(env, tmp_path / "worker.log", "victim")
    try:
        # four header tasks run here; the victim (the last to finish) runs in the CLI worker
        header = [t.add.s(i, i) for i in range(4)] + [
            t.victim.s(4, str(tmp_path)).set(queue="victim")
        ]
        result = chord(header, t.body.s(str(tmp_path)))()
        others = result.parent.results[:4]
        wait_until(lambda: all(r.state == states.SUCCESS for r in others), 20, "other headers")
        (tmp_path / "go").touch()
        assert result.get(timeout=30) == [0, 2, 4, 6, 40]
        # the victim was killed once and ran again; then nothing is left anywhere
        wait_until(lambda: (tmp_path / "crashed").exists(), 10, "the crash")
        wait_until(lambda: len(lines(tmp_path / "victim")) >= 2, 20, "the victim's second run")
        wait_until(lambda: idle(it_app, ["victim", "default"]), 20, "empty queues")
        worker.drain(20)
        assert result.parent.results[4].get(timeout=10) == 40
    except BaseException:
        print((tmp_path / "worker.log").read_text(errors="replace"))
        raise
    finally:
        cli.stop()
    assert [line.split(" ", 1)[1] for line in lines(tmp_path / "body")] == ["[0, 2, 4, 6, 40]"]
