"""Checks of the RabbitMQ server behind the broker, over AMQP alone (no management plugin
needed): its version against the queue type in use, ``consumer_timeout`` against the tasks'
time limits, memory and disk alarms, and the type and arguments of the app's queues.

* **Version.** Quorum queues (Conveyor's default) and ``x-delivery-limit`` need RabbitMQ 3.8.
* **consumer_timeout.** RabbitMQ closes a channel whose oldest unacked message is older than
  ``consumer_timeout`` (default 30 min since 3.8.17, 15 min in 3.8.15-16); Conveyor acks when
  the task ends, so a task that runs longer is put back and runs again while still running.
  AMQP does not reveal the server's value: the version's default is assumed unless
  ``broker_transport_options={"consumer_timeout": <seconds>}`` states it (0: disabled).
* **Alarms.** A node over its memory watermark or under its disk limit blocks every
  publishing connection: ``delay()`` hangs. A probe publishes one unroutable message (dropped
  by RabbitMQ) and waits briefly for ``connection.blocked``.
* **Queues.** Each queue of the app that exists is declared again with the arguments Conveyor
  declares it with: RabbitMQ refuses one of another type or with other arguments
  (``PRECONDITION_FAILED``), and so would every worker.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..brokers import redact_url
from ..routing import route
from .findings import Finding, error, info, ok

if TYPE_CHECKING:
    import amqp

    from ..app import Conveyor
    from ..brokers.amqp.topology import Topology

#: How long the alarm probe waits for ``connection.blocked`` (seconds).
ALARM_WAIT = 1.0
QUORUM_SINCE = (3, 8, 0)


def default_consumer_timeout(version: tuple[int, ...]) -> float | None:
    """RabbitMQ's default ``consumer_timeout`` for a server version (seconds; None: none)."""
    if version >= (3, 8, 17):
        return 1800.0
    if version >= (3, 8, 15):
        return 900.0
    return None


def parse_version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def rabbitmq_findings(app: Conveyor, *, probe_alarms: bool = True) -> list[Finding]:
    # deferred: the optional AMQP client (the amqp extra), needed only for amqp:// URLs
    import amqp

    from ..brokers.amqp.connection import parse_url
    from ..brokers.amqp.topology import Names, Topology

    check = "broker: rabbitmq"
    url = app.broker_url
    where = f"RabbitMQ {redact_url(url.split('?', 1)[0])}"
    params = parse_url(url)
    blocked: list[str] = []
    connection = amqp.Connection(
        f"{params.host}:{params.port}",
        userid=params.userid,
        password=params.password,
        virtual_host=params.vhost,
        ssl=params.tls or False,
        connect_timeout=min(params.connect_timeout, 10.0),
        on_blocked=blocked.append,
    )
    connection.connect()
    try:
        transport = app.conf.broker_transport_options
        queue_type = str(transport.get("queue_type", "quorum"))
        raw_version = connection.server_properties.get("version", "")
        text = raw_version.decode() if isinstance(raw_version, bytes) else str(raw_version)
        version = parse_version(text)
        findings = [_version(check, where, text, version, queue_type)]
        findings += _consumer_timeout(app, check, where, version, transport.get("consumer_timeout"))
        if probe_alarms:
            findings.append(_alarms(connection, blocked, check, where))
        if not blocked:
            topology = Topology(
                Names(app.key_prefix),
                queue_type=queue_type,
                max_deliveries=int(app.conf.task_max_deliveries),
            )
            findings += _queues(app, connection.channel, topology, check, where)
    finally:
        if blocked:
            connection.collect()  # a blocked connection may never read our close
        else:
            connection.close()
    return findings


def _version(
    check: str, where: str, text: str, version: tuple[int, ...], queue_type: str
) -> Finding:
    if queue_type == "quorum" and version and version < QUORUM_SINCE:
        return error(
            check,
            f"{where}: RabbitMQ {text} has no quorum queues (3.8 or later), which Conveyor "
            "declares by default: declaring a queue fails",
            "upgrade RabbitMQ (3.13 or 4.x), or set broker_transport_options="
            "{'queue_type': 'classic'} (no delivery limit: poison messages loop)",
        )
    if not version:
        return info(check, f"{where}: the server does not say its version", "")
    return ok(check, f"{where}: RabbitMQ {text}, {queue_type} queues")


