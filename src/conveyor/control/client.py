"""``app.control`` and ``app.control.inspect()``: Celery's remote control, over the broker."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from ..registry import read_announcements
from .protocol import (
    MAX_AGE,
    MAX_LENGTH,
    REPLIES,
    STREAM,
    Arguments,
    ControlError,
    Request,
    check,
    node_of,
)

if TYPE_CHECKING:
    from ..app import Conveyor

logger = logging.getLogger("conveyor.control")

#: kv key prefix of paused queues (durable: every worker, also later ones, reads it).
PAUSED: str = "queue-paused:"

type Destination = str | Sequence[str] | None
type Replies = list[dict[str, object]]


class Control:
    """Remote control of the workers of an app (``app.control``), with Celery's names.

    Methods that change something send the command and return None, or with ``reply=True``
    gather replies for ``timeout`` seconds: a list of ``{worker name: reply}``. ``destination``
    names workers (a node name such as ``host.123`` also addresses its processes); an unknown
    command, bad arguments or a worker that is not alive raise :class:`ControlError` and send
    nothing."""

    def __init__(self, app: Conveyor) -> None:
        self.app = app

    # -- the generic path -----------------------------------------------------------------
    def broadcast(
        self,
        command: str,
        arguments: Mapping[str, object] | None = None,
        destination: Destination = None,
        reply: bool = False,
        timeout: float = 1.0,
        limit: int | None = None,
    ) -> Replies | None:
        """Send ``command`` to the workers (all, or ``destination``); with ``reply``, wait up
        to ``timeout`` seconds for their replies (fewer if ``limit`` replied, or every
        worker expected did)."""
        spec, checked = check(command, arguments)
        targets = self._destination(destination)
        request = Request.new(command, checked, targets, reply)
        streams = self.app.broker.streams
        streams.append(STREAM, [request.encode()], max_length=MAX_LENGTH, max_age=MAX_AGE)
        if not reply:
            return None
        expected = self._expected(targets, node=spec.node)
        return self._gather(request.id, timeout, limit, expected)

    def _destination(self, destination: Destination) -> list[str] | None:
        if destination is None:
            return None
        names = [destination] if isinstance(destination, str) else list(destination)
        if not names or not all(isinstance(n, str) and n for n in names):
            raise ControlError(f"destination must name workers, not {destination!r}")
        alive = self.workers()
        known = set(alive) | {node_of(name) for name in alive}
        unknown = [name for name in names if name not in known]
        if unknown:
            listed = ", ".join(sorted(known)) or "none"
            raise ControlError(
                f"no live worker named {', '.join(unknown)} (alive: {listed}); nothing was sent"
            )
        return names

    def _expected(self, targets: list[str] | None, *, node: bool) -> set[str]:
        """The names whose replies end the wait early."""
        alive = set(self.workers())
        if targets is not None:
            alive = {h for h in alive if h in targets or node_of(h) in targets}
        if node:
            return {node_of(h) for h in alive}
        return alive

    def _gather(
        self, request_id: str, timeout: float, limit: int | None, expected: set[str]
    ) -> Replies:
        streams = self.app.broker.streams
        stream = REPLIES + request_id
        replies: Replies = []
        seen: set[str] = set()
        position: str | None = None
        deadline = time.monotonic() + max(0.0, timeout)
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                for entry in streams.read(stream, position, limit=1000, wait=remaining):
                    position = entry.position
                    try:
                        data = json.loads(entry.body)
                        hostname, value = data["hostname"], data["reply"]
                    except (ValueError, KeyError, TypeError):
                        logger.warning("skipping a malformed control reply")
                        continue
                    replies.append({str(hostname): value})
                    seen.add(str(hostname))
                    seen.add(node_of(str(hostname)))  # a process answers for its node
                if (limit is not None and len(replies) >= limit) or (expected and expected <= seen):
                    break
        finally:
            streams.delete(stream)
        return replies[:limit] if limit is not None else replies

    def workers(self) -> dict[str, dict[str, object]]:
        """The live workers (processes) as they announce themselves: name -> info."""
        return {name: dict(info or {}) for name, info in read_announcements(self.app.kv).items()}

    def inspect(
        self, destination: Destination = None, timeout: float = 1.0, limit: int | None = None
    ) -> Inspect:
        """Celery's ``app.control.inspect(...)``: ask the workers what they do."""
        return Inspect(self, destination, timeout, limit)

    # -- Celery's control commands --------------------------------------------------------
    def ping(self, destination: Destination = None, timeout: float = 1.0) -> Replies:
        return self.broadcast("ping", {}, destination, True, timeout) or []

    def revoke(
        self,
        task_id: str | Sequence[str],
        destination: Destination = None,
        terminate: bool = False,
        signal: str = "SIGTERM",
        reply: bool = False,
        timeout: float = 1.0,
    ) -> Replies | None:
        """Revoke tasks (stored in the broker: survives restarts, reaches workers started
        later); ``terminate=True`` also stops them where they run."""
        arguments: Arguments = {"task_id": task_id, "terminate": terminate, "signal": signal}
        _, checked = check("revoke", arguments)
        targets = self._destination(destination)
        ids = checked["task_id"]
        assert isinstance(ids, list)
        self.app.revoke([str(i) for i in ids], terminate=terminate)
        return self.broadcast("revoke", checked, targets, reply, timeout)

    def terminate(
        self,
        task_id: str | Sequence[str],
        destination: Destination = None,
        signal: str = "SIGTERM",
        reply: bool = False,
        timeout: float = 1.0,
    ) -> Replies | None:
        return self.revoke(task_id, destination, True, signal, reply, timeout)

    def rate_limit(
        self,
        task_name: str,
        rate_limit: str | float | None,
        destination: Destination = None,
        reply: bool = False,
        timeout: float = 1.0,
    ) -> Replies | None:
        self._known_task(task_name)
        arguments = {"task_name": task_name, "rate_limit": rate_limit}
        return self.broadcast("rate_limit", arguments, destination, reply, timeout)

    def time_limit(
        self,
        task_name: str,
        soft: float | None = None,
        hard: float | None = None,
        destination: Destination = None,
        reply: bool = False,
        timeout: float = 1.0,
    ) -> Replies | None:
        self._known_task(task_name)
        arguments = {"task_name": task_name, "soft": soft, "hard": hard}
        return self.broadcast("time_limit", arguments, destination, reply, timeout)

    def pool_grow(
        self, n: int = 1, destination: Destination = None, reply: bool = False, timeout: float = 1.0
    ) -> Replies | None:
        return self.broadcast("pool_grow", {"n": n}, destination, reply, timeout)

    def pool_shrink(
        self, n: int = 1, destination: Destination = None, reply: bool = False, timeout: float = 1.0
    ) -> Replies | None:
        return self.broadcast("pool_shrink", {"n": n}, destination, reply, timeout)

    def autoscale(
        self,
        max: int,
        min: int,
        destination: Destination = None,
        reply: bool = False,
        timeout: float = 1.0,
    ) -> Replies | None:
        return self.broadcast("autoscale", {"max": max, "min": min}, destination, reply, timeout)

    def add_consumer(
        self,
        queue: str,
        destination: Destination = None,
        reply: bool = False,
        timeout: float = 1.0,
    ) -> Replies | None:
        return self.broadcast("add_consumer", {"queue": queue}, destination, reply, timeout)

    def cancel_consumer(
        self,
        queue: str,
        destination: Destination = None,
        reply: bool = False,
        timeout: float = 1.0,
    ) -> Replies | None:
        return self.broadcast("cancel_consumer", {"queue": queue}, destination, reply, timeout)

    def shutdown(
        self, destination: Destination = None, reply: bool = False, timeout: float = 1.0
    ) -> Replies | None:
        """Warm shutdown of the workers (running tasks finish)."""
        return self.broadcast("shutdown", {}, destination, reply, timeout)

    # -- durable queue pause (not in Celery) ------------------------------------------------
    def pause_queue(self, queue: str) -> None:
        """Stop every worker (also ones started later) leasing from ``queue`` until
        :meth:`resume_queue`. Tasks already leased finish; publishing still works."""
        _, checked = check("pause_queue", {"queue": queue})
        self.app.kv.set_value(PAUSED + str(checked["queue"]), b"1")
        self.broadcast("pause_queue", checked)

    def resume_queue(self, queue: str) -> None:
        """Let workers lease from ``queue`` again."""
        _, checked = check("resume_queue", {"queue": queue})
        self.app.kv.delete_value(PAUSED + str(checked["queue"]))
        self.broadcast("resume_queue", checked)

    def paused_queues(self) -> list[str]:
        """The queues paused now."""
        return sorted(key.removeprefix(PAUSED) for key in self.app.kv.values(PAUSED))

    def _known_task(self, task_name: str) -> None:
        self.app.finalize()
        if isinstance(task_name, str) and task_name and task_name not in self.app.tasks:
            raise ControlError(f"unknown task {task_name!r}: not registered in this app")


