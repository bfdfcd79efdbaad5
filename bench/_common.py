"""Shared helpers of the benchmarks: processes, memory, timing, the steps of a side-by-side
comparison (sides, enqueue rounds, drains), command line, tables.

Every process a benchmark starts is tracked here by pid and stopped by pid (SIGTERM, then
SIGKILL for whatever of its process tree is left), also when the benchmark fails.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from argparse import ArgumentParser, Namespace
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
BIN = Path(PYTHON).parent
CONVEYOR_WORKER = [PYTHON, "-m", "conveyor", "worker", "-A", "bench.conveyor_app", "-c", "2"]


# -- processes -------------------------------------------------------------------------------
def _children_map() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                # The command name may hold spaces and parentheses: split after the last ')'.
                fields = stat.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        out.setdefault(int(fields[1]), []).append(int(entry))
    return out


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (alive now)."""
    children = _children_map()
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        if os.path.exists(f"/proc/{current}"):
            tree.append(current)
            todo.extend(children.get(current, []))
    return tree


def _status_kib(pid: int, key: str) -> int:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def _pss_kib(pid: int) -> int:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/smaps_rollup") as rollup:
        for line in rollup:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


@dataclass
class Memory:
    processes: int
    rss_mib: float  # sum of RSS: pages shared after fork are counted in every process
    pss_mib: float  # sum of PSS: shared pages split between the processes sharing them


def tree_memory(pid: int) -> Memory:
    """Memory of a process tree from /proc (psutil is not needed)."""
    pids = process_tree(pid)
    rss = sum(_status_kib(p, "VmRSS") for p in pids)
    pss = sum(_pss_kib(p) for p in pids)
    return Memory(len(pids), rss / 1024, pss / 1024)


def _cpu_seconds(pid: int) -> float:
    with contextlib.suppress(OSError, IndexError), open(f"/proc/{pid}/stat", "rb") as stat:
        fields = stat.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICKS
    return 0.0


_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU time of ``pids`` (only while they live)."""
    return sum(_cpu_seconds(pid) for pid in pids)


class Processes:
    """Processes started by a benchmark, stopped by pid on exit (also on errors)."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, args: Sequence[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = open(self.logdir / f"{name}.log", "ab")  # noqa: SIM115 - kept open for the child
        proc = subprocess.Popen(
            list(args),
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        self.started.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
        """SIGTERM (a warm shutdown for every worker here), then SIGKILL the leftovers."""
        tree = process_tree(proc.pid)
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout)
        for pid in tree:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
        if proc in self.started:
            self.started.remove(proc)

    def stop_all(self) -> None:
        for proc in list(self.started):
            self.stop(proc, timeout=10)


# -- measuring -------------------------------------------------------------------------------
def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@dataclass
class Drain:
    """How a queue of ``count`` messages emptied, from periodic depth samples."""

    count: int
    samples: list[tuple[float, int]] = field(default_factory=list)
    started: float = 0.0  # when the workers were launched
    finished: float = 0.0  # queue empty and nothing in flight
    #: (remaining, worker CPU s, server CPU s, CPU s of the worker's root process) when the
    #: queue was 90% and 10% full
    cpu: list[tuple[int, float, float, float]] = field(default_factory=list)

    def cpu_per_task(self) -> tuple[float | None, float | None]:
        """CPU seconds per task of the workers and of the server, in the steady window."""
        if len(self.cpu) < 2 or self.cpu[0][0] <= self.cpu[1][0]:
            return None, None
        (n0, w0, s0, _), (n1, w1, s1, _) = self.cpu
        tasks = n0 - n1
        return (w1 - w0) / tasks, (s1 - s0) / tasks

    def root_cpu_per_task(self) -> float | None:
        """CPU seconds per task of the worker's root process alone (the supervisor)."""
        if len(self.cpu) < 2 or self.cpu[0][0] <= self.cpu[1][0]:
            return None
        return (self.cpu[1][3] - self.cpu[0][3]) / (self.cpu[0][0] - self.cpu[1][0])

    @property
    def steady_rate(self) -> float:
        """Tasks/s while the queue went from 90% to 10% full: startup and tail excluded."""
        hi, lo = 0.9 * self.count, 0.1 * self.count
        first = next(((t, n) for t, n in self.samples if n <= hi), None)
        last = next(((t, n) for t, n in self.samples if n <= lo), None)
        if first is None or last is None or last[0] <= first[0]:
            return self.overall_rate
        return (first[1] - last[1]) / (last[0] - first[0])

    @property
    def overall_rate(self) -> float:
        """Tasks/s from launching the workers until everything finished (startup included)."""
        return self.count / max(self.finished - self.started, 1e-9)


