"""Chaos scenarios against real ``conveyor worker`` / ``beat`` processes and real brokers,
shared by ``tests/chaos/test_chaos.py`` (assertions) and ``scripts/chaos`` (the figures table
of docs/reliability.md).

A broker joins every scenario with one entry in :data:`BROKERS`: a name and a context manager
giving a :class:`Server` (its URL, the app settings it needs, and how to crash and restart it
if it is a server).
Each scenario returns a flat dict of figures; ``None`` marks a scenario that does not apply.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

from conveyor import Conveyor
from tests.chaos.chaosapp import create_app
from tests.integration.test_beat_processes import SCRIPT, BeatProcess, Observer
from tests.integration.test_worker_processes import child_pids
from tests.pg_server import PostgresServer
from tests.rabbit_server import RabbitServer
from tests.servers import RedisServer

ROOT = Path(__file__).resolve().parents[2]
WORKER = [sys.executable, "-m", "conveyor", "worker", "-A", "tests.chaos.chaosapp"]
Figures = dict[str, Any]


class Server(Protocol):
    url: str
    #: App settings every process of a scenario needs on this broker (e.g. RabbitMQ's result
    #: store, which also holds its key/value data).
    settings: dict[str, Any]

    def crash_and_restart(self, downtime: float) -> bool | None:
        """SIGKILL the server, keep it down ``downtime`` s, start it again (False: cannot)."""
        ...


@dataclass
class SQLiteFile:
    url: str
    settings: dict[str, Any] = field(default_factory=dict)

    def crash_and_restart(self, downtime: float) -> bool | None:
        return False  # a file: nothing to restart


@dataclass
class RedisAlways:
    server: RedisServer
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.server.url

    def crash_and_restart(self, downtime: float) -> bool | None:
        self.server.kill()
        time.sleep(downtime)  # the length of the outage being injected
        self.server.start()
        return True


@contextlib.contextmanager
def sqlite_broker(tmp: Path) -> Iterator[Server]:
    yield SQLiteFile(f"sqlite:///{tmp}/broker.db")


@contextlib.contextmanager
def redis_broker(tmp: Path) -> Iterator[Server]:
    server = RedisServer(appendonly=True)  # appendfsync always (tests/servers.py)
    server.start()
    try:
        yield RedisAlways(server)
    finally:
        server.cleanup()


@dataclass
class PostgresCrash:
    """A PostgreSQL cluster with fsync on; a crash SIGKILLs the postmaster and every backend
    (no shutdown checkpoint: the restart runs crash recovery from the WAL)."""

    server: PostgresServer
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.server.url()

    def crash_and_restart(self, downtime: float) -> bool | None:
        process = self.server.process
        assert process is not None
        for pid in [process.pid, *child_pids(process.pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        process.wait(10)
        self.server.process = None
        time.sleep(downtime)  # the length of the outage being injected
        self.server.start(timeout=60)
        return True


@dataclass
class RabbitCrash:
    """A RabbitMQ node; a crash SIGKILLs its Erlang VM (durable queues and persistent
    messages are recovered from its message store at the next boot)."""

    server: RabbitServer
    url: str
    settings: dict[str, Any]

    def crash_and_restart(self, downtime: float) -> bool | None:
        self.server.kill()
        time.sleep(downtime)  # the length of the outage being injected
        self.server.start()
        return True


@contextlib.contextmanager
def postgres_broker(tmp: Path) -> Iterator[Server]:
    server = PostgresServer(durable=True)
    try:
        server.start()
        yield PostgresCrash(server)
    finally:
        server.cleanup()


@contextlib.contextmanager
def rabbit_broker(tmp: Path) -> Iterator[Server]:
    """RabbitMQ keeps no results or key/value data (revocations, beat claims, the worker
    registry): they live in a SQLite file, given both as the result store of the chaos app
    and as ``kv_url`` in the URL (for the beat processes, which get only the URL)."""
    server = RabbitServer()
    results = f"sqlite:///{tmp}/results.db"
    try:
        server.start()
        yield RabbitCrash(
            server, f"{server.url}?kv_url={quote(results, safe='')}", {"result_backend": results}
        )
    finally:
        server.cleanup()


@dataclass(frozen=True)
class BrokerSpec:
    name: str
    start: Callable[[Path], contextlib.AbstractContextManager[Server]]
    #: The pytest marks of the server it needs (``redis``, ``postgres``, ``amqp``).
    marks: tuple[str, ...] = ()


#: Every broker of the chaos suite.
BROKERS = [
    BrokerSpec("sqlite", sqlite_broker),
    BrokerSpec("redis", redis_broker, ("redis",)),
    BrokerSpec("postgres", postgres_broker, ("postgres",)),
    BrokerSpec("amqp", rabbit_broker, ("amqp",)),
]


# -- processes -------------------------------------------------------------------------------
#: Every worker started by the running scenario: :func:`run` kills what is left, whatever
#: happened (a failed wait must not leave workers behind).
_STARTED: list[Worker] = []


class Worker:
    """``conveyor worker -A tests.chaos.chaosapp ARGS`` in its own session."""

    def __init__(self, url: str, settings: dict[str, Any], log: Path, *args: str) -> None:
        env = dict(os.environ)
        env["CONVEYOR_BROKER_URL"] = url
        env["CHAOSAPP_SETTINGS"] = json.dumps(settings)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        self.log = log
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [*WORKER, "-l", "info", *args],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pid = self.process.pid
        _STARTED.append(self)

    def children(self) -> list[int]:
        return child_pids(self.pid)

    def wait_children(self, count: int, timeout: float = 60) -> list[int]:
        return wait(lambda: len(kids := self.children()) == count and kids, timeout, "children")

    def kill_all(self) -> list[int]:
        """SIGKILL the whole worker (supervisor and children); return the pids killed."""
        pids = [self.pid, *self.children()]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        self.process.wait(10)
        return pids

    def stop(self, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def close(self) -> None:
        """Kill whatever is left of the worker's session (children included)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        if self.process.poll() is None:
            self.process.wait(10)


