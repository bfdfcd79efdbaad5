"""Shared helpers of the benchmarks: processes, memory, timing, tables.

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
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
BIN = Path(PYTHON).parent


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


@contextlib.contextmanager
def step(name: str) -> Iterator[None]:
    print(f"  . {name} ...", end="", flush=True, file=sys.stderr)
    start = time.perf_counter()
    try:
        yield
    finally:
        print(f" {time.perf_counter() - start:.1f}s", file=sys.stderr, flush=True)