def watch_drain(
    count: int,
    started: float,
    depth: Callable[[], tuple[int, int]],
    timeout: float,
    *,
    worker: int | None = None,
    server: int | None = None,
    interval: float = 0.02,
) -> Drain:
    """Sample ``depth()`` -> (waiting, in flight) until both are 0 (or ``timeout``); note
    the CPU time of the ``worker`` process tree and the ``server`` process as the queue
    passes 90% and 10%."""
    drain = Drain(count, started=started)
    deadline = started + timeout
    marks = [0.9 * count, 0.1 * count]
    while True:
        waiting, in_flight = depth()
        now = time.perf_counter()
        drain.samples.append((now, waiting))
        if marks and waiting <= marks[0] and worker is not None:
            marks.pop(0)
            tree = process_tree(worker)
            server_cpu = cpu_seconds([server]) if server else 0.0
            drain.cpu.append((waiting, cpu_seconds(tree), server_cpu, cpu_seconds([worker])))
        if waiting == 0 and in_flight == 0:
            drain.finished = now
            return drain
        if now > deadline:
            raise TimeoutError(f"{waiting} waiting and {in_flight} in flight after {timeout} s")
        time.sleep(interval)


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout} s")
        time.sleep(0.05)


def percentiles(samples: Sequence[float]) -> dict[str, float]:
    ordered = sorted(samples)
    cuts = statistics.quantiles(ordered, n=100, method="inclusive")
    return {"p50": cuts[49], "p99": cuts[98], "mean": statistics.fmean(ordered)}


# -- side-by-side runs ----------------------------------------------------------------------
#: An enqueue API timed in the enqueue rounds: (tasks, with_result) -> anything.
Sender = Callable[[int, bool], object]


class Side:
    """What differs between Conveyor and the other system; the benchmark steps are shared."""

    name = ""

    def __init__(self, procs: Processes) -> None:
        self.procs = procs

    def reset(self) -> None:
        """Empty the queues (and results) while no worker runs."""
        raise NotImplementedError

    def delay(self, with_result: bool) -> Any:
        """Enqueue one no-op task the usual one-at-a-time way."""
        raise NotImplementedError

    def bulk(self, count: int, with_result: bool) -> None:
        """Enqueue ``count`` no-op tasks the fastest way this side has."""
        raise NotImplementedError

    def bulk_apis(self) -> dict[str, Sender]:
        """The bulk enqueue APIs timed in the enqueue rounds, by result key prefix."""
        return {"bulk": self.bulk}

    def depth(self) -> tuple[int, int]:
        """(messages waiting, messages leased/unacked)."""
        raise NotImplementedError

    def start_worker(self, *extra: str, **env: str) -> subprocess.Popen[bytes]:
        """Start this side's worker with extra arguments and environment."""
        raise NotImplementedError


class ConveyorSide(Side):
    """Conveyor's worker and no-op tasks (``bench.conveyor_app``) on the broker ``url``."""

    name = "Conveyor"

    def __init__(self, url: str, procs: Processes) -> None:
        super().__init__(procs)
        self.url = url
        os.environ["CONVEYOR_BROKER_URL"] = url
        from bench import conveyor_app

        self.mod = conveyor_app
        self.queue = conveyor_app.app.conf.task_default_queue

    def delay(self, with_result: bool) -> Any:
        return (self.mod.noop_result if with_result else self.mod.noop).delay()

    def bulk(self, count: int, with_result: bool) -> None:
        task = self.mod.noop_result if with_result else self.mod.noop
        self.mod.app.send_many([task.s() for _ in range(count)])

    def depth(self) -> tuple[int, int]:
        stats = self.mod.app.broker.stats([self.queue])[self.queue]
        return stats.ready, stats.leased

    def start_worker(self, *extra: str, **env: str) -> subprocess.Popen[bytes]:
        env = {"CONVEYOR_BROKER_URL": self.url, **env}
        return self.procs.start("conveyor-worker", [*CONVEYOR_WORKER, *extra], env)


def on_off(with_result: bool) -> str:
    """The suffix of result keys: ``"on"`` or ``"off"``."""
    return "on" if with_result else "off"


def keep_best(numbers: dict[str, Any], key: str, value: float) -> None:
    """Keep the highest ``value`` seen for ``key``."""
    numbers[key] = max(numbers.get(key, 0.0), value)


def warm_up(sides: Sequence[Side]) -> None:
    """Enqueue 50 tasks of each kind per side (connections, scripts, schema, imports), then
    empty the queues."""
    for side in sides:
        side.reset()
        for _ in range(50):
            side.delay(False)
            side.delay(True)
        side.reset()


def time_enqueue(
    side: Side, numbers: dict[str, Any], key: str, count: int, send: Callable[[], object]
) -> None:
    """Time ``send()`` (``count`` tasks) as step ``key``, keep the best rate in ``numbers``,
    empty the queue."""
    with step(key):
        seconds = timed(send)
    keep_best(numbers, key, count / seconds)
    side.reset()


