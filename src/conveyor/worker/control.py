"""Obeying remote control (:mod:`conveyor.control`) in a worker.

:class:`ControlListener` runs on a thread of each worker process (and of an in-process
worker): it follows the broker's ``control`` stream from the moment it starts (a look every
``READ_WAIT`` seconds), handles the
requests addressed to its process and replies to each. It also keeps the worker off paused
queues: the pause flags live in the broker's ``kv`` (durable), are read at start and every
``PAUSE_REFRESH`` seconds, and a ``pause_queue``/``resume_queue`` request applies at once.

:class:`NodeControl` is the supervisor's part: it looks at the stream on each turn of the
supervisor's loop (no thread: the supervisor forks) and handles the commands about the whole
node - ``shutdown``, ``pool_grow``, ``pool_shrink``, ``autoscale``. A single-process worker
handles those itself.

A request that cannot be handled (a malformed entry, bad arguments sent around the client's
checks, an unknown task) gets an error reply or is skipped with a warning; it never stops
the listener or affects the worker.
"""

from __future__ import annotations

import logging
import os
import resource
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from ..brokers.base import redact_url
from ..control.client import PAUSED
from ..control.protocol import (
    COMMANDS,
    REPLIES,
    REPLY_MAX_AGE,
    STREAM,
    Arguments,
    ControlError,
    Request,
    check,
    encode_reply,
)
from ..exceptions import ConveyorError
from .loops import LoopErrors

if TYPE_CHECKING:
    from ..app import Conveyor
    from ..streams import Entry
    from ..task import Task
    from .inflight import Running
    from .job import Job
    from .worker import Worker

logger = logging.getLogger("conveyor.control")

#: Seconds between reads of the pause flags (a pause request applies at once).
PAUSE_REFRESH = 1.0
#: Seconds between a listener's looks at the stream (a non-blocking read each: a stop is
#: obeyed at once, and a look costs one small indexed read).
READ_WAIT = 0.25
#: Revoked ids a worker remembers for ``inspect revoked``.
REVOKED_KEPT = 10_000
_SECRET_WORDS = ("password", "secret", "token", "credential", "dsn")


def send_reply(app: Conveyor, request: Request, hostname: str, value: object) -> None:
    """Write ``hostname``'s reply to ``request`` (if the sender asked for one)."""
    if request.reply:
        app.broker.streams.append(
            REPLIES + request.id,
            [encode_reply(hostname, value)],
            max_length=10_000,
            max_age=REPLY_MAX_AGE,
        )


def decode_entries(entries: list[Entry]) -> list[Request]:
    """The well-formed requests of ``entries`` (others skipped with a warning)."""
    out: list[Request] = []
    for entry in entries:
        try:
            out.append(Request.decode(entry.body))
        except (ValueError, UnicodeDecodeError) as exc:
            logger.warning("skipping a malformed control request at %s: %s", entry.position, exc)
    return out


def checked(request: Request) -> Arguments:
    """The request's arguments, checked again by the worker (a raw broadcast may skip the
    client's checks); raises ControlError."""
    return check(request.command, request.arguments)[1]