def _consumer_timeout(
    app: Conveyor, check: str, where: str, version: tuple[int, ...], stated: object
) -> list[Finding]:
    if stated is None:
        timeout = default_consumer_timeout(version)
        source = "the default of this version; state yours with the consumer_timeout option"
    else:
        timeout = float(stated) if isinstance(stated, int | float) and stated > 0 else None
        source = "broker_transport_options"
    if timeout is None:
        return [ok(check, f"{where}: no consumer_timeout ({source})")]
    default_limit = app.conf.task_time_limit
    limits: dict[str, float | None] = {}
    for name, task in sorted(app.tasks.items()):
        if not name.startswith("conveyor."):
            limit = task.time_limit if task.time_limit is not None else default_limit
            limits[name] = None if limit is None else float(limit)
    over = {name: limit for name, limit in limits.items() if limit is not None and limit >= timeout}
    unlimited = [name for name, limit in limits.items() if limit is None]
    fix = (
        f"keep every task's time_limit under {timeout:g} s, or raise consumer_timeout "
        "(milliseconds) in rabbitmq.conf and state it here with broker_transport_options="
        "{'consumer_timeout': <seconds>}"
    )
    findings = []
    if over:
        shown = ", ".join(f"{name} ({limit:g} s)" for name, limit in list(over.items())[:5])
        findings.append(
            error(
                check,
                f"{where}: consumer_timeout is {timeout:g} s ({source}) but task(s) {shown} "
                "may run longer: RabbitMQ then closes the worker's channel, the message is "
                "delivered again and the task runs twice at once",
                fix,
            )
        )
    if unlimited:
        shown = ", ".join(unlimited[:5]) + (" ..." if len(unlimited) > 5 else "")
        findings.append(
            info(
                check,
                f"{where}: task(s) {shown} have no time limit; one that runs over "
                f"consumer_timeout ({timeout:g} s, {source}) is delivered again while it "
                "still runs",
                "set task_time_limit (or time_limit= on the task) below consumer_timeout, or "
                "raise consumer_timeout in rabbitmq.conf",
            )
        )
    if not findings:
        longest = max((limit for limit in limits.values() if limit is not None), default=0.0)
        findings.append(
            ok(
                check,
                f"{where}: the longest task time limit ({longest:g} s) is under "
                f"consumer_timeout ({timeout:g} s, {source})",
            )
        )
    return findings


def _alarms(connection: amqp.Connection, blocked: list[str], check: str, where: str) -> Finding:
    import amqp  # deferred: the optional AMQP client

    channel = connection.channel()
    channel.basic_publish(amqp.Message(b""), "", "conveyor.doctor.probe")  # unroutable: dropped
    deadline = time.monotonic() + ALARM_WAIT
    while not blocked and (left := deadline - time.monotonic()) > 0:
        try:
            connection.drain_events(timeout=left)
        except TimeoutError:  # nothing came: not blocked
            break
    if blocked:
        return error(
            check,
            f"{where}: publishing is blocked by a memory or disk alarm: every delay() and "
            "every retry waits until it clears, and workers cannot settle messages that "
            "republish (retries, dead letters)",
            "rabbitmq-diagnostics alarms; free disk space (disk_free_limit) or memory "
            "(vm_memory_high_watermark), drain queues, or add consumers",
        )
    channel.close()
    return ok(check, f"{where}: no memory or disk alarm (publishing is not blocked)")


def _queues(
    app: Conveyor,
    open_channel: Callable[[], amqp.Channel],
    topology: Topology,
    check: str,
    where: str,
) -> list[Finding]:
    import amqp  # deferred: the optional AMQP client

    from ..brokers.amqp.broker import QUEUE_KEY

    names = {str(app.conf.task_default_queue)}
    names |= {route(app.conf, name, task) for name, task in app.tasks.items()}
    names |= {key[len(QUEUE_KEY) :] for key in app.broker.kv.values(QUEUE_KEY)}
    findings = []
    checked = 0
    for queue in sorted(names):
        physical = topology.names.queue(queue)
        channel = open_channel()
        try:
            channel.queue_declare(physical, passive=True)
        except amqp.exceptions.NotFound:
            continue  # not declared yet: the first worker or send declares it
        channel = channel if channel.is_open else open_channel()
        try:
            channel.queue_declare(
                physical, durable=True, auto_delete=False, arguments=topology.queue_arguments()
            )
        except amqp.exceptions.PreconditionFailed as exc:
            findings.append(
                error(
                    check,
                    f"{where}: queue {physical} was declared with other arguments than "
                    f"Conveyor's ({topology.queue_type}, x-delivery-limit "
                    f"{max(0, topology.max_deliveries - 1)}): {exc.reply_text}. Workers and "
                    "producers fail to declare it",
                    f"move its messages elsewhere and delete it (rabbitmqctl delete_queue "
                    f"{physical}) so Conveyor declares it again, or set queue_type / "
                    "task_max_deliveries to what it was declared with",
                )
            )
            continue
        if channel.is_open:
            channel.close()
        checked += 1
    if checked and not findings:
        findings.append(
            ok(check, f"{where}: {checked} queue(s) declared as Conveyor declares them")
        )
    return findings
