"""Beat in real processes sharing one broker (SQLite file, Redis): each run sent exactly once
while beats run side by side, die by SIGKILL, or all go down and come back."""

from __future__ import annotations

import importlib.util
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from conveyor import Conveyor
from conveyor.message import decode_envelope
from tests.servers import RedisServer

POLICIES = ("latest", "all", "skip")

#: One beat process: three 1-second entries, one per catch-up policy. It prints the broker
#: time of its first tick (``Beat.started_at``), then runs until SIGTERM.
SCRIPT = textwrap.dedent(
    """
    import json, logging, signal, sys, threading

    from conveyor import Conveyor
    from conveyor.beat import Beat

    url, name = sys.argv[1:3]
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )
    app = Conveyor("beatproc", broker=url)
    app.conf.beat_schedule = {
        f"tick-{policy}": {"task": "beatproc.tick", "schedule": 1.0, "catch_up": policy}
        for policy in ("latest", "all", "skip")
    }
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    beat = Beat(app, name=name, max_interval=1.0)
    beat.tick()
    print(json.dumps({"started_at": beat.started_at.isoformat()}), flush=True)
    beat.run(stop)
    app.close()
    """
)


def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached within {timeout} s")
        time.sleep(0.01)  # polling interval of a bounded wait


class BeatProcess:
    def __init__(self, script: Path, url: str, name: str, logs: Path) -> None:
        self.name = name
        self.log = logs / f"{name}.log"
        with self.log.open("w") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, str(script), url, name],
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
            )

    def started_at(self, timeout: float = 30.0) -> datetime:
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        line = self.process.stdout.readline() if ready else ""
        if not line:
            raise AssertionError(f"{self.name} did not start:\n{self.log.read_text()}")
        return datetime.fromisoformat(json.loads(line)["started_at"])

    def kill(self) -> None:
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(10)
        assert self.process.returncode in (0, -signal.SIGKILL), self.log.read_text()

    def close(self) -> None:
        if self.process.poll() is None:
            self.kill()
        if self.process.stdout is not None:
            self.process.stdout.close()


class Observer:
    """Takes every message the beats send and counts them by (entry, scheduled_at)."""

    def __init__(self, url: str) -> None:
        self.app = Conveyor("beat-observer", broker=url, set_as_default=False)
        self.runs: Counter[tuple[str, datetime]] = Counter()
        self.ids: dict[tuple[str, datetime], str] = {}

    def poll(self) -> None:
        deliveries = self.app.broker.lease(["default"], 1000, 0)
        self.app.broker.ack(deliveries)
        for delivery in deliveries:
            envelope = decode_envelope(delivery.body)
            key = (
                envelope.headers["periodic_entry"],
                datetime.fromisoformat(envelope.headers["scheduled_at"]),
            )
            self.runs[key] += 1
            self.ids[key] = envelope.id

    def instants(self, entry: str) -> list[datetime]:
        return sorted(instant for name, instant in self.runs if name == entry)

    def complete_after(self, moment: datetime) -> list[datetime]:
        """Instants after ``moment`` that every entry has."""
        self.poll()
        sets = [set(self.instants(f"tick-{policy}")) for policy in POLICIES]
        return sorted(i for i in set.intersection(*sets) if i > moment)

    def wait_for_runs(self, count: int, after: datetime, timeout: float) -> datetime:
        """Wait until every entry has ``count`` runs after ``after``; return the last one."""
        wait_until(
            lambda: len(self.complete_after(after)) >= count,
            timeout,
            f"{count} runs after {after}",
        )
        return self.complete_after(after)[-1]

    def last_sender(self) -> str:
        raw = self.app.kv.get_value("beat:last:tick-all")
        assert raw is not None
        return str(json.loads(raw)["beat"])

    def assert_exactly_once(self) -> None:
        self.poll()
        duplicates = {key: n for key, n in self.runs.items() if n > 1}
        assert not duplicates, f"sent more than once: {duplicates}"

    def close(self) -> None:
        self.app.close()


def seconds_between(start: datetime, end: datetime) -> list[datetime]:
    """Whole seconds in ``(start, end]``: the due times of a 1-second interval."""
    first = datetime.fromtimestamp(int(start.timestamp()) + 1, UTC)
    return [first + timedelta(seconds=i) for i in range(int((end - first).total_seconds()) + 1)]