class Inspect:
    """Celery's ``Inspect``: each method returns ``{worker name: reply}``, or None when no
    worker replied within the timeout."""

    def __init__(
        self, control: Control, destination: Destination, timeout: float, limit: int | None
    ) -> None:
        self.control = control
        self.destination = destination
        self.timeout = timeout
        self.limit = limit

    def _request(self, command: str, **arguments: object) -> dict[str, object] | None:
        replies = self.control.broadcast(
            command, arguments, self.destination, True, self.timeout, self.limit
        )
        merged: dict[str, object] = {}
        for reply in replies or []:
            merged.update(reply)
        return merged or None

    def ping(self) -> dict[str, object] | None:
        return self._request("ping")

    def active(self) -> dict[str, object] | None:
        return self._request("active")

    def reserved(self) -> dict[str, object] | None:
        return self._request("reserved")

    def scheduled(self) -> dict[str, object] | None:
        return self._request("scheduled")

    def revoked(self) -> dict[str, object] | None:
        return self._request("revoked")

    def registered(self) -> dict[str, object] | None:
        return self._request("registered")

    def stats(self) -> dict[str, object] | None:
        return self._request("stats")

    def active_queues(self) -> dict[str, object] | None:
        return self._request("active_queues")

    def conf(self, with_defaults: bool = False) -> dict[str, object] | None:
        return self._request("conf", with_defaults=with_defaults)

    def query_task(self, *ids: str) -> dict[str, object] | None:
        flat = [i for item in ids for i in ([item] if isinstance(item, str) else item)]
        return self._request("query_task", ids=flat)