def delay_many(side: Side, count: int, with_result: bool) -> list[Any]:
    """``count`` ``delay()`` calls, one at a time."""
    return [side.delay(with_result) for _ in range(count)]


def enqueue_round(side: Side, numbers: dict[str, Any], delays: int, bulk: int) -> None:
    """Results off, then on: ``delays`` ``delay()`` calls, then ``bulk`` tasks with each bulk
    API of ``side``."""
    for with_result in (False, True):
        suffix = on_off(with_result)
        calls = partial(delay_many, side, delays, with_result)
        time_enqueue(side, numbers, f"delay_results_{suffix}", delays, calls)
        for key, api in side.bulk_apis().items():
            time_enqueue(
                side, numbers, f"{key}_results_{suffix}", bulk, partial(api, bulk, with_result)
            )


def enqueue_rounds(
    sides: Sequence[Side], out: dict[str, dict[str, Any]], rounds: int, delays: int, bulk: int
) -> None:
    """``rounds`` enqueue rounds, each side in turn, so both see the same background load."""
    for round_ in range(rounds):
        for side in sides:
            print(f"{side.name}, enqueue round {round_ + 1}:", file=sys.stderr)
            enqueue_round(side, out[side.name], delays, bulk)


def drain(
    side: Side,
    count: int,
    timeout: float,
    with_result: bool,
    *extra: str,
    server: int | None = None,
    **env: str,
) -> tuple[dict[str, Any], subprocess.Popen[bytes]]:
    """Queue ``count`` tasks with the bulk API (timed), start the worker, watch the queue
    empty. Returns the numbers (``server_cpu`` too if a ``server`` pid is given) and the
    worker, still running."""
    seconds = timed(lambda: side.bulk(count, with_result))
    started = time.perf_counter()
    worker = side.start_worker(*extra, **env)
    watched = watch_drain(
        count, started, side.depth, timeout=timeout, worker=worker.pid, server=server
    )
    worker_cpu, server_cpu = watched.cpu_per_task()
    numbers = {
        "bulk": count / seconds,
        "rate": watched.steady_rate,
        "rate_with_startup": watched.overall_rate,
        "worker_cpu": worker_cpu,
    }
    if server is not None:
        numbers["server_cpu"] = server_cpu
    return numbers, worker


def record_drain(numbers: dict[str, Any], with_result: bool, drained: dict[str, Any]) -> None:
    """Keep the numbers of a main drain; its timed bulk enqueue counts for ``bulk_results_*``."""
    suffix = on_off(with_result)
    keep_best(numbers, f"bulk_results_{suffix}", drained.pop("bulk"))
    numbers[f"drain_results_{suffix}"] = drained


# -- command line ----------------------------------------------------------------------------
def add_count_options(parser: ArgumentParser, delay_help: str) -> None:
    """``--drain``, ``--delay``, ``--rounds``: how much each step does."""
    parser.add_argument("--drain", type=int, default=20_000, help="tasks per drain (20000)")
    parser.add_argument("--delay", type=int, default=2_000, help=delay_help)
    parser.add_argument("--rounds", type=int, default=2, help="enqueue rounds; the best counts (2)")


def add_run_options(parser: ArgumentParser, other: str) -> None:
    """``--timeout``, ``--only``, ``--json``, ``--keep``: how the run goes and what it keeps."""
    parser.add_argument("--timeout", type=float, default=120.0, help="limit per drain (s)")
    parser.add_argument("--only", choices=["conveyor", other], help="run one side only")
    parser.add_argument("--json", type=Path, help="also write the raw numbers here")
    parser.add_argument("--keep", action="store_true", help="keep worker logs (and files)")


def only[S: Side](sides: Sequence[S], name: str | None) -> list[S]:
    """The sides ``--only`` names (all without it)."""
    return [side for side in sides if not name or side.name.lower() == name]


