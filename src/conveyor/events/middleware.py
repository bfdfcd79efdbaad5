"""The middleware that emits task and worker events (added to every app; on with
``worker_send_task_events``, which ``task_send_sent_event`` follows unless set)."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

from ..middleware import Middleware, WorkerInfo
from ..utils.redaction import redact_arguments
from .model import Fields

if TYPE_CHECKING:
    from ..app import Conveyor
    from ..message import Envelope
    from ..worker.job import Job, Outcome
    from .writer import EventWriter

#: Longest exception text an event carries.
MAX_TEXT = 500


class EventsMiddleware(Middleware):
    """Turns the middleware hooks into events on ``app.events``."""

    def __init__(self, app: Conveyor, writer: EventWriter) -> None:
        self.app = app
        self.writer = writer

    def uses_hook(self, hook: str) -> bool:
        # Asked when hooks are built; the hooks check the setting again when called.
        if hook == "worker_start":
            return True  # a supervisor's writer must never start a thread (it forks)
        return self._sent() if hook == "after_publish" else self._on()

    def _on(self) -> bool:
        return self.app.conf.worker_send_task_events

    def _sent(self) -> bool:
        conf = self.app.conf
        sent = conf.task_send_sent_event
        return conf.worker_send_task_events if sent is None else sent

    # -- producing ------------------------------------------------------------------------
    def after_publish(self, app: Conveyor, envelope: Envelope) -> None:
        if self._sent():
            fields = _task(envelope)
            fields["priority"] = envelope.priority
            fields["args"], fields["kwargs"] = _arguments(envelope)
            if envelope.eta is not None:
                fields["eta"] = envelope.eta
            if envelope.expires is not None:
                fields["expires"] = envelope.expires
            self.writer.emit("task-sent", fields)

    # -- worker lifecycle -----------------------------------------------------------------
    def worker_start(self, worker: WorkerInfo) -> None:
        if not hasattr(worker, "inflight"):  # the supervisor: it forks, so no threads
            self.writer.direct = True
        if not self._on():
            return
        if hasattr(worker, "inflight"):
            self._watch(worker)
        self.writer.emit("worker-online", _worker(worker), worker.hostname)

    def worker_stop(self, worker: WorkerInfo) -> None:
        if not self._on():
            return
        self.writer.heartbeat = None
        self.writer.emit("worker-offline", _worker(worker), worker.hostname)
        self.writer.close()

    def child_start(self, worker: WorkerInfo) -> None:
        if self._on():
            self._watch(worker)

    def child_stop(self, worker: WorkerInfo) -> None:
        self.writer.heartbeat = None
        self.writer.close()

    def _watch(self, worker: WorkerInfo) -> None:
        """Events of this process carry ``worker``'s name; heartbeats describe it."""
        writer = self.writer
        writer.hostname = worker.hostname
        base = _worker(worker)

        def heartbeat() -> Fields:
            inflight = getattr(worker, "inflight", None)
            return {
                **base,
                "load": list(os.getloadavg()) if hasattr(os, "getloadavg") else [],
                "running": len(getattr(inflight, "running", ())),
                "processed": int(getattr(inflight, "processed", 0)),
                "freq": 2.0,
            }

        writer.heartbeat = heartbeat
        writer.start()

    # -- running tasks --------------------------------------------------------------------
    def before_process(self, job: Job) -> None:
        if not self._on():
            return
        fields = _task(job.envelope)
        emit = self.writer.emit
        received = dict(fields, delivery_count=job.request.delivery_count)
        emit("task-received", received)
        emit("task-started", fields)

    def after_process(self, job: Job, outcome: Outcome) -> None:
        if not self._on():
            return
        state = outcome.state
        if state == "SUCCESS":
            fields = _task(job.envelope)
            fields["runtime"] = outcome.runtime
            self.writer.emit("task-succeeded", fields)
        elif state == "FAILURE":
            fields = _task(job.envelope)
            fields["runtime"] = outcome.runtime
            fields["exception"] = _error(outcome.error)
            self.writer.emit("task-failed", fields)

    def on_retry(self, job: Job, outcome: Outcome) -> None:
        if not self._on():
            return
        fields = _task(job.envelope)
        fields["exception"] = _error(outcome.error)
        message = outcome.retry_message
        if message is not None:
            fields["countdown"] = message.countdown
            if message.eta is not None:
                fields["eta"] = message.eta
        self.writer.emit("task-retried", fields)

    def on_dead_letter(self, envelope: Envelope | None, outcome: Outcome) -> None:
        if not self._on():
            return
        fields: Fields = _task(envelope) if envelope is not None else {}
        if not fields and outcome.delivery is not None:
            fields = {"uuid": outcome.delivery.id, "queue": outcome.delivery.queue}
        fields["reason"] = outcome.reason
        fields["detail"] = outcome.detail[:MAX_TEXT]
        kind = "task-expired" if outcome.reason == "expired" else "task-dead-lettered"
        self.writer.emit(kind, fields)

    def on_revoked(self, envelope: Envelope, outcome: Outcome) -> None:
        if not self._on():
            return
        fields = _task(envelope)
        fields["terminated"] = outcome.runtime > 0 or outcome.error is not None
        self.writer.emit("task-revoked", fields)


def _task(envelope: Envelope) -> Fields:
    fields: Fields = {
        "uuid": envelope.id,
        "name": envelope.task,
        "queue": envelope.queue,
        "retries": envelope.retries,
    }
    if envelope.root_id is not None:
        fields["root_id"] = envelope.root_id
    if envelope.parent_id is not None:
        fields["parent_id"] = envelope.parent_id
    if envelope.group_id is not None:
        fields["group_id"] = envelope.group_id
    return fields


def _arguments(envelope: Envelope) -> tuple[str, str]:
    """``args`` and ``kwargs`` as Celery's task-sent carries them: short texts (JSON here),
    with secret-looking values hidden by the rules of the logs (the dashboard searches them)."""
    args, kwargs = redact_arguments(envelope.args, envelope.kwargs)
    return _cut(json.dumps(args, default=str)), _cut(json.dumps(kwargs, default=str))


def _cut(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 3] + "..."


def _worker(worker: WorkerInfo) -> Fields:
    return {"queues": list(worker.queues), "concurrency": worker.concurrency}


def _error(error: BaseException | None) -> str:
    if error is None:
        return ""
    return f"{type(error).__name__}: {error}"[:MAX_TEXT]
