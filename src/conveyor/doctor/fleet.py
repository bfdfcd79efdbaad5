"""Checks of the live workers against this app, from what each worker announces in the broker
every few seconds (``worker:<hostname>``: queues, task names, clock, time zone, key ids)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from ..brokers import scheme_of
from ..registry import read_announcements
from ..routing import route
from ..signing import key_ids
from .findings import Finding, error, info, ok, warning

if TYPE_CHECKING:
    from ..app import Conveyor
    from ..worker.heartbeat import WorkerInfo

AMQP_SCHEMES = ("amqp", "amqps", "pyamqp")
#: Clock differences up to this are normal (network round trips, NTP slew).
SKEW_WARNING = 2.0


def live_workers(app: Conveyor) -> dict[str, WorkerInfo]:
    """The announcements of live workers by hostname (unreadable ones are skipped)."""
    return {name: info for name, info in read_announcements(app.kv).items() if info is not None}


def fleet_checks(app: Conveyor) -> list[Finding]:
    findings = [_local_clock(app)]
    workers = live_workers(app)
    findings += _queues(app, workers)
    if not workers:
        return findings
    findings += _worker_clocks(app, workers)
    findings += _tasks(app, workers)
    findings += _time_zones(app, workers)
    findings += _signing(app, workers)
    return findings


def _skew_finding(app: Conveyor, who: str, skew: float) -> Finding:
    check = "clock"
    lease = float(app.conf.broker_lease_timeout)
    if abs(skew) <= SKEW_WARNING:
        return ok(check, f"{who}: clock within {abs(skew):.2f} s of the broker's")
    level = error if abs(skew) > lease / 2 else warning
    return level(
        check,
        f"{who}: clock {abs(skew):.1f} s {'ahead of' if skew > 0 else 'behind'} the broker's; "
        "expires= and eta= are judged on the clocks of producers and workers, so tasks expire "
        "early or late, and times in results and logs disagree",
        "run NTP (chrony / systemd-timesyncd) on every host, broker included",
    )


def _local_clock(app: Conveyor) -> Finding:
    if scheme_of(app.broker_url) in AMQP_SCHEMES:
        return info(
            "clock",
            "RabbitMQ does not tell its time over AMQP: workers' clocks are not compared "
            "(expires= and eta= are judged on the clocks of producers and workers)",
            "run NTP (chrony / systemd-timesyncd) on every host",
        )
    before = time.time()
    broker_now = app.broker.time()
    after = time.time()
    return _skew_finding(app, "this host", (before + after) / 2 - broker_now)


def _worker_clocks(app: Conveyor, workers: dict[str, WorkerInfo]) -> list[Finding]:
    if scheme_of(app.broker_url) in AMQP_SCHEMES:
        return []  # a worker's "broker time" is its own clock (see _local_clock)
    findings = []
    for name, worker in workers.items():
        seen, broker_time = worker.get("seen_at"), worker.get("broker_time")
        if isinstance(seen, int | float) and isinstance(broker_time, int | float):
            findings.append(_skew_finding(app, f"worker {name}", seen - broker_time))
        else:
            findings.append(
                info("clock", f"worker {name} does not report its clock (an older version)")
            )
    return findings


def _consumers(workers: dict[str, WorkerInfo], queue: str) -> list[str]:
    return [n for n, w in workers.items() if queue in (w.get("queues") or [])]


def _sent_tasks(app: Conveyor) -> dict[str, str]:
    """This app's own tasks (not the built-in ones) and the queue each is routed to."""
    return {
        name: route(app.conf, name, task)
        for name, task in sorted(app.tasks.items())
        if not name.startswith("conveyor.")
    }


