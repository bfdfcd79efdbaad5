"""Output helpers: consoles, JSON and times as the commands print them."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING

import click

from ..describe import ago, when

if TYPE_CHECKING:
    from rich.console import Console


def console() -> Console:
    """Where tables go (stdout)."""
    # Deferred: rich is for the commands that print tables; the worker and beat never load it.
    from rich.console import Console

    return Console(highlight=False, soft_wrap=False)


def echo_banner(title: str, role: str, lines: Sequence[str]) -> None:
    """A start-up banner on stderr: ``title`` in bold (on a terminal), ``role``, then the
    lines as they are. Plain click: the worker forks its children after printing it."""
    click.echo(f"{click.style(title, bold=True)} {role}", err=True)
    for line in lines:
        click.echo(line, err=True)


def print_json(data: object) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


__all__ = ["ago", "console", "echo_banner", "print_json", "when"]