class ControlListener:
    """Follows the control stream for one worker process (see the module docstring).

    ``node``: this process is the whole worker (``--pool solo``, an in-process worker), so it
    also handles node commands; ``stop`` asks the worker for a warm stop."""

    def __init__(
        self, worker: Worker, stopped: threading.Event, *, node: bool, stop: Callable[[], None]
    ) -> None:
        self.worker = worker
        self.app = worker.app
        self._stopped = stopped
        self.node = node
        self._stop = stop
        self.revoked: deque[str] = deque(maxlen=REVOKED_KEPT)
        self.paused: set[str] = set()
        self._position: str | None = None
        #: The broker keeps no streams: only the pause flags are followed.
        self.unsupported = False
        self._handlers: dict[str, Callable[[Arguments], object]] = {
            "ping": lambda a: {"ok": "pong"},
            "active": lambda a: [self._describe(c.job, True) for c in self._controls(True)],
            "reserved": lambda a: [self._describe(c.job, False) for c in self._controls(False)],
            "scheduled": lambda a: [],  # delayed messages wait in the broker, not in workers
            "revoked": lambda a: sorted(set(self.revoked)),
            "registered": lambda a: sorted(self.app.tasks),
            "stats": lambda a: self._stats(),
            "active_queues": lambda a: self._queues(),
            "conf": self._conf,
            "query_task": self._query,
            "revoke": self._revoke,
            "terminate": self._revoke,
            "rate_limit": self._rate_limit,
            "time_limit": self._time_limit,
            "add_consumer": self._add_consumer,
            "cancel_consumer": self._cancel_consumer,
            "pause_queue": lambda a: self._set_paused(str(a["queue"]), True),
            "resume_queue": lambda a: self._set_paused(str(a["queue"]), False),
            "shutdown": self._shutdown,
            "pool_grow": self._no_pool,
            "pool_shrink": self._no_pool,
            "autoscale": self._no_pool,
        }

    def start_position(self) -> None:
        """Take the stream's end as the start (call before the worker consumes) and read the
        pause flags, so a paused queue is never leased from, not even once."""
        try:
            self._position = self.app.broker.streams.last(STREAM)
        except NotImplementedError as exc:
            self.unsupported = True
            logger.warning("remote control is off for this worker: %s", exc)
        except ConveyorError as exc:
            logger.error("remote control: %s", exc)
        self.refresh_paused()

    def run(self) -> None:
        errors = LoopErrors("control")
        next_refresh = time.monotonic() + PAUSE_REFRESH
        while not self._stopped.is_set():
            try:
                if self.unsupported:
                    if not self._stopped.wait(PAUSE_REFRESH):
                        self.refresh_paused()
                    continue
                streams = self.app.broker.streams  # not before: a broker may keep none
                if self._position is None:
                    self._stopped.wait(READ_WAIT)
                    self._position = streams.last(STREAM)
                    continue
                entries = streams.read(STREAM, self._position, limit=100)
                if entries:
                    self._position = entries[-1].position
                elif self._stopped.wait(READ_WAIT):
                    return
                for request in decode_entries(entries):
                    if self._stopped.is_set():
                        return
                    self.handle(request)
                if time.monotonic() >= next_refresh:
                    next_refresh = time.monotonic() + PAUSE_REFRESH
                    self.refresh_paused()
            except (ConveyorError, NotImplementedError) as exc:
                logger.error("remote control: %s", exc)
                self._stopped.wait(READ_WAIT)
            except Exception as exc:
                errors.failed(exc)
                self._stopped.wait(READ_WAIT)

    def handle(self, request: Request) -> None:
        """Handle ``request`` if it is for this process, and reply."""
        hostname = self.worker.hostname
        spec = COMMANDS.get(request.command)
        if not request.addresses(hostname):
            return
        if spec is not None and spec.node and not self.node:
            return  # the supervisor handles it
        try:
            value = self._handlers[request.command](checked(request))
        except (ControlError, KeyError) as exc:
            value = {"error": str(exc) if isinstance(exc, ControlError) else f"unknown {exc}"}
        except Exception as exc:
            logger.exception("control command %s failed", request.command)
            value = {"error": f"{type(exc).__name__}: {exc}"}
        send_reply(self.app, request, hostname, value)

    # -- pausing --------------------------------------------------------------------------
    def refresh_paused(self) -> None:
        kv = self.app.kv
        paused = {q for q in self.worker.queues if kv.get_value(PAUSED + q) is not None}
        if paused != self.paused:
            self.paused = paused
            self.worker.set_paused(paused)

    def _set_paused(self, queue: str, paused: bool) -> dict[str, str]:
        now = set(self.paused)
        if paused:
            now.add(queue)
        else:
            now.discard(queue)
        self.paused = {q for q in now if q in self.worker.queues}
        self.worker.set_paused(self.paused)
        return {"ok": f"queue {queue} {'paused' if paused else 'resumed'}"}

    # -- handlers -------------------------------------------------------------------------
    def _controls(self, active: bool) -> list[Running]:
        return [c for c in self.worker.inflight.controls() if c.active == active]

    def _describe(self, job: Job, active: bool) -> dict[str, object]:
        envelope = job.envelope
        return {
            "id": envelope.id,
            "name": envelope.task,
            "queue": envelope.queue,
            "retries": envelope.retries,
            "priority": envelope.priority,
            "time_start": job.started_at or None,
            "acknowledged": not envelope.acks_late,
            "delivery_info": {"queue": envelope.queue, "priority": envelope.priority},
            "hostname": self.worker.hostname,
            "worker_pid": os.getpid(),
            "state": "active" if active else "reserved",
        }

    def _stats(self) -> dict[str, object]:
        worker = self.worker
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {
            "hostname": worker.hostname,
            "pid": os.getpid(),
            "uptime": round(time.time() - worker.started_at, 3),
            "total": worker.processed,
            "running": len(worker.inflight.running),
            "pool": {"max-concurrency": worker.concurrency, "threads": worker.concurrency},
            "queues": list(worker.queues),
            "paused_queues": sorted(self.paused),
            "prefetch_multiplier": worker.prefetch_multiplier,  # None: adaptive
            "prefetch": self._prefetch(),
            "broker": {"url": redact_url(self.app.broker_url)},
            "rusage": {"maxrss": usage.ru_maxrss, "utime": usage.ru_utime, "stime": usage.ru_stime},
        }

    def _prefetch(self) -> str:
        """How this worker leases beyond its free slots, in words (``inspect stats``)."""
        worker, conf = self.worker, self.app.conf
        if worker.prefetch_multiplier is not None:
            return f"fixed: {worker.prefetch_multiplier} per free slot"
        return (
            f"adaptive: up to {conf.worker_prefetch_max} per free slot while tasks take under "
            f"{conf.worker_prefetch_short * 1000:g} ms"
        )

    def _queues(self) -> list[dict[str, object]]:
        return [{"name": q, "paused": q in self.paused} for q in self.worker.queues]

    def _conf(self, arguments: Arguments) -> dict[str, object]:
        conf = self.app.conf
        values = conf.as_dict() if arguments.get("with_defaults") else conf.explicit()
        return {key: _redacted(key, value) for key, value in sorted(values.items())}

    def _query(self, arguments: Arguments) -> dict[str, object]:
        ids = arguments["ids"]
        assert isinstance(ids, list)
        out: dict[str, object] = {}
        for control in self.worker.inflight.controls():
            if control.job.envelope.id in ids:
                state = "active" if control.active else "reserved"
                out[control.job.envelope.id] = [state, self._describe(control.job, control.active)]
        return out

    def _revoke(self, arguments: Arguments) -> dict[str, str]:
        ids = arguments["task_id"]
        assert isinstance(ids, list)
        self.revoked.extend(str(i) for i in ids)
        if arguments.get("terminate"):
            for task_id in ids:
                self.worker.terminate(str(task_id))
        return {"ok": f"tasks {', '.join(map(str, ids))} flagged as revoked"}

    def _task(self, name: object) -> Task[..., object]:
        task = self.app.tasks.get(str(name))
        if task is None:
            raise ControlError(f"unknown task {name!r}")
        return task

    def _rate_limit(self, arguments: Arguments) -> dict[str, str]:
        task = self._task(arguments["task_name"])
        rate = arguments["rate_limit"]
        task.rate_limit = None if rate is None else str(rate)
        if rate is None:
            return {"ok": f"rate limit of {task.name} disabled"}
        return {"ok": f"new rate limit of {task.name} set to {rate}"}

    def _time_limit(self, arguments: Arguments) -> dict[str, str]:
        task = self._task(arguments["task_name"])
        soft, hard = arguments["soft"], arguments["hard"]
        assert soft is None or isinstance(soft, float)
        assert hard is None or isinstance(hard, float)
        task.soft_time_limit, task.time_limit = soft, hard
        self.worker.time_limits[task.name] = (soft, hard)
        return {"ok": f"time limits of {task.name} set to soft={soft} hard={hard}"}

    def _add_consumer(self, arguments: Arguments) -> dict[str, str]:
        queue = str(arguments["queue"])
        if queue in self.worker.queues:
            return {"ok": f"already consuming from {queue}"}
        self.worker.queues.append(queue)
        self.refresh_paused()
        self.worker.set_paused(self.paused)
        return {"ok": f"add consumer {queue}"}

    def _cancel_consumer(self, arguments: Arguments) -> dict[str, str]:
        queue = str(arguments["queue"])
        if queue not in self.worker.queues:
            raise ControlError(f"not consuming from {queue}")
        if len(self.worker.queues) == 1:
            raise ControlError(f"{queue} is the last queue of this worker: use shutdown")
        self.worker.queues.remove(queue)
        self.paused.discard(queue)
        self.worker.set_paused(self.paused)
        return {"ok": f"no longer consuming from {queue}"}

    def _shutdown(self, arguments: Arguments) -> dict[str, str]:
        self._stop()
        return {"ok": "shutting down"}

    def _no_pool(self, arguments: Arguments) -> dict[str, str]:
        raise ControlError(
            "this worker runs in one process (--pool solo or in-process): it has no pool of "
            "processes to resize"
        )


