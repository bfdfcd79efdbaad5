"""The operations pages (Workers, Queues, Scheduled, Retries, Periodic) and their actions:
what :class:`~conveyor.dashboard.pages.Pages` calls for them. A page builder takes the
request's parameters and returns the template's values; an action takes the form's fields and
selected ids and returns ``(audit target, count changed, path to show next)``."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .audit import AuditEntry, AuditLog
from .fleet import Fleet
from .operations import ActionError, Operations, ScheduledFilter, nodes
from .schedules import Periodic, ScheduleSource

#: Longest filter value or name accepted from a request (as pages.MAX_FILTER / MAX_ID).
MAX_FILTER = 200
MAX_NAME = 255
#: Most delayed messages a Scheduled or Retries page lists.
LISTED = 500

type Builder = Callable[[Mapping[str, str]], dict[str, Any]]
type Action = Callable[[Mapping[str, str], Sequence[str]], tuple[str, int, str]]

#: Worker actions: form action name -> remote-control command.
WORKER_COMMANDS = {
    "pool-grow": "pool_grow",
    "pool-shrink": "pool_shrink",
    "add-consumer": "add_consumer",
    "cancel-consumer": "cancel_consumer",
    "shutdown-worker": "shutdown",
}


#: Which page each action belongs to (its "Recent actions" list).
ACTION_PAGES = {
    **dict.fromkeys(WORKER_COMMANDS, "workers"),
    **dict.fromkeys(("pause-queue", "resume-queue", "purge-queue"), "queues"),
    **dict.fromkeys(("run-scheduled", "cancel-scheduled"), "scheduled"),
    **dict.fromkeys(("run-retries", "cancel-retries"), "retries"),
    **dict.fromkeys(("enable-periodic", "disable-periodic", "run-periodic"), "periodic"),
}


class OpsPages:
    """The operations side of the dashboard of ``fleet.app``."""

    def __init__(
        self, fleet: Fleet, audit: AuditLog, schedules: ScheduleSource | None = None
    ) -> None:
        self.fleet = fleet
        self.audit = audit
        self.ops = Operations(fleet.app)
        self.periodic = Periodic(fleet.app, schedules)

    def builders(self) -> dict[str, Builder]:
        pages: dict[str, Builder] = {
            "workers": self._workers,
            "queues": self._queues,
            "scheduled": lambda params: self._scheduled(params, retries=False),
            "retries": lambda params: self._scheduled(params, retries=True),
            "periodic": self._periodic,
        }
        return {
            name: functools.partial(self._with_recent, name, build) for name, build in pages.items()
        }

    def _with_recent(self, page: str, build: Builder, params: Mapping[str, str]) -> dict[str, Any]:
        """The page's values, and the latest actions taken on it (their outcome)."""
        values = build(params)
        if "page" not in params:  # not for the live stream (/live?page=...): it shows none
            values["recent"] = self.recent(page)
        return values

    def recent(self, page: str, limit: int = 5) -> list[AuditEntry]:
        actions = {name for name, back in ACTION_PAGES.items() if back == page}
        return [e for e in self.audit.entries() if e.action in actions][:limit]

    def actions(self) -> dict[str, Action]:
        found: dict[str, Action] = {
            "pause-queue": lambda f, ids: self._pause(f, ids, True),
            "resume-queue": lambda f, ids: self._pause(f, ids, False),
            "purge-queue": self._purge,
            "enable-periodic": lambda f, ids: self._switch(f, True),
            "disable-periodic": lambda f, ids: self._switch(f, False),
            "run-periodic": self._run_periodic,
        }
        for name in WORKER_COMMANDS:
            found[name] = functools.partial(self._control, name)
        for page in ("scheduled", "retries"):
            for verb in ("run", "cancel"):
                found[f"{verb}-{page}"] = functools.partial(self._move, page, verb)
        return found

    # -- pages -----------------------------------------------------------------------------
    def _workers(self, params: Mapping[str, str]) -> dict[str, Any]:
        workers = self.fleet.workers()
        return {"workers": workers, "nodes": nodes(workers)}

    def _queues(self, params: Mapping[str, str]) -> dict[str, Any]:
        rows = self.ops.queue_rows(self.fleet.priority_counts(), self.fleet.queues)
        ago = self.fleet.counted_ago()
        return {
            "rows": rows,
            "queues": {row.name: row.stats for row in rows},
            "counted_ago": None if ago is None else round(ago),
        }

    def _scheduled(self, params: Mapping[str, str], *, retries: bool) -> dict[str, Any]:
        where = scheduled_filter(params)
        values: dict[str, Any] = {
            "where": where,
            "queue_names": sorted(self.fleet.queues()),
            "retries": retries,
            "rows": [],
            "count": 0,
            "unsupported": "",
        }
        try:
            if "page" in params and not (retries or where.task or where.search):
                # The live count, every 2 s: from the queue counts, not by listing them all.
                stats = self.fleet.queues()
                values["count"] = sum(
                    s.delayed for q, s in stats.items() if not where.queue or q == where.queue
                )
            else:
                values["rows"], values["count"] = self.ops.scheduled(
                    where, retries=retries, limit=LISTED
                )
        except NotImplementedError as exc:
            values["unsupported"] = str(exc)
        values["listed"] = min(values["count"], LISTED)
        return values

    def _periodic(self, params: Mapping[str, str]) -> dict[str, Any]:
        return {"rows": self.periodic.rows(), "database": self.periodic.source is not None}

    # -- actions ---------------------------------------------------------------------------
    def _control(
        self, action: str, fields: Mapping[str, str], ids: Sequence[str]
    ) -> tuple[str, int, str]:
        node = self.ops.node(self.fleet.workers(), name_field(fields, "worker"))
        queue = name_field(fields, "queue") if action.endswith("consumer") else ""
        n = 1
        if action.startswith("pool-"):
            try:
                n = int(fields.get("n", "1") or "1")
            except ValueError:
                raise ActionError(400, "give a whole number of processes") from None
        target, count = self.ops.control_worker(node, WORKER_COMMANDS[action], queue, n)
        return target, count, "/workers"

    def _pause(
        self, fields: Mapping[str, str], ids: Sequence[str], paused: bool
    ) -> tuple[str, int, str]:
        # A row's own button names its queue; the bulk buttons send the selected ones.
        queues = [name_field(fields, "queue")] if fields.get("queue") else list(ids)
        queues = [name_field({"queue": queue}, "queue") for queue in queues]
        if not queues:
            raise ActionError(400, "select queues first")
        count = self.ops.pause(queues, paused)
        return (
            f"queues {', '.join(queues[:10])}{' ...' if len(queues) > 10 else ''}",
            count,
            ("/queues"),
        )

    def _purge(self, fields: Mapping[str, str], ids: Sequence[str]) -> tuple[str, int, str]:
        queue = name_field(fields, "queue")
        return f"queue {queue}", self.fleet.purge_queue(queue), "/queues"

    def _move(
        self, page: str, verb: str, fields: Mapping[str, str], ids: Sequence[str]
    ) -> tuple[str, int, str]:
        where = scheduled_filter(fields)
        retries, run = page == "retries", verb == "run"
        kind = "retries" if retries else "delayed messages"
        try:
            if fields.get("scope") == "matching":
                count = self.ops.move_matching(where, retries=retries, run=run)
                target = f"{kind} matching {where.describe()}"
            elif ids:
                count = self.ops.move_scheduled(ids, run=run)
                target = f"{kind} {', '.join(ids[:5])}{' ...' if len(ids) > 5 else ''}"
            else:
                raise ActionError(400, f"select {kind} first")
        except NotImplementedError as exc:
            raise ActionError(409, str(exc)) from None
        query = where.query()
        return target, count, f"/{page}?{query}" if query else f"/{page}"

    def _switch(self, fields: Mapping[str, str], enabled: bool) -> tuple[str, int, str]:
        name = name_field(fields, "name")
        return f"periodic task {name}", self.periodic.set_enabled(name, enabled), "/periodic"

    def _run_periodic(self, fields: Mapping[str, str], ids: Sequence[str]) -> tuple[str, int, str]:
        name = name_field(fields, "name")
        task_id = self.periodic.run_now(name)
        return f"periodic task {name} (sent as {task_id})", 1, "/periodic"


def scheduled_filter(values: Mapping[str, str]) -> ScheduledFilter:
    """The Scheduled/Retries filter of a query string or form; over-long values are refused."""
    found = {}
    for name in ("queue", "task", "search"):
        value = str(values.get(name) or "").strip()
        if len(value) > MAX_FILTER:
            raise ActionError(400, f"the {name} filter is longer than {MAX_FILTER} characters")
        found[name] = value
    return ScheduledFilter(**found)


def name_field(fields: Mapping[str, str], name: str) -> str:
    """The form's ``name`` (a queue, worker or periodic task name): not empty, not too long,
    no control characters (a name no page could show)."""
    value = fields.get(name, "").strip()
    if not value or len(value) > MAX_NAME or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ActionError(400, f"the form has no valid {name}")
    return value