def _queues(app: Conveyor, workers: dict[str, WorkerInfo]) -> list[Finding]:
    check = "queues"
    if not workers:
        return [
            warning(
                check,
                "no live worker announces itself in this broker (workers do every few seconds)",
                "start workers on this broker: conveyor -A <app> worker (same broker URL and "
                "key_prefix)",
            )
        ]
    routed = set(_sent_tasks(app).values()) | {str(app.conf.task_default_queue)}
    stats = app.broker.stats()
    waiting = {q for q, s in stats.items() if s.ready or s.delayed}
    findings = []
    for queue in sorted(routed | waiting):
        consumers = _consumers(workers, queue)
        if consumers:
            findings.append(ok(check, f"queue {queue!r}: consumed by {', '.join(consumers)}"))
            continue
        queued = stats.get(queue)
        count = (queued.ready + queued.delayed) if queued else 0
        level = error if count else warning
        findings.append(
            level(
                check,
                f"queue {queue!r} has no consumer ({count} message(s) waiting)"
                + ("" if queue in routed else "; no task of this app is routed there"),
                f"start a worker with -Q {queue} (or add it to a worker's -Q list), or "
                "change task_routes",
            )
        )
    return findings


def _tasks(app: Conveyor, workers: dict[str, WorkerInfo]) -> list[Finding]:
    check = "tasks"
    findings = []
    for name, queue in _sent_tasks(app).items():
        consumers = _consumers(workers, queue)
        reporting = [c for c in consumers if isinstance(workers[c].get("tasks"), list)]
        if not reporting:
            continue  # no consumer (see "queues"), or none reports its tasks
        lacking = [c for c in reporting if name not in (workers[c].get("tasks") or [])]
        if not lacking:
            continue
        level = error if len(lacking) == len(reporting) else warning
        findings.append(
            level(
                check,
                f"task {name!r} is sent to queue {queue!r}, but worker(s) {', '.join(lacking)} "
                "consuming it do not register it: the messages they lease are dead-lettered "
                "as unknown_task",
                "import the module that defines it in those workers (the app's imports / "
                "include setting, or Django autodiscovery), or route it to a queue whose "
                "workers have it",
            )
        )
    if not findings:
        findings.append(ok(check, "every task of this app is registered in its queue's workers"))
    return findings


def _time_zones(app: Conveyor, workers: dict[str, WorkerInfo]) -> list[Finding]:
    mine = str(app.conf.timezone)
    other = {
        n: w.get("timezone") for n, w in workers.items() if w.get("timezone") not in (None, mine)
    }
    if not other:
        return []
    listed = ", ".join(f"{n} ({tz})" for n, tz in other.items())
    return [
        warning(
            "timezone",
            f"this app's timezone is {mine!r}, but worker(s) {listed} use another: a crontab "
            "run by beat in one of them fires at other hours than you expect",
            "set the same timezone setting everywhere (one settings module)",
        )
    ]


def _signing(app: Conveyor, workers: dict[str, WorkerInfo]) -> list[Finding]:
    check = "signing"
    mine = key_ids(app.conf.message_signing_keys)
    findings = []
    for name, worker in workers.items():
        theirs = worker.get("signing_keys")
        if not isinstance(theirs, list):
            continue
        if mine and not theirs:
            findings.append(
                warning(
                    check,
                    f"this app signs messages but worker {name} has no keys: it runs any "
                    "message, signed or not",
                    "set message_signing_keys on every worker too",
                )
            )
        elif theirs and not mine:
            findings.append(
                error(
                    check,
                    f"worker {name} requires signed messages, but this app has no keys: it "
                    "dead-letters every message this app sends as bad_signature",
                    "set the same message_signing_keys in this app",
                )
            )
        elif mine and mine[0] not in theirs:
            findings.append(
                error(
                    check,
                    f"worker {name} does not accept the key this app signs with (key id "
                    f"{mine[0]}; it accepts {', '.join(theirs)}): every message this app "
                    "sends is dead-lettered as bad_signature",
                    "add this app's first key to the worker's message_signing_keys (rotation: "
                    "new key first, old key second, everywhere)",
                )
            )
        elif mine and theirs[0] not in mine:
            findings.append(
                warning(
                    check,
                    f"worker {name} signs with key id {theirs[0]}, which this app does not "
                    "accept: workers configured like this app refuse its retries and workflow "
                    "steps",
                    "use one message_signing_keys list everywhere",
                )
            )
    return findings
