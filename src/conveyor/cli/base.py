"""What the commands share: the group that turns errors into one line, the app chosen with
``-A``, and option helpers."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

import click

from ..app import Conveyor
from ..exceptions import ConveyorError
from ..loading import describe_error, find_app, redact_text

F = TypeVar("F", bound=Callable[..., object])


class Group(click.Group):
    """Turns errors into one line: Conveyor and OS errors, and (with a hint) anything else."""

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
