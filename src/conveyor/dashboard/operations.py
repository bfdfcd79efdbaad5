"""The dashboard's operations side, without any web code: workers (and remote control of
them), queues (counts per state and priority, durable pause, purge) and delayed messages (the
Scheduled and Retries pages: run now, cancel). Every action returns what an audit entry needs:
a description of its target and how many things it changed."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlencode

from ..app import Conveyor
from ..brokers.base import STATES, PriorityCounts, QueueStats, Scheduled
from ..control import ControlError
from ..control.protocol import node_of
from ..exceptions import ConveyorError, MalformedMessage
from ..message import decode_arguments, decode_envelope
from ..utils.redaction import redact_arguments
from .fleet import Worker

#: Most delayed messages a page or an "everything matching" action considers at once.
SCHEDULED_LIMIT = 10_000
#: Shown for a delayed message whose broker does not give its body (RabbitMQ).
BODY_AWAY = "the body waits in the broker's delay queues"
#: Seconds an action waits for the workers' replies.
REPLY_TIMEOUT = 3.0
#: Most processes a pool grows or shrinks by in one action.
MAX_POOL_STEP = 64


class ActionError(Exception):
    """An action the dashboard refuses (the adapter answers ``status`` with the sentence)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# -- workers -------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunningTask:
    id: str
    name: str
    runtime: float


@dataclass(frozen=True)
class Node:
    """A worker node (``host.pid``) and its processes (one for ``--pool solo``)."""

    name: str
    processes: list[Worker]

    @property
    def solo(self) -> bool:
        return len(self.processes) == 1 and self.processes[0].name == self.name

    @property
    def queues(self) -> list[str]:
        return sorted({q for w in self.processes for q in (w.info.get("queues") or [])})

    def total(self, key: str) -> int:
        return sum(int(value) for w in self.processes if isinstance(value := w.info.get(key), int))

    @property
    def running(self) -> list[RunningTask]:
        now = time.time()
        found = []
        for worker in self.processes:
            for task in worker.info.get("active") or []:
                if isinstance(task, dict):
                    started = task.get("started_at") or 0.0
                    runtime = max(0.0, now - started) if isinstance(started, int | float) else 0.0
                    found.append(RunningTask(str(task.get("id")), str(task.get("name")), runtime))
        return found


def nodes(workers: Sequence[Worker]) -> list[Node]:
    """The workers' processes grouped by node, sorted by name."""
    grouped: dict[str, list[Worker]] = {}
    for worker in workers:
        grouped.setdefault(node_of(worker.name), []).append(worker)
    return [Node(name, grouped[name]) for name in sorted(grouped)]


# -- queues --------------------------------------------------------------------------------
@dataclass(frozen=True)
class PriorityRow:
    """One priority's messages in a queue, by state (``STATES`` order); ``None``: the broker
    does not split that state by priority."""

    priority: int
    counts: tuple[int | None, ...]


@dataclass(frozen=True)
class QueueRow:
    name: str
    stats: QueueStats
    paused: bool
    #: The queue's priorities with messages, highest first.
    by_priority: list[PriorityRow] = field(default_factory=list)
    #: The states the broker does not split by priority (their totals are in ``stats``).
    unsplit: tuple[str, ...] = ()

    @property
    def waiting(self) -> int:
        return self.stats.ready + self.stats.delayed


# -- delayed messages ----------------------------------------------------------------------
@dataclass(frozen=True)
class ScheduledFilter:
    """Narrows the Scheduled and Retries pages; kept in the page's URL."""

    queue: str = ""
    task: str = ""
    search: str = ""

    def query(self) -> str:
        return urlencode({name: value for name, value in self._fields() if value})

    def describe(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self._fields() if v) or "all"

    def _fields(self) -> tuple[tuple[str, str], ...]:
        return (("queue", self.queue), ("task", self.task), ("search", self.search))


@dataclass(frozen=True)
class ScheduledRow:
    """A delayed message as the page shows it: arguments redacted like logs."""

    id: str
    queue: str
    priority: int
    due: float
    task: str
    call: str
    retries: int
    problem: str = ""

    @property
    def due_in(self) -> str:
        seconds = self.due - time.time()
        if seconds <= 0:
            return "due now"
        for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
            if seconds >= size:
                return f"in {int(seconds // size)}{unit}"
        return f"in {int(seconds)}s"

    def matches(self, where: ScheduledFilter) -> bool:
        return (not where.task or where.task in self.task) and (
            not where.search or where.search in self.id or where.search in self.call
        )


def scheduled_row(message: Scheduled, width: int = 160) -> ScheduledRow:
    """What a page shows of ``message``: its task, its call with secrets redacted (the log
    rules: secret-looking names, URL passwords), its retries; a body that is not a valid
    message shows its reason."""
    if not message.body:  # RabbitMQ: the body waits in its delay queues, out of reach
        return ScheduledRow(
            message.id, message.queue, message.priority, message.due, "", "", 0, BODY_AWAY
        )
    try:
        envelope = decode_envelope(message.body)
        args, kwargs = redact_arguments(*decode_arguments(envelope))
        shown = [json.dumps(a, default=str) for a in args]
        shown += [f"{k}={json.dumps(v, default=str)}" for k, v in kwargs.items()]
        call = f"{envelope.task}({', '.join(shown)})"
        call = call if len(call) <= width else call[: width - 3] + "..."
        return ScheduledRow(
            message.id,
            message.queue,
            message.priority,
            message.due,
            envelope.task,
            call,
            envelope.retries,
        )
    except (ConveyorError, ValueError, TypeError, RecursionError) as exc:
        reason = exc.reason if isinstance(exc, MalformedMessage) else type(exc).__name__
        return ScheduledRow(
            message.id, message.queue, message.priority, message.due, "", "", 0, reason
        )


