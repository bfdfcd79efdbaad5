"""Celery's command-line spellings: what an unknown option or command is in Conveyor.

An option Conveyor does not have is a usage error; when it is Celery's, the error says what
Conveyor does instead (:data:`CELERY_OPTIONS`, :data:`CELERY_COMMANDS`); otherwise click names
the closest valid option. Celery options that only switch off something Conveyor does not
have (gossip, mingle) are accepted by the commands themselves and say so in the log.
"""

from __future__ import annotations

import difflib

import click

_DAEMON = (
    "Conveyor does not daemonize or switch users: run it under systemd, supervisord or a "
    "container, which do (and restart it)"
)

#: Celery options (worker, beat and the global ones) that Conveyor refuses, and why.
CELERY_OPTIONS: dict[str, str] = {
    "--time-limit": "set task_time_limit in the configuration or time_limit= on the task",
    "--soft-time-limit": (
        "set task_soft_time_limit in the configuration or soft_time_limit= on the task"
    ),
    "--statedb": (
        "Conveyor keeps revokes in the broker (they reach workers that were offline): "
        "there is no state file"
    ),
    "--purge": "run `conveyor purge -Q QUEUES` before starting the worker",
    "--discard": "run `conveyor purge -Q QUEUES` before starting the worker",
    "-D": _DAEMON,
    "--detach": _DAEMON,
    "--uid": _DAEMON,
    "--gid": _DAEMON,
    "--umask": _DAEMON,
    "--executable": _DAEMON,
    "-S": (
        "Conveyor's beat reads beat_schedule; with conveyor.contrib.django in "
        "INSTALLED_APPS it reads the database schedules too (no scheduler class to pick)"
    ),
    "--scheduler": (
        "Conveyor's beat reads beat_schedule; with conveyor.contrib.django in "
        "INSTALLED_APPS it reads the database schedules too (no scheduler class to pick)"
    ),
    "--heartbeat-interval": "Conveyor's workers renew their leases on their own schedule",
    "--without-heartbeat": "Conveyor's lease heartbeats keep tasks from being redelivered",
    "--autoreload": "restart the worker (e.g. with watchfiles) to load new code",
    "--config": "pass config_source= to Conveyor(...) or call app.config_from_object()",
    "--loader": "Conveyor has no loaders: -A names the app",
    "--pool-restarts": "Conveyor has no pool_restart remote command",
    "--include": "set include= (or imports) on the app",
}
#: Celery commands Conveyor does not have, and what to use.
CELERY_COMMANDS: dict[str, str] = {
    "multi": _DAEMON.replace("daemonize", "start several workers as daemons"),
    "flower": "Conveyor's own dashboard: `conveyor dashboard` (pip install 'conveyor[dashboard]')",
    "call": "send from Python: app.send_task('name', args=[...])",
    "shell": "use `python -i -c 'from proj import app'`",
    "amqp": "manage RabbitMQ with rabbitmqctl; Conveyor declares its own queues",
    "report": "`conveyor --help`; the worker's banner shows its configuration",
    "upgrade": "Conveyor reads Celery's old setting names itself (with a warning)",
    "migrate": "Conveyor cannot read a Celery broker's messages: drain Celery's queues first",
}


def option_hint(name: str) -> str | None:
    """Why Conveyor has no option ``name`` if it is Celery's (``--opt=value`` too)."""
    reason = CELERY_OPTIONS.get(name.partition("=")[0])
    return f"{name.partition('=')[0]} is Celery's: {reason}" if reason else None


class CeleryHints(click.Command):
    """Unknown options that are Celery's name Conveyor's equivalent (a mixin for commands
    and groups)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.NoSuchOption as exc:
            hint = option_hint(exc.option_name)
            if hint is None:
                raise
            raise click.UsageError(f"No such option: {exc.option_name} ({hint})", ctx) from None


class Command(CeleryHints):
    """A command whose unknown options name Conveyor's equivalent of Celery's."""


def command_hint(name: str, known: list[str]) -> str:
    """The end of "No such command" for ``name``: Celery's equivalent, or the closest."""
    if name in CELERY_COMMANDS:
        return f" (`celery {name}`: {CELERY_COMMANDS[name]})"
    close = difflib.get_close_matches(name, known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
