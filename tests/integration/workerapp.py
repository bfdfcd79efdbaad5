"""Tasks for process tests: ``conveyor worker -A tests.integration.workerapp``.

The broker comes from ``$CONVEYOR_BROKER_URL``; ``$WORKERAPP_SETTINGS`` (JSON) adds settings
(by default 1 s leases and sweeps). Tasks that must be counted append a line to a file given
as an argument: ``runs(path)`` says how often a task ran.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from conveyor import Conveyor, Task
from conveyor.exceptions import SoftTimeLimitExceeded
from conveyor.worker.process import INTERRUPT_SIGNAL

DEFAULT_SETTINGS: dict[str, Any] = {"broker_lease_timeout": 1.0, "broker_sweep_interval": 1.0}


def create_app(broker: str | None = None, **settings: Any) -> Conveyor:
    merged = {**DEFAULT_SETTINGS, **json.loads(os.environ.get("WORKERAPP_SETTINGS") or "{}")}
    app = Conveyor("workerapp", broker=broker, **{**merged, **settings})
    register(app)
    return app


def mark(path: str, text: str = "") -> None:
    """Append one line (``pid text``) to ``path``."""
    with open(path, "a") as file:
        file.write(f"{os.getpid()} {text}\n")


def runs(path: str | Path) -> list[str]:
    """The lines tasks appended to ``path`` (one per run)."""
    try:
        return Path(path).read_text().splitlines()
    except FileNotFoundError:
        return []


def register(app: Conveyor) -> None:
    @app.task(name="workerapp.add")
    def add(x: int, y: int) -> int:
        return x + y

    @app.task(name="workerapp.mark_id")
    def mark_id(path: str, tag: str) -> None:
        mark(path, tag)

    @app.task(name="workerapp.pid")
    def pid() -> int:
        return os.getpid()

    @app.task(name="workerapp.record")
    def record(path: str) -> float:
        mark(path, "run")
        return time.time()

    @app.task(name="workerapp.sleep")
    def sleep(path: str, seconds: float) -> int:
        mark(path, "start")
        time.sleep(seconds)
        mark(path, "end")
        return os.getpid()

    @app.task(name="workerapp.sleep_at_most_once", acks_late=False)
    def sleep_at_most_once(path: str, seconds: float) -> None:
        mark(path, "start")
        time.sleep(seconds)

    @app.task(name="workerapp.suicide")
    def suicide(path: str) -> None:
        mark(path, "run")
        os.kill(os.getpid(), signal.SIGKILL)

    @app.task(name="workerapp.die_until")
    def die_until(path: str, flag: str, tag: str = "") -> str:
        """SIGKILL its own process (its worker is lost mid-task) until ``flag`` exists."""
        mark(path, f"run {tag}")
        if not Path(flag).exists():
            os.kill(os.getpid(), signal.SIGKILL)
        return tag

    @app.task(name="workerapp.die_limited", concurrency_limit=1)
    def die_limited(path: str, flag: str) -> str:
        return die_until(path, flag, "limited")

    @app.task(name="workerapp.batch_callback")
    def batch_callback(summary: dict[str, Any], path: str, kind: str) -> None:
        fields = [kind, summary["total"], summary["failed"], summary["dead"]]
        mark(path, json.dumps(fields))

    @app.task(name="workerapp.soft_limited", soft_time_limit=0.5)
    def soft_limited(path: str, seconds: float) -> str:
        mark(path, "start")
        try:
            time.sleep(seconds)
        except SoftTimeLimitExceeded:
            mark(path, "soft")
            return "interrupted"
        return "slept"

    @app.task(name="workerapp.hard_limited", time_limit=1.0)
    def hard_limited(path: str, seconds: float) -> str:
        mark(path, "start")
        time.sleep(seconds)
        return "slept"

    @app.task(name="workerapp.stubborn")
    def stubborn(path: str, seconds: float) -> str:
        """Ignores every interruption, like a task stuck in C code: only killing its process
        stops it. The interrupt signal is blocked and only noted (``ignored``); catching the
        exception instead would let a second interrupt land in the handler and end the task."""
        mark(path, "start")
        assert INTERRUPT_SIGNAL is not None  # POSIX only, like the process tests
        asks = {INTERRUPT_SIGNAL}
        signal.pthread_sigmask(signal.SIG_BLOCK, asks)
        try:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                if signal.sigtimedwait(asks, 0.05) is not None:
                    mark(path, "ignored")
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, asks)
        return "done"

    @app.task(name="workerapp.stamp")
    def stamp(path: str) -> None:
        """A no-op that records when it started."""
        mark(path, repr(time.time()))

    @app.task(name="workerapp.stamp_count", bind=True)
    def stamp_count(self: Task[..., None], path: str) -> None:
        """A no-op that records the delivery count of its message."""
        mark(path, str(self.request.delivery_count))

    @app.task(name="workerapp.block")
    def block(path: str, go: str, timeout: float) -> bool:
        """Runs until the file ``go`` exists (at most ``timeout`` seconds)."""
        mark(path, "start")
        deadline = time.monotonic() + timeout
        while not os.path.exists(go) and time.monotonic() < deadline:
            time.sleep(0.01)
        return os.path.exists(go)

    @app.task(name="workerapp.until_runs")
    def until_runs(path: str, watched: str, count: int, at_least: float, timeout: float) -> bool:
        """Runs ``at_least`` seconds and until ``watched`` has ``count`` lines (at most
        ``timeout`` seconds); records its start and end times and whether it saw them."""
        started = time.time()
        deadline = time.monotonic() + timeout
        time.sleep(at_least)
        while len(runs(watched)) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        saw = len(runs(watched)) >= count
        mark(path, f"{started!r} {time.time()!r} {saw}")
        return saw

    @app.task(name="workerapp.async_sleep")
    async def async_sleep(seconds: float) -> str:
        import asyncio

        await asyncio.sleep(seconds)
        return "ok"


app = create_app()
