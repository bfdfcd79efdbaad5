"""``conveyor worker``: a supervisor and child processes consuming tasks (or, with
``--pool solo``, one process), and the banner it prints on start."""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Sequence

import click

from .. import __version__
from ..app import Conveyor
from ..celery_settings import CELERY_SETTINGS, Refused
from ..doctor import startup_warnings
from ..loading import LOG_FORMATS, LOG_LEVELS, prepare_app, redact_text, setup_logging
from ..signing import key_ids
from ..worker.autoscale import parse_autoscale
from ..worker.child import run_solo
from ..worker.consumer import default_hostname
from ..worker.supervisor import Supervisor
from .base import State, app_option, held_pidfile, process_options, split
from .beat import SCHEDULE_NOTE, schedule_option
from .celery_cli import Command
from .coverage import unconsumed_warning
from .output import echo_banner

logger = logging.getLogger("conveyor.worker")
_POOL_FATE = CELERY_SETTINGS["worker_pool"]
POOL_REASON = _POOL_FATE.reason if isinstance(_POOL_FATE, Refused) else ""


@click.command("worker", cls=Command)
@app_option
@click.option(
    "-c", "--concurrency", type=click.IntRange(1), help="Child processes (default: CPU count)."
)
@click.option("--threads", type=click.IntRange(1), help="Threads per child for sync tasks.")
@click.option(
    "-P",
    "--pool",
    default="prefork",
    show_default=True,
    callback=lambda ctx, param, value: check_pool(value),
    help="prefork or solo (one process, no supervisor: debugging).",
)
@click.option(
    "-Q",
    "--queues",
    metavar="Q1,Q2",
    help="Queues to consume (default: those in task_queues, else task_default_queue).",
)
@click.option(
    "-X", "--exclude-queues", metavar="Q1,Q2", help="Consume the default queues except these."
)
@click.option(
    "--prefetch",
    "--prefetch-multiplier",
    type=click.IntRange(1),
    help="Messages leased per free slot, fixed (default: adaptive, more only for short tasks).",
)
@click.option("--max-tasks-per-child", type=click.IntRange(1), help="Recycle a child after N.")
@click.option(
    "--max-memory-per-child",
    type=click.IntRange(1),
    metavar="KIB",
    help="Recycle a child once it uses more memory (checked after each task).",
)
@click.option(
    "-l",
    "--loglevel",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    default="info",
    show_default=True,
)
@click.option(
    "--log-format",
    type=click.Choice(LOG_FORMATS),
    default="text",
    show_default=True,
    help="json: one JSON object per line.",
)
@click.option("-n", "--hostname", help="Node name (%h: host name, %i: pid).")
@click.option(
    "--shutdown-timeout",
    type=click.FloatRange(0, min_open=True),
    help="Seconds a warm shutdown waits for running tasks.",
)
@click.option(
    "--terminate-grace",
    type=click.FloatRange(0),
    default=5.0,
    show_default=True,
    help="Seconds a terminated task gets before its process is killed.",
)
@click.option(
    "-E", "--task-events", is_flag=True, help="Send events (worker_send_task_events=True)."
)
@click.option(
    "--autoscale",
    metavar="MAX,MIN",
    help="Grow the pool up to MAX children while messages wait, shrink to MIN when idle.",
)
@click.option(
    "-B", "--beat", is_flag=True, help="Also run beat (safe on several workers: runs go once)."
)
@schedule_option
@process_options
@click.option(
    "-O",
    "optimization",
    type=click.Choice(["fair", "default"]),
    help="Celery's prefetch optimization: Conveyor's prefetch is fair (adaptive) already.",
)
@click.option("--beat-process", hidden=True, help="Beat runs in this other process (banner).")
@click.option("--without-gossip", is_flag=True, hidden=True)
@click.option("--without-mingle", is_flag=True, hidden=True)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    help="Serve Prometheus metrics on this port (default: worker_metrics_port, else off).",
)
@click.option(
    "--metrics-host", help="Address of the metrics endpoint (default: worker_metrics_host)."
)
@click.pass_obj
def worker_command(
    state: State,
    app_spec: str | None,
    concurrency: int | None,
    threads: int | None,
    pool: str,
    queues: str | None,
    prefetch: int | None,
    max_tasks_per_child: int | None,
    max_memory_per_child: int | None,
    loglevel: str,
    log_format: str,
    hostname: str | None,
    shutdown_timeout: float | None,
    terminate_grace: float,
    task_events: bool,
    autoscale: str | None,
    beat: bool,
    schedule_file: str | None,
    pidfile: str | None,
    logfile: str | None,
    optimization: str | None,
    without_gossip: bool,
    without_mingle: bool,
    exclude_queues: str | None,
    beat_process: str | None,
    metrics_port: int | None,
    metrics_host: str | None,
) -> None:
    """Run a worker: a supervisor and child processes consuming tasks."""
    app = state.app(app_spec)  # first: the app module may connect setup_logging receivers
    setup_logging(loglevel, logfile, log_format)
    if schedule_file:
        logger.warning(SCHEDULE_NOTE, schedule_file)
    for flag, given in (("--without-gossip", without_gossip), ("--without-mingle", without_mingle)):
        if given:
            logger.info("%s: Conveyor's workers do not gossip or mingle; nothing to turn off", flag)
    if optimization:
        logger.info("-O %s: Conveyor's adaptive prefetch is fair unless --prefetch", optimization)
    with held_pidfile(pidfile):
        code = run(
            state,
            app,
            app_spec,
            concurrency=concurrency,
            threads=threads,
            pool=pool,
            queues=queues,
            exclude=exclude_queues,
            prefetch=prefetch,
            max_tasks_per_child=max_tasks_per_child,
            max_memory_per_child=max_memory_per_child,
            hostname=hostname,
            shutdown_timeout=shutdown_timeout,
            terminate_grace=terminate_grace,
            beat=beat,
            beat_process=beat_process,
            autoscale=autoscale,
            task_events=task_events,
            log_format=log_format,
            metrics_port=metrics_port,
            metrics_host=metrics_host,
        )
    sys.exit(code)


