"""``conveyor worker``: a supervisor and child processes consuming tasks (or, with
``--pool solo``, one process), and the banner it prints on start."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Sequence

import click

from .. import __version__
from ..app import Conveyor
from ..loading import LOG_LEVELS, prepare_app, redact_text, setup_logging
from ..signing import key_ids
from ..worker.child import run_solo
from ..worker.consumer import default_hostname
from ..worker.supervisor import Supervisor
from .base import State, app_option, split
from .output import banner_console


@click.command("worker")
@app_option
@click.option(
    "-c", "--concurrency", type=click.IntRange(1), help="Child processes (default: CPU count)."
)
@click.option("--threads", type=click.IntRange(1), help="Threads per child for sync tasks.")
@click.option(
    "-P",
    "--pool",
    type=click.Choice(["prefork", "solo"]),
    default="prefork",
    show_default=True,
    help="solo: one process, no supervisor (debugging).",
)
@click.option("-Q", "--queues", metavar="Q1,Q2", help="Queues to consume (default: the default).")
@click.option(
    "--prefetch",
    type=click.IntRange(1),
    help="Messages leased per free slot (default 1: only what can run now).",
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
    "-B", "--beat", is_flag=True, help="Also run beat (safe on several workers: runs go once)."
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
    hostname: str | None,
    shutdown_timeout: float | None,
    terminate_grace: float,
    beat: bool,
) -> None:
    """Run a worker: a supervisor and child processes consuming tasks."""
    setup_logging(loglevel)
    spec = state.spec(app_spec)
    app = state.app(app_spec)
    runner_class = prepare_app(app)
    conf = app.conf
    name = expand_hostname(hostname) if hostname else None
    queue_list = split(queues) or [conf.task_default_queue]
    threads = threads or conf.worker_threads
    timeout = float(shutdown_timeout or conf.worker_shutdown_timeout)
    if pool == "solo":
        print_banner(app, spec, "solo", 1, threads, queue_list, prefetch, beat)
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
        )
        return
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
    )
    print_banner(app, spec, "prefork", supervisor.concurrency, threads, queue_list, prefetch, beat)
    sys.exit(supervisor.run())


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
) -> None:
    """What the worker runs, on stderr: app, broker, queues, concurrency and tasks."""
    tasks = sorted(name for name in app.tasks if not name.startswith("conveyor."))
    lines = [
        f"[bold]conveyor {__version__}[/] worker",
        f"  app:          {app.main or '__main__'} ({spec})",
        f"  broker:       {redact_text(app.broker_url)}",
        f"  results:      {redact_text(app.result_backend_url)}",
        f"  queues:       {', '.join(queues)}",
        f"  concurrency:  {processes} process(es) x {threads} thread(s) ({pool})",
        f"  prefetch:     {prefetch or app.conf.worker_prefetch_multiplier} per free slot",
        f"  beat:         {'embedded' if beat else 'off'}",
        f"  signing:      {_signing(app.conf.message_signing_keys)}",
        f"  tasks ({len(tasks)}):",
        *(f"    . {name}" for name in tasks),
    ]
    banner_console().print("\n".join(lines), markup=True)


def _signing(keys: Sequence[str]) -> str:
    """How messages are signed, naming keys by their public ids only."""
    if not keys:
        return "off"
    ids = key_ids(keys)
    return f"key id {ids[0]} signs; {len(ids)} key(s) accepted; unsigned messages refused"