def _redacted(key: str, value: object) -> object:
    if isinstance(value, str):
        if any(word in key.lower() for word in _SECRET_WORDS):
            return "***"
        return redact_url(value) if "://" in value else value
    if isinstance(value, dict):
        return {str(k): _redacted(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redacted(key, v) for v in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    return repr(value)


class Pool(Protocol):
    """What :class:`NodeControl` needs of a supervisor."""

    app: Conveyor
    hostname: str
    queues: list[str]

    def grow(self, n: int) -> int: ...
    def shrink(self, n: int) -> int: ...
    def set_autoscale(self, high: int, low: int) -> None: ...
    def request_stop(self, *, cold: bool = False) -> None: ...


#: Seconds between the supervisor's looks at the control stream.
NODE_POLL = 0.5


class NodeControl:
    """The supervisor's part of remote control: node commands, on its own loop's turns."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self._position: str | None = None
        self._next = 0.0
        self._unsupported = False

    def start(self) -> None:
        try:
            self._position = self.pool.app.broker.streams.last(STREAM)
        except NotImplementedError as exc:
            self._unsupported = True
            logger.warning("remote control of the pool is off: %s", exc)
        except ConveyorError as exc:
            logger.error("remote control: %s", exc)

    def poll(self, now: float) -> None:
        if now < self._next or self._unsupported:
            return
        self._next = now + NODE_POLL
        try:
            if self._position is None:
                self._position = self.pool.app.broker.streams.last(STREAM)
            entries = self.pool.app.broker.streams.read(STREAM, self._position, limit=100)
            if entries:
                self._position = entries[-1].position
            for request in decode_entries(entries):
                self.handle(request)
        except ConveyorError as exc:
            logger.error("remote control: %s", exc)
        except Exception:
            logger.exception("remote control failed (continuing)")

    def handle(self, request: Request) -> None:
        pool = self.pool
        if not request.addresses(pool.hostname):
            return
        spec = COMMANDS.get(request.command)
        if spec is None:
            return
        if request.command in ("add_consumer", "cancel_consumer"):
            self._follow_consumers(request)  # for children started later; they reply
            return
        if not spec.node:
            return
        value: object
        try:
            arguments = checked(request)
            if request.command == "pool_grow":
                value = {"ok": f"pool will grow to {pool.grow(int(str(arguments['n'])))}"}
            elif request.command == "pool_shrink":
                value = {"ok": f"pool will shrink to {pool.shrink(int(str(arguments['n'])))}"}
            elif request.command == "autoscale":
                high, low = int(str(arguments["max"])), int(str(arguments["min"]))
                pool.set_autoscale(high, low)
                value = {"ok": f"autoscale now max={high} min={low}"}
            else:  # shutdown
                pool.request_stop()
                value = {"ok": "shutting down"}
        except ControlError as exc:
            value = {"error": str(exc)}
        try:
            send_reply(pool.app, request, pool.hostname, value)
        except ConveyorError as exc:
            logger.error("could not reply to %s: %s", request.command, exc)

    def _follow_consumers(self, request: Request) -> None:
        try:
            queue = str(checked(request)["queue"])
        except ControlError:
            return
        queues = self.pool.queues
        if request.command == "add_consumer" and queue not in queues:
            queues.append(queue)
        elif request.command == "cancel_consumer" and queue in queues and len(queues) > 1:
            queues.remove(queue)
