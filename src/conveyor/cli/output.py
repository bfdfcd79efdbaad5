"""Output helpers: consoles, JSON and times as the commands print them."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import click
from rich.console import Console


def console() -> Console:
    """Where tables go (stdout)."""
    return Console(highlight=False, soft_wrap=False)


def banner_console() -> Console:
    """Where the worker's and beat's start-up banners go (stderr)."""
    return Console(stderr=True, highlight=False, soft_wrap=True)


def print_json(data: object) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def when(timestamp: float | None) -> str:
    """``2024-05-01 12:00:00`` (UTC), or ``-``."""
    if not timestamp:
        return "-"
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S")


def ago(timestamp: float | None) -> str:
    """``12s``, ``5m``, ``3h``, ``2d`` since ``timestamp``."""
    if not timestamp:
        return "-"
    seconds = max(0.0, time.time() - timestamp)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"