class Operations:
    """Reads and actions of the operations pages of ``app``."""

    def __init__(self, app: Conveyor) -> None:
        self.app = app

    # -- workers ---------------------------------------------------------------------------
    def node(self, workers: Sequence[Worker], name: str) -> Node:
        for found in nodes(workers):
            if found.name == name:
                return found
        raise ActionError(404, f"no live worker named {name!r} (it may have stopped)")

    def control_worker(
        self, node: Node, command: str, queue: str = "", n: int = 1
    ) -> tuple[str, int]:
        """Send ``command`` to ``node`` and wait for its replies: the audit target (with what
        the workers said) and how many answered without an error."""
        control = self.app.control
        arguments: dict[str, object] = {}
        if command in ("pool_grow", "pool_shrink"):
            if node.solo:
                raise ActionError(
                    409, f"{node.name} runs in one process (--pool solo): it has no pool to resize"
                )
            if not 1 <= n <= MAX_POOL_STEP:
                raise ActionError(400, f"give a number of processes from 1 to {MAX_POOL_STEP}")
            arguments = {"n": n}
        elif command in ("add_consumer", "cancel_consumer"):
            arguments = {"queue": queue}
        elif command != "shutdown":
            raise ActionError(404, f"no worker command {command!r}")
        try:
            replies = control.broadcast(
                command, arguments, node.name, reply=True, timeout=REPLY_TIMEOUT
            )
        except ControlError as exc:
            raise ActionError(404 if "no live worker" in str(exc) else 400, str(exc)) from None
        except NotImplementedError as exc:
            raise ActionError(409, f"remote control needs broker streams: {exc}") from None
        said, ok = [], 0
        for reply in replies or []:
            for hostname, value in reply.items():
                error = value.get("error") if isinstance(value, dict) else None
                text = error or (value.get("ok") if isinstance(value, dict) else value)
                said.append(f"{hostname}: {text}")
                ok += not error
        detail = "; ".join(said) or f"no reply within {REPLY_TIMEOUT:g} s"
        shown = " ".join(f"{k}={v}" for k, v in arguments.items())
        return f"worker {node.name} {command} {shown}".rstrip() + f" ({detail})", ok

    # -- queues ----------------------------------------------------------------------------
    def queue_rows(
        self, split: dict[str, PriorityCounts], stats: Callable[[], dict[str, QueueStats]]
    ) -> list[QueueRow]:
        """Every queue's counts (``stats()``), split by priority (``split``: every known
        queue's). Where the broker splits every state, the totals are the sums of the split:
        one look at the broker's counts, not two."""
        broker = self.app.broker
        if split and all(getattr(c, s) is not None for c in split.values() for s in STATES):
            totals = {
                queue: QueueStats(*(sum(getattr(counts, s).values()) for s in STATES))
                for queue, counts in split.items()
            }
        else:
            totals = stats()
        paused = set(self.app.control.paused_queues())
        names = sorted(set(totals) | paused | {self.app.conf.task_default_queue})
        missing = [name for name in names if name not in split]
        if missing:
            split.update(broker.priority_counts(missing))
        rows = []
        for name in names:
            counts = split.get(name, PriorityCounts(None, None, None, None))
            states = [getattr(counts, state) for state in STATES]
            priorities = sorted({p for c in states if c for p in c}, reverse=True)
            by_priority = [
                PriorityRow(p, tuple(None if c is None else c.get(p, 0) for c in states))
                for p in priorities
            ]
            unsplit = tuple(s for s, c in zip(STATES, states, strict=True) if c is None)
            rows.append(
                QueueRow(name, totals.get(name, QueueStats()), name in paused, by_priority, unsplit)
            )
        return rows

    def pause(self, queues: Sequence[str], paused: bool) -> int:
        """Durably pause (or resume) ``queues``; every worker, also ones started later,
        obeys. Returns how many changed."""
        control = self.app.control
        before = set(control.paused_queues())
        changed = 0
        for queue in dict.fromkeys(queues):
            if (queue in before) == paused:
                continue
            try:
                (control.pause_queue if paused else control.resume_queue)(queue)
            except ControlError as exc:
                raise ActionError(400, str(exc)) from None
            except NotImplementedError:
                pass  # no streams: the durable flag is set, workers read it within a second
            changed += 1
        return changed

    # -- delayed messages -------------------------------------------------------------------
    def scheduled(
        self, where: ScheduledFilter, *, retries: bool, limit: int = 500
    ) -> tuple[list[ScheduledRow], int]:
        """The soonest ``limit`` delayed messages matching ``where`` (those waiting for a
        retry, or all), and how many match among the first :data:`SCHEDULED_LIMIT`."""
        found = self.app.broker.scheduled(SCHEDULED_LIMIT, where.queue or None)
        rows = [
            row
            for row in map(scheduled_row, found)
            if row.matches(where) and (not retries or row.retries > 0)
        ]
        return rows[:limit], len(rows)

    def move_scheduled(self, ids: Sequence[str], *, run: bool) -> int:
        broker = self.app.broker
        return (broker.run_scheduled if run else broker.cancel_scheduled)(list(ids)) if ids else 0

    def move_matching(self, where: ScheduledFilter, *, retries: bool, run: bool) -> int:
        """Run (or cancel) every delayed message matching ``where`` among the first
        :data:`SCHEDULED_LIMIT`."""
        rows, _ = self.scheduled(where, retries=retries, limit=SCHEDULED_LIMIT)
        return self.move_scheduled([row.id for row in rows], run=run)
