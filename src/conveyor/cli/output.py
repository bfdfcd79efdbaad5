"""Output helpers: consoles, JSON and times as the commands print them."""

from __future__ import annotations

import json

import click
from rich.console import Console

from ..describe import ago, when


def console() -> Console:
    """Where tables go (stdout)."""
    return Console(highlight=False, soft_wrap=False)


def banner_console() -> Console:
    """Where the worker's and beat's start-up banners go (stderr)."""
    return Console(stderr=True, highlight=False, soft_wrap=True)


def print_json(data: object) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


__all__ = ["ago", "banner_console", "console", "print_json", "when"]