def run(
    state: State,
    app: Conveyor,
    app_spec: str | None,
    *,
    concurrency: int | None,
    threads: int | None,
    pool: str,
    queues: str | None,
    exclude: str | None,
    prefetch: int | None,
    max_tasks_per_child: int | None,
    max_memory_per_child: int | None,
    hostname: str | None,
    shutdown_timeout: float | None,
    terminate_grace: float,
    beat: bool,
    beat_process: str | None = None,
    autoscale: str | None = None,
    task_events: bool = False,
    log_format: str = "text",
    metrics_port: int | None = None,
    metrics_host: str | None = None,
) -> int:
    """Start the worker; its exit code once it stopped."""
    spec = state.spec(app_spec)
    runner_class = prepare_app(app)
    conf = app.conf
    if task_events:
        conf.worker_send_task_events = True
    name = expand_hostname(hostname) if hostname else None
    queue_list = split(queues) or [q.name for q in conf.task_queues] or [conf.task_default_queue]
    if exclude:
        queue_list = [queue for queue in queue_list if queue not in split(exclude)]
        if not queue_list:
            raise click.UsageError(f"-X {exclude} leaves no queue to consume")
    threads = threads or conf.worker_threads
    timeout = float(shutdown_timeout or conf.worker_shutdown_timeout)
    try:
        bounds = parse_autoscale(autoscale) if autoscale else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--autoscale") from None
    port = metrics_port if metrics_port is not None else conf.worker_metrics_port
    host = metrics_host or conf.worker_metrics_host
    if pool == "solo":
        if bounds is not None:
            raise click.UsageError("--autoscale needs the prefork pool (not --pool solo)")
        print_banner(
            app, spec, "solo", 1, threads, queue_list, prefetch, beat, beat_process, log_format
        )
        warn_about_setup(app, queue_list)
        run_solo(
            app,
            shutdown_timeout=timeout,
            max_memory_kib=max_memory_per_child or conf.worker_max_memory_per_child,
            queues=queue_list,
            concurrency=threads,
            hostname=name or default_hostname(),
            prefetch_multiplier=prefetch,
            max_tasks=max_tasks_per_child or conf.worker_max_tasks_per_child,
            beat=beat,
            runner_class=runner_class,
            metrics=(host, port) if port is not None else None,
        )
        return 0
    supervisor = Supervisor(
        app,
        concurrency=concurrency,
        threads=threads,
        queues=queue_list,
        prefetch_multiplier=prefetch,
        max_tasks_per_child=max_tasks_per_child,
        max_memory_per_child=max_memory_per_child,
        hostname=name,
        shutdown_timeout=timeout,
        terminate_grace=terminate_grace,
        app_spec=spec,
        beat=beat,
        runner_class=runner_class,
        autoscale=bounds,
        metrics_port=port,
        metrics_host=host,
    )
    print_banner(
        app,
        spec,
        "prefork",
        supervisor.concurrency,
        threads,
        queue_list,
        prefetch,
        beat,
        beat_process,
        log_format,
    )
    # The checks ask the broker: the children lease meanwhile.
    return supervisor.run(started=lambda: warn_about_setup(app, queue_list))