def _require(module: str) -> None:
    importlib.import_module(module)  # a missing broker module is an error, never a skip


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def broker_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        _require("conveyor.brokers.sqlite")
        yield f"sqlite:///{tmp_path}/b.db"
        return
    _require("conveyor.brokers.redis")
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed (scripts/test installs it)")
    server = RedisServer(appendonly=False)
    server.start()
    yield server.url
    server.cleanup()


@pytest.fixture
def observer(broker_url: str) -> Iterator[Observer]:
    observer = Observer(broker_url)
    yield observer
    observer.close()


@pytest.fixture
def start_beat(broker_url: str, tmp_path: Path) -> Iterator[Callable[[str], BeatProcess]]:
    script = tmp_path / "beatproc.py"
    script.write_text(SCRIPT)
    started: list[BeatProcess] = []

    def start(name: str) -> BeatProcess:
        beat = BeatProcess(script, broker_url, name, tmp_path)
        started.append(beat)
        return beat

    yield start
    for beat in started:
        beat.close()


# -- tests -------------------------------------------------------------------------------------
@pytest.mark.parametrize("ticks", [10, pytest.param(60, marks=pytest.mark.slow)])
def test_three_beats_send_each_tick_once(
    start_beat: Callable[[str], BeatProcess], observer: Observer, ticks: int
) -> None:
    beats = [start_beat(f"beat-{i}") for i in range(3)]
    started = [beat.started_at() for beat in beats]
    last = observer.wait_for_runs(ticks, max(started), timeout=ticks + 30)
    for beat in beats:
        beat.stop()
    observer.assert_exactly_once()
    for policy in POLICIES:
        sent = observer.instants(f"tick-{policy}")
        # from the first beat's start on, without a gap, to at least the last complete tick
        assert sent[0] == seconds_between(min(started), last)[0]
        assert sent == seconds_between(min(started), sent[-1])
        assert sent[-1] >= last


def test_killing_the_beat_that_fired_last_leaves_no_gap_or_duplicate(
    start_beat: Callable[[str], BeatProcess], observer: Observer
) -> None:
    beats = {name: start_beat(name) for name in ("beat-0", "beat-1", "beat-2")}
    started = [beat.started_at() for beat in beats.values()]
    fresh = observer.wait_for_runs(3, max(started), timeout=30)
    # Right after a send the sender sleeps until the next second: it is between runs, not
    # between a claim and its send (a kill there would lose that one run, visibly).
    fresh = observer.wait_for_runs(1, fresh, timeout=10)
    victim = beats.pop(observer.last_sender())
    victim.kill()
    killed_at = datetime.fromtimestamp(time.time(), UTC)
    observer.wait_for_runs(6, killed_at, timeout=30)
    for beat in beats.values():
        beat.stop()
    observer.assert_exactly_once()
    for policy in POLICIES:
        sent = observer.instants(f"tick-{policy}")
        assert sent == seconds_between(min(started), sent[-1])
        assert len([i for i in sent if i > killed_at]) >= 6
    assert observer.last_sender() in beats


def test_restart_after_an_outage_follows_each_entrys_catch_up_policy(
    start_beat: Callable[[str], BeatProcess], observer: Observer
) -> None:
    first = start_beat("first")
    first_started = first.started_at()
    fresh = observer.wait_for_runs(2, first_started, timeout=30)
    fresh = observer.wait_for_runs(1, fresh, timeout=10)
    first.kill()
    observer.poll()
    last_before = max(max(observer.instants(f"tick-{policy}")) for policy in POLICIES)
    # an outage of more than five ticks
    wait_until(
        lambda: time.time() > last_before.timestamp() + 5.5, timeout=10, what="five missed ticks"
    )
    second = start_beat("second")
    restarted = second.started_at()
    observer.wait_for_runs(3, restarted, timeout=30)
    second.stop()
    observer.assert_exactly_once()

    missed = seconds_between(last_before, restarted)
    assert len(missed) >= 5
    expected_missed = {"latest": missed[-1:], "all": missed, "skip": []}
    for policy in POLICIES:
        sent = observer.instants(f"tick-{policy}")
        before = [i for i in sent if i <= last_before]
        during = [i for i in sent if last_before < i <= restarted]
        after = [i for i in sent if i > restarted]
        assert before == seconds_between(first_started, last_before), policy
        assert during == expected_missed[policy], policy
        assert after == seconds_between(restarted, after[-1]), policy
        assert len(after) >= 3