def wait[T](predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.1) -> T:
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(interval)  # polling interval of a bounded wait
    return value


@dataclass
class Mark:
    what: str
    mid: str
    pid: int
    at: float


def marks(path: Path) -> list[Mark]:
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        parts = line.split()
        if len(parts) == 4:
            out.append(Mark(parts[0], parts[1], int(parts[2]), float(parts[3])))
    return out


def publish_work(app: Conveyor, path: Path, count: int, seconds: float) -> list[str]:
    """Publish ``count`` chaos.work tasks in batches (one broker call per 500)."""
    ids: list[str] = []
    for start in range(0, count, 500):
        messages = []
        for i in range(start, min(start + 500, count)):
            mid = f"w{i}-{uuid.uuid4().hex[:6]}"
            _, message, _ = app.prepare(
                "chaos.work", [str(path), mid, seconds], {}, {"task_id": mid, "ignore_result": True}
            )
            messages.append(message)
            ids.append(mid)
        app.broker.publish(messages)
    return ids


def dones(path: Path) -> Counter[str]:
    return Counter(m.mid for m in marks(path) if m.what == "done")


# -- scenarios -------------------------------------------------------------------------------
def kills(server: Server, tmp: Path, tasks: int = 20_000, kill_count: int = 20) -> Figures:
    """``kill_count`` SIGKILLs, alternating one child and a whole worker (replaced at once),
    while two 2-child workers run ``tasks`` 5-ms tasks published up front. Default lease
    timeout (30 s) and sweep interval (5 s)."""
    settings: dict[str, Any] = {**server.settings, "worker_log_tasks": False}
    runs = tmp / "kills.runs"
    app = create_app(server.url, **settings)
    try:
        ids = publish_work(app, runs, tasks, 0.005)
        workers = [Worker(server.url, settings, tmp / f"kw{i}.log", "-c", "2") for i in range(2)]
        for worker in workers:
            worker.wait_children(2)
        started = time.monotonic()
        retired: list[Worker] = []
        killed: dict[int, float] = {}  # pid -> when killed
        worker_kills: list[tuple[float, set[int], int]] = []  # (when, pids, queue depth)
        child_kills: list[tuple[float, int]] = []
        for n in range(kill_count):
            target = (n + 1) * tasks // (kill_count + 4)
            wait(lambda: len(dones(runs)) >= target, 300, "progress")  # noqa: B023
            victim = workers[n % len(workers)]
            if n % 2 == 0:
                kids = victim.wait_children(2)
                pid = kids[n // 2 % 2]
                os.kill(pid, signal.SIGKILL)
                killed[pid] = time.time()
                child_kills.append((killed[pid], pid))
            else:
                depth = app.broker.stats(["default"])["default"].ready
                pids = victim.kill_all()
                when = time.time()
                for pid in pids:
                    killed[pid] = when
                worker_kills.append((when, set(pids), depth))
                log = tmp / f"kw{len(workers) + len(retired)}.log"
                replacement = Worker(server.url, settings, log, "-c", "2")
                workers[n % len(workers)] = replacement
                retired.append(victim)
                replacement.wait_children(2)
        wait(lambda: set(dones(runs)) >= set(ids), 600, "every task done", interval=0.5)
        elapsed = time.monotonic() - started
        for worker in workers + retired:
            worker.close()
    finally:
        app.close()
    return _kill_figures(marks(runs), ids, killed, worker_kills, child_kills, elapsed)


def _kill_figures(
    all_marks: list[Mark],
    ids: list[str],
    killed: dict[int, float],
    worker_kills: list[tuple[float, set[int], int]],
    child_kills: list[tuple[float, int]],
    elapsed: float,
) -> Figures:
    done = Counter(m.mid for m in all_marks if m.what == "done")
    duplicated = {mid for mid, n in done.items() if n > 1}
    by_id: dict[str, list[Mark]] = defaultdict(list)
    for mark in all_marks:
        by_id[mark.mid].append(mark)
    # In flight at a kill: a run (started, maybe done but not acked) in a killed process.
    in_flight = {m.mid for m in all_marks if m.pid in killed}
    whole = {pid for _, pids, _ in worker_kills for pid in pids}
    recovery: dict[str, list[float]] = {"worker": [], "child": []}
    interrupted = 0
    for ms in by_id.values():
        for m in ms:
            if m.what != "start" or m.pid not in killed:
                continue
            if any(o.what == "done" and o.pid == m.pid for o in ms):
                continue  # it finished there
            interrupted += 1
            kill_at = killed[m.pid]
            later = [o.at for o in ms if o.what == "start" and o.at > kill_at]
            if later:
                recovery["worker" if m.pid in whole else "child"].append(min(later) - kill_at)
    return {
        "tasks": len(ids),
        "child kills": len(child_kills),
        "worker kills": len(worker_kills),
        "queued at worker kills": min((d for _, _, d in worker_kills), default=0),
        "lost": len(set(ids) - set(done)),
        "duplicated": len(duplicated),
        "duplicates in flight": duplicated <= in_flight,
        "interrupted runs": interrupted,
        "re-run after a worker kill (s, median / max)": _spread(recovery["worker"]),
        "re-run after a child kill (s, median / max)": _spread(recovery["child"]),
        "elapsed s": round(elapsed, 1),
    }


def _spread(values: list[float]) -> str | None:
    if not values:
        return None
    return f"{statistics.median(values):.1f} / {max(values):.1f} (n={len(values)})"


def broker_restarts(server: Server, tmp: Path, tasks: int = 3000, restarts: int = 3) -> Figures:
    """A producer sends ``tasks`` tasks one ``delay()`` at a time while the broker is killed
    (SIGKILL) ``restarts`` times for 2 s; a 2-child worker runs them. The outage lasts until
    the server accepts connections again (RabbitMQ takes 5-10 s to boot, more when loaded):
    a send whose retries (15 s in all by default) end before that fails, and is counted."""
    settings: dict[str, Any] = {
        **server.settings,
        "worker_log_tasks": False,
        "broker_lease_timeout": 10.0,
        "broker_sweep_interval": 2.0,
    }
    runs = tmp / "restarts.runs"
    app = create_app(server.url, **settings)
    sent: list[str] = []
    errors: list[str] = []
    try:
        app.broker.stats(["default"])
        if isinstance(server, SQLiteFile):
            return {"restarts": "n/a: a file, not a server"}
        worker = Worker(server.url, settings, tmp / "rw.log", "-c", "2")
        worker.wait_children(2)
        children = worker.children()

        abandoned = threading.Event()  # the scenario failed: stop sending

        def produce() -> None:
            for i in range(tasks):
                if abandoned.is_set():
                    return
                mid = f"r{i}-{uuid.uuid4().hex[:6]}"
                try:
                    app.send_task("chaos.work", [str(runs), mid, 0.001], task_id=mid)
                    sent.append(mid)
                except Exception as exc:  # a send that failed for good: counted, not lost
                    errors.append(f"{type(exc).__name__}: {exc}")
                time.sleep(0.002)  # a steady producer, not a burst

        producer = threading.Thread(target=produce, daemon=True)
        started = time.monotonic()
        producer.start()
        outages: list[float] = []  # from the kill until the server is back (boot included)
        try:
            for n in range(restarts):
                target = (n + 1) * tasks // (restarts + 1)
                wait(lambda: len(sent) >= target, 300, "sends")  # noqa: B023
                crashed = time.monotonic()
                server.crash_and_restart(2.0)
                outages.append(time.monotonic() - crashed)
        except BaseException:
            abandoned.set()
            raise
        producer.join(600)
        wait(lambda: set(dones(runs)) >= set(sent), 300, "every sent task done", interval=0.5)
        elapsed = time.monotonic() - started
        restarted_children = worker.children() != children
        worker.close()
    finally:
        app.close()
    done = dones(runs)
    return {
        "restarts": restarts,
        "longest outage s": round(max(outages), 1),
        "sent": len(sent),
        "send errors": len(errors),
        "lost": len(set(sent) - set(done)),
        "duplicated": sum(1 for n in done.values() if n > 1),
        "children replaced": restarted_children,
        "elapsed s": round(elapsed, 1),
    }


def sigterm(server: Server, tmp: Path, tasks: int = 2000) -> Figures:
    """SIGTERM a 2-child worker a third of the way through ``tasks`` 20-ms tasks; a second
    worker finishes the rest. Warm shutdown: nothing runs twice, nothing is lost."""
    settings: dict[str, Any] = {**server.settings, "worker_log_tasks": False}
    runs = tmp / "sigterm.runs"
    app = create_app(server.url, **settings)
    try:
        ids = publish_work(app, runs, tasks, 0.02)
        first = Worker(server.url, settings, tmp / "tw1.log", "-c", "2")
        first.wait_children(2)
        wait(lambda: len(dones(runs)) >= tasks // 3, 300, "a third done")
        signalled = time.monotonic()
        code = first.stop(60)
        shutdown = time.monotonic() - signalled
        at_stop = marks(runs)
        unfinished = {m.mid for m in at_stop if m.what == "start"} - set(dones(runs))
        second = Worker(server.url, settings, tmp / "tw2.log", "-c", "2")
        wait(lambda: set(dones(runs)) >= set(ids), 300, "every task done", interval=0.5)
        second.close()
    finally:
        app.close()
    done = dones(runs)
    return {
        "tasks": tasks,
        "exit code": code,
        "shutdown s": round(shutdown, 2),
        "left unfinished": len(unfinished),
        "lost": len(set(ids) - set(done)),
        "re-runs": sum(1 for n in done.values() if n > 1),
    }


def poison(server: Server, tmp: Path, poisons: int = 20, good: int = 2000) -> Figures:
    """``poisons`` tasks that SIGKILL their own process among ``good`` tasks, 2-s leases:
    each poison is dead-lettered as worker_lost after task_max_deliveries (4) deliveries;
    every good task runs once."""
    settings: dict[str, Any] = {
        **server.settings,
        "worker_log_tasks": False,
        "broker_lease_timeout": 2.0,
        "broker_sweep_interval": 1.0,
    }
    runs = tmp / "poison.runs"
    app = create_app(server.url, **settings)
    try:
        ids = publish_work(app, runs, good, 0.001)
        bad = [f"p{i}" for i in range(poisons)]
        for mid in bad:
            app.send_task("chaos.poison", [str(runs), mid], task_id=mid)
        started = time.monotonic()
        worker = Worker(server.url, settings, tmp / "pw.log", "-c", "2")
        dead = wait(
            lambda: len(d := app.broker.dead_letters(limit=1000)) >= poisons and d,
            600,
            "poison dead-lettered",
            interval=0.5,
        )
        wait(lambda: set(dones(runs)) >= set(ids), 300, "good tasks done", interval=0.5)
        elapsed = time.monotonic() - started
        deaths = worker.log.read_text(errors="replace").count(" died: ")
        worker.close()
    finally:
        app.close()
    runs_of = Counter(m.mid for m in marks(runs) if m.what == "poison")
    done = dones(runs)
    return {
        "poison tasks": poisons,
        "dead-lettered worker_lost": sum(
            1 for d in dead if d.id in set(bad) and d.reason == "worker_lost"
        ),
        "deliveries per poison": sorted(set(runs_of.values())),
        "child deaths": deaths,
        "good lost": len(set(ids) - set(done)),
        "good duplicated": sum(1 for n in done.values() if n > 1),
        "elapsed s": round(elapsed, 1),
    }


def beats(server: Server, tmp: Path, leader_kills: int = 3) -> Figures:
    """Three beat processes (1-second entries); the one that sent last is SIGKILLed
    ``leader_kills`` times (a new one started each time). Every tick exactly once, no gap."""
    script = tmp / "beat_script.py"
    script.write_text(SCRIPT)
    logs = tmp / "beats"
    logs.mkdir(exist_ok=True)
    observer = Observer(server.url)
    alive: dict[str, BeatProcess] = {}
    try:
        for i in range(3):
            alive[f"beat-{i}"] = BeatProcess(script, server.url, f"beat-{i}", logs)
        started = min(beat.started_at() for beat in alive.values())
        fresh = observer.wait_for_runs(3, started, timeout=60)
        for n in range(leader_kills):
            fresh = observer.wait_for_runs(1, fresh, timeout=30)
            victim = alive.pop(observer.last_sender())
            victim.kill()
            victim.close()
            name = f"beat-{3 + n}"
            alive[name] = BeatProcess(script, server.url, name, logs)
            alive[name].started_at()
            fresh = observer.wait_for_runs(3, datetime.fromtimestamp(time.time(), UTC), 60)
        for beat in alive.values():
            beat.stop()
        observer.poll()
        sent = observer.instants("tick-all")
        expected = int((sent[-1] - sent[0]).total_seconds()) + 1
        duplicates = sum(1 for n in observer.runs.values() if n > 1)
    finally:
        for beat in alive.values():
            beat.close()
        observer.close()
    return {
        "leader kills": leader_kills,
        "ticks": len(sent),
        "missing ticks": expected - len(sent),
        "duplicate ticks": duplicates,
    }


def soak(server: Server, tmp: Path, tasks: int = 20_000) -> Figures:
    """``tasks`` tiny tasks through one child: its RSS and PSS after the first 1,000 and at
    the end (from /proc/<pid>/smaps_rollup)."""
    settings: dict[str, Any] = {**server.settings, "worker_log_tasks": False}
    app = create_app(server.url, **settings)
    try:
        publish = [
            app.prepare("chaos.tiny", [i], {}, {"ignore_result": True})[1] for i in range(tasks)
        ]
        for start in range(0, tasks, 1000):
            app.broker.publish(publish[start : start + 1000])
        worker = Worker(server.url, settings, tmp / "sw.log", "-c", "1")
        (child,) = worker.wait_children(1)
        stats = app.broker.stats

        def left() -> int:
            s = stats(["default"])["default"]
            return s.ready + s.leased

        wait(lambda: left() <= tasks - 1000, 300, "1,000 done")
        before = memory_of(child)
        started = time.monotonic()
        wait(lambda: left() == 0, 900, "every task done", interval=0.5)
        elapsed = time.monotonic() - started
        after = memory_of(child)
        same_child = worker.children() == [child]
        worker.close()
    finally:
        app.close()
    return {
        "tasks": tasks,
        "RSS before MiB": before[0],
        "RSS after MiB": after[0],
        "PSS before MiB": before[1],
        "PSS after MiB": after[1],
        "same child": same_child,
        "tasks/s": round((tasks - 1000) / elapsed),
    }


def memory_of(pid: int) -> tuple[float, float]:
    """(RSS, PSS) of ``pid`` in MiB."""
    values: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        parts = line.split()
        if parts and parts[0] in ("Rss:", "Pss:"):
            values[parts[0]] = int(parts[1]) / 1024
    return round(values["Rss:"], 1), round(values["Pss:"], 1)


SCENARIOS: dict[str, Callable[..., Figures]] = {
    "kills": kills,
    "broker restarts": broker_restarts,
    "sigterm": sigterm,
    "poison": poison,
    "beats": beats,
    "soak": soak,
}


def run(broker: BrokerSpec, scenario: str, **sizes: int) -> Figures:
    """Run one scenario on a fresh server / file of ``broker``."""
    with (
        tempfile.TemporaryDirectory(prefix=f"chaos-{broker.name}-") as tmp,
        broker.start(Path(tmp)) as server,
    ):
        try:
            return SCENARIOS[scenario](server, Path(tmp), **sizes)
        finally:
            while _STARTED:
                _STARTED.pop().close()
