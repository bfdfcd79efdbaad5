"""The heartbeat: renew leases, obey terminate requests, sweep the broker (and do the
bookkeeping of what the sweep dead-lettered or a purge deleted: ``departures``), announce the
worker (for ``conveyor status``), delete expired results and log the summaries of
dead-lettered messages that are due."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..exceptions import ConveyorError
from ..registry import ACTIVE_SHOWN, ANNOUNCEMENT_PREFIX, ActiveTask, WorkerInfo
from ..signing import key_ids
from .departures import Departures
from .inflight import InFlight
from .loops import LoopErrors

if TYPE_CHECKING:
    from ..app import Conveyor

logger = logging.getLogger("conveyor.worker")


class Heartbeat:
    """Every ``interval`` seconds: extend the held leases and check for terminate requests;
    less often, sweep, announce and clean up. Errors (broker and store errors, and any
    unexpected one) are logged and the next beat tries again. Call :meth:`run` on a thread;
    it returns once ``stopped`` is set."""

    def __init__(
        self,
        app: Conveyor,
        inflight: InFlight,
        stopped: threading.Event,
        *,
        hostname: str,
        queues: list[str],
        concurrency: int,
        started_at: float,
        interval: float,
        sweep_interval: float,
        cleanup_interval: float,
        terminate: Callable[[str], None],
        renew: Callable[[], None] | None = None,
        on_beat: Callable[[], None] | None = None,
    ) -> None:
        self.app = app
        self._inflight = inflight
        self._stopped = stopped
        self.hostname = hostname
        self.queues = queues
        self.concurrency = concurrency
        self.started_at = started_at
        self.interval = interval
        self.sweep_interval = sweep_interval
        self.cleanup_interval = cleanup_interval
        self._terminate = terminate
        #: Renews what running tasks hold besides leases (concurrency slots).
        self._renew = renew
        #: Called first at each beat (the summaries of dead-lettered messages that are due).
        self._on_beat = on_beat
        self._departures = Departures(app, hostname)
        self._draining: threading.Thread | None = None

    def run(self) -> None:
        last_sweep = 0.0
        last_announce = 0.0
        last_cleanup = time.monotonic()
        errors = LoopErrors("heartbeat")
        while not self._stopped.wait(self.interval):
            try:
                if self._on_beat is not None:
                    self._on_beat()
                held, running = self._inflight.held_now()
                if held:
                    self.app.broker.extend(held)
                if self._renew is not None:
                    self._renew()
                if running:
                    self._check_terminate(running)
                now = time.monotonic()
                if now - last_sweep >= self.sweep_interval:
                    last_sweep = now
                    self.app.broker.sweep()
                    self._drain_departures()
                if now - last_announce >= max(self.interval, 2.0):
                    last_announce = now
                    self.announce()
                if now - last_cleanup >= self.cleanup_interval:
                    last_cleanup = now
                    self.app.results.cleanup()
            except ConveyorError as exc:
                logger.error("heartbeat failed: %s", exc)
            except Exception as exc:
                errors.failed(exc)

    def _drain_departures(self) -> None:
        """Do the bookkeeping of the sweep's departures on a thread of its own: it may wait
        out a result store's outage (follow-ups retry for 30 s) while leases need renewing."""
        if self._draining is not None and self._draining.is_alive():
            return  # the previous pass is still at it
        self._draining = threading.Thread(
            target=self._drain_once, name="conveyor-departures", daemon=True
        )
        self._draining.start()

    def _drain_once(self) -> None:
        try:
            self._departures.drain()
        except ConveyorError as exc:
            logger.error("bookkeeping of departed messages failed: %s", exc)
        except Exception:
            logger.exception("bookkeeping of departed messages failed")

    def announce(self) -> None:
        info: WorkerInfo = {
            "hostname": self.hostname,
            "pid": os.getpid(),
            "queues": self.queues,
            "concurrency": self.concurrency,
            "processed": self._inflight.processed,
            "failed": self._inflight.failed,
            "load": os.getloadavg()[0],
            "active": self._active(),
            "running": len(self._inflight.running),
            "started_at": self.started_at,
            "broker_time": self.app.broker.time(),
            "seen_at": time.time(),
            "tasks": sorted(self.app.tasks),
            "timezone": str(self.app.conf.timezone),
            "signing_keys": key_ids(self.app.conf.message_signing_keys),
        }
        ttl = max(10.0, self.interval * 4)
        key = ANNOUNCEMENT_PREFIX + self.hostname
        self.app.kv.set_value(key, json.dumps(info).encode(), ttl)

    def _active(self) -> list[ActiveTask]:
        shown: list[ActiveTask] = []
        for control in self._inflight.controls()[:ACTIVE_SHOWN]:
            if control.active:
                job = control.job
                name = job.envelope.task
                shown.append({"id": job.envelope.id, "name": name, "started_at": job.started_at})
        return shown

    def retire(self) -> None:
        """Remove the announcement (the worker stopped)."""
        self.app.kv.delete_value(f"worker:{self.hostname}")

    def _check_terminate(self, running: list[str]) -> None:
        wanted = self.app.broker.revoked([f"terminate:{task_id}" for task_id in running])
        for key in wanted:
            self._terminate(key.removeprefix("terminate:"))


__all__ = ["Heartbeat", "WorkerInfo"]