@contextlib.contextmanager
def workdir(prefix: str, keep: bool) -> Iterator[tuple[Path, Processes]]:
    """A temporary directory for files and logs, and the processes started; on exit every
    process is stopped by pid and the directory deleted unless ``keep``."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    procs = Processes(tmp)
    try:
        yield tmp, procs
    finally:
        procs.stop_all()
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)


# -- reporting -------------------------------------------------------------------------------
def version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def git_revision() -> str:
    """The Conveyor code measured: ``bench/run`` names its snapshot of HEAD; otherwise the
    commit plus a hash of uncommitted changes in src/."""
    if os.environ.get("BENCH_CONVEYOR_REVISION"):
        return os.environ["BENCH_CONVEYOR_REVISION"]
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        diff = subprocess.run(
            ["git", "diff", "HEAD", "--", "src"], cwd=ROOT, capture_output=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    if not diff:
        return rev
    # Others edit src/ while benchmarks run: name the exact code that was measured.
    return f"{rev} + uncommitted src/ changes (diff sha256 {hashlib.sha256(diff).hexdigest()[:12]})"


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "load_before": os.getloadavg()[0],
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "conveyor": f"{version('conveyor')} @ {git_revision()}",
    }


def ratio(ours: float | None, theirs: float | None) -> str:
    if not ours or not theirs:
        return "n/a"
    return f"{ours / theirs:.2f}x"


def fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if unit == "ms":
        return f"{value * 1000:.2f} ms"
    if unit == "MiB":
        return f"{value:.0f} MiB"
    if unit == "us":
        return f"{value:,.0f} µs"
    return f"{value:,.0f}/s"


@dataclass
class Row:
    metric: str
    ours: float | None
    theirs: float | None
    unit: str = ""  # "" = rate per second, "ms", "us", "MiB"
    note: str = ""


def table(rows: Sequence[Row], ours: str, theirs: str) -> str:
    """A markdown table; the ratio is always ours/theirs (>1 = ours is bigger)."""
    lines = [
        f"| metric | {ours} | {theirs} | ratio {ours}/{theirs} | note |",
        "|---|---:|---:|---:|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row.metric} | {fmt(row.ours, row.unit)} | {fmt(row.theirs, row.unit)} "
            f"| {ratio(row.ours, row.theirs)} | {row.note} |"
        )
    return "\n".join(lines)


def save(path: Path | None, payload: dict[str, Any]) -> None:
    if path is not None:
        path.write_text(json.dumps(payload, indent=2, default=str) + "\n")


def pick(data: dict[str, Any], key: str) -> Any:
    """``data["a"]["b"]`` for the key ``"a.b"``."""
    for part in key.split("."):
        data = data[part]
    return data


def micro(seconds: float | None) -> float | None:
    """Seconds in µs (None stays None)."""
    return None if seconds is None else seconds * 1e6


@dataclass
class Compare:
    """Rows of the table from both sides' results; keys are paths like ``"latency.p50"``."""

    ours: dict[str, Any]
    theirs: dict[str, Any]

    def same(self, metric: str, key: str, unit: str = "", note: str = "") -> Row:
        """The number at ``key`` on both sides."""
        return self.pair(metric, key, key, unit, note)

    def pair(self, metric: str, ours: str, theirs: str, unit: str = "", note: str = "") -> Row:
        """Our number at ``ours`` against theirs at ``theirs``."""
        return Row(metric, pick(self.ours, ours), pick(self.theirs, theirs), unit, note)

    def cpu(self, metric: str, key: str, note: str = "") -> Row:
        """CPU seconds per task at ``key`` on both sides, shown in µs."""
        return Row(metric, micro(pick(self.ours, key)), micro(pick(self.theirs, key)), "us", note)

    def worker_cpu(self) -> list[Row]:
        """Worker CPU per task in the main drains, results off and on."""
        return [
            self.cpu(
                "worker CPU per task, results off",
                "drain_results_off.worker_cpu",
                "all worker processes; lower is better",
            ),
            self.cpu("worker CPU per task, results on", "drain_results_on.worker_cpu"),
        ]

    def memory(self, key: str, when: str = "", pss_note: str = "") -> list[Row]:
        """Worker memory (RSS and PSS sums) at ``key``; ``when`` ends the note on RSS."""
        ours, theirs = pick(self.ours, key), pick(self.theirs, key)
        processes = f"{ours['processes']} vs {theirs['processes']} processes{when}"
        return [
            Row("worker memory, RSS sum", ours["rss_mib"], theirs["rss_mib"], "MiB", processes),
            Row("worker memory, PSS sum", ours["pss_mib"], theirs["pss_mib"], "MiB", pss_note),
        ]


def save_results(args: Namespace, info: dict[str, Any], results: dict[str, Any]) -> bool:
    """Note the load after the run and write ``--json``; if a side was left out (``--only``),
    print the raw results and return False: there is no table to print."""
    info["load_after"] = os.getloadavg()[0]
    save(args.json, {"machine": info, "args": vars(args), "results": results})
    if len(results) < 2:
        print(results)
        return False
    return True


def print_header(title: str, info: dict[str, Any], versions: str) -> None:
    """The heading of a comparison and the line describing machine, versions and load."""
    print(f"### {title} ({info['date']})\n")
    print(
        f"{info['cores']} cores ({info['cpu']}), Python {info['python']}, {versions}; "
        f"load average before/after: {info['load_before']:.2f}/{info['load_after']:.2f}\n"
    )


@contextlib.contextmanager
def step(name: str) -> Iterator[None]:
    print(f"  . {name} ...", end="", flush=True, file=sys.stderr)
    start = time.perf_counter()
    try:
        yield
    finally:
        print(f" {time.perf_counter() - start:.1f}s", file=sys.stderr, flush=True)
