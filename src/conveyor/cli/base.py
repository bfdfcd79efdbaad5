"""What the commands share: the group that turns errors into one line, the app chosen with
``-A``, and option helpers."""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar

import click

from ..app import Conveyor
from ..exceptions import ConveyorError
from ..loading import describe_error, find_app, redact_text
from .celery_cli import CeleryHints, Command, command_hint

F = TypeVar("F", bound=Callable[..., object])


class Group(CeleryHints, click.Group):
    """Turns errors into one line: Conveyor and OS errors, and (with a hint) anything else.
    Unknown commands and options name the closest valid one, or Conveyor's equivalent of
    Celery's."""

    command_class = Command

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        name = args[0] if args else ""
        if name and not name.startswith("-") and self.get_command(ctx, name) is None:
            hint = command_hint(name, self.list_commands(ctx))
            raise click.UsageError(f"No such command {name!r}{hint}.", ctx)
        return super().resolve_command(ctx, args)

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except (ConveyorError, OSError) as exc:
            raise click.ClickException(redact_text(str(exc) or type(exc).__name__)) from None
        except Exception as exc:
            if os.environ.get("CONVEYOR_TRACEBACK"):
                raise
            message = f"{describe_error(exc)} (set CONVEYOR_TRACEBACK=1 for the traceback)"
            raise click.ClickException(redact_text(message)) from None


class LazyGroup(Group):
    """A Group whose commands are imported by name when first needed:
    ``lazy_commands`` maps a command name to ``"module:attribute"``."""

    def __init__(self, *args: Any, lazy_commands: dict[str, str] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.lazy_commands = dict(lazy_commands or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy_commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        target = self.lazy_commands.get(cmd_name)
        if command is None and target is not None:
            module, _, attribute = target.partition(":")
            loaded = getattr(importlib.import_module(module), attribute)
            if not isinstance(loaded, click.Command):
                raise TypeError(f"{target} is not a click command")
            self.add_command(loaded, cmd_name)
            command = loaded
        return command


class State:
    """The context object: the app spec given to ``conveyor -A``, and the app once loaded."""

    def __init__(self, app_spec: str | None, app: Conveyor | None = None) -> None:
        self.app_spec = app_spec
        #: ``app.start()`` / ``app.worker_main()`` give the app itself (and no ``-A``).
        self._app: Conveyor | None = app if app_spec is None else None

    def spec(self, override: str | None) -> str:
        """The app spec: the command's ``-A``, else the group's; a usage error if neither."""
        spec = override or self.app_spec
        if not spec and self._app is not None:
            return self._app.main or "__main__"
        if not spec:
            raise click.UsageError("no app given: pass -A module[:attr] or set CONVEYOR_APP")
        return spec

    def app(self, override: str | None) -> Conveyor:
        """The app named by :meth:`spec`, loaded once."""
        if self._app is None:
            self._app = find_app(self.spec(override))
        return self._app


def app_option(fn: F) -> F:
    """A command's own ``-A``, which overrides the group's."""
    return click.option(
        "-A", "--app", "app_spec", metavar="MODULE[:ATTR]", help="The Conveyor app."
    )(fn)


def split(value: str | None) -> list[str]:
    """The names in a comma-separated option value."""
    return [part.strip() for part in (value or "").split(",") if part.strip()]


def process_options(fn: F) -> F:
    """Celery's ``--pidfile`` and ``-f/--logfile`` for long-running commands."""
    fn = click.option(
        "--pidfile",
        type=click.Path(dir_okay=False, writable=True),
        help="Write the process id here; refuse to start if a live process holds it.",
    )(fn)
    return click.option(
        "-f", "--logfile", type=click.Path(dir_okay=False), help="Append the log here."
    )(fn)


@contextmanager
def held_pidfile(path: str | None) -> Iterator[None]:
    """Hold ``path`` as a pid file while the block runs (nothing without a path): an error if
    a live process holds it, a stale one is replaced, and it is removed at the end."""
    if not path:
        yield
        return
    file = Path(path)
    try:
        other = int(file.read_text().strip() or 0)
    except FileNotFoundError:
        other = 0
    except ValueError:
        raise click.ClickException(f"pid file {path} does not hold a process id") from None
    if other and other != os.getpid() and _alive(other):
        raise click.ClickException(f"already running: process {other} holds pid file {path}")
    if other:
        logging.getLogger("conveyor").warning("removing stale pid file %s (pid %s)", path, other)
        file.unlink(missing_ok=True)
    try:
        fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise click.ClickException(f"pid file {path} appeared while starting: retry") from None
    with os.fdopen(fd, "w") as out:
        out.write(f"{os.getpid()}\n")
    try:
        yield
    finally:
        with suppress(OSError):
            if file.read_text().strip() == str(os.getpid()):
                file.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