def warn_about_setup(app: Conveyor, queues: Sequence[str]) -> None:
    """Queues that tasks are sent to and no worker consumes, then the server's settings."""
    if warning := unconsumed_warning(app, queues):
        logger.warning("%s", warning)
    warn_about_storage(app)


def warn_about_storage(app: Conveyor) -> None:
    """After the banner: server settings that lose messages (Redis eviction, no AOF, SQLite
    on temporary or network storage), each with its fix (``conveyor doctor`` says more)."""
    for finding in startup_warnings(app):
        logger.warning("%s; fix: %s", finding.message, finding.fix)


def check_pool(value: str) -> str:
    """``-P``: prefork (Celery's ``processes`` too) or solo; Celery's other pools refused."""
    if value in ("prefork", "processes"):
        return "prefork"
    if value == "solo":
        return value
    raise click.BadParameter(f"{value!r}: {POOL_REASON}")


def expand_hostname(template: str) -> str:
    """``--hostname`` with ``%h`` (host name), ``%n`` (its first label) and ``%i`` (pid)."""
    host = socket.gethostname()
    return (
        template.replace("%h", host)
        .replace("%n", host.split(".")[0])
        .replace("%i", str(os.getpid()))
    )


def print_banner(
    app: Conveyor,
    spec: str,
    pool: str,
    processes: int,
    threads: int,
    queues: Sequence[str],
    prefetch: int | None,
    beat: bool,
    beat_process: str | None = None,
    log_format: str = "text",
) -> None:
    """What the worker runs, on stderr: app, broker, queues, concurrency and tasks (with
    ``--log-format json``, one log record with these fields, so every line stays JSON)."""
    tasks = app.task_names()
    if log_format == "json":
        fields = {
            "app": app.main or "__main__",
            "broker": redact_text(app.broker_url),
            "results": redact_text(app.result_backend_url),
            "queues": list(queues),
            "pool": pool,
            "processes": processes,
            "threads": threads,
            "tasks": tasks,
        }
        logging.getLogger("conveyor.worker").info("conveyor %s worker", __version__, extra=fields)
        return
    lines = [
        f"  app:          {app.main or '__main__'} ({spec})",
        f"  broker:       {redact_text(app.broker_url)}",
        f"  results:      {redact_text(app.result_backend_url)}",
        f"  queues:       {', '.join(queues)}",
        f"  concurrency:  {processes} process(es) x {threads} thread(s) ({pool})",
        f"  prefetch:     {_prefetch(prefetch or app.conf.worker_prefetch_multiplier, app)}",
        f"  beat:         {'embedded' if beat else beat_process or 'off'}",
        f"  signing:      {_signing(app.conf.message_signing_keys)}",
        f"  tasks ({len(tasks)}):",
        *(f"    . {name}" for name in tasks),
    ]
    echo_banner(f"conveyor {__version__}", "worker", lines)


def _signing(keys: Sequence[str]) -> str:
    """How messages are signed, naming keys by their public ids only."""
    if not keys:
        return "off"
    ids = key_ids(keys)
    return f"key id {ids[0]} signs; {len(ids)} key(s) accepted; unsigned messages refused"


def _prefetch(multiplier: int | None, app: Conveyor) -> str:
    if multiplier is not None:
        return f"{multiplier} per free slot"
    return f"adaptive (up to {app.conf.worker_prefetch_max} per free slot while tasks are short)"
