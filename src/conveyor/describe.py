"""Short texts of stored things, as the CLI and the dashboard show them: a message body as a
call, a time, an age. Total: whatever is stored, they return text and never raise."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

from .exceptions import ConveyorError, MalformedMessage
from .message import decode_envelope
from .utils.redaction import redact_arguments, redact_text


def preview(body: bytes, width: int = 60, *, redacted: bool = False) -> str:
    """A message body as ``task(args, key=value)``, cut to ``width`` characters; a body that
    is not a valid envelope shows as ``<reason: first bytes>``. ``redacted``: secrets hidden
    as in logs (``password="[redacted]"``, URL passwords), for pages others may see."""
    try:
        envelope = decode_envelope(body)
        found_args, found_kwargs = envelope.args, envelope.kwargs
        if redacted:
            found_args, found_kwargs = redact_arguments(found_args, found_kwargs)
        args = json.dumps(found_args, default=str)[1:-1]
        kwargs = ", ".join(f"{k}={json.dumps(v, default=str)}" for k, v in found_kwargs.items())
        text = f"{envelope.task}({', '.join(filter(None, [args, kwargs]))})"
    except (ConveyorError, ValueError, TypeError, RecursionError) as exc:
        reason = exc.reason if isinstance(exc, MalformedMessage) else type(exc).__name__
        text = f"<{reason}: {bytes(body or b'')[:width]!r}>"
        text = redact_text(text) if redacted else text
    return text if len(text) <= width else text[: width - 3] + "..."


def when(timestamp: float | None) -> str:
    """``2024-05-01 12:00:00`` (UTC), or ``-``."""
    if not timestamp:
        return "-"
    try:
        return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S")
    except (OverflowError, OSError, ValueError):
        return "-"


def ago(timestamp: float | None) -> str:
    """``12s``, ``5m``, ``3h``, ``2d`` since ``timestamp``, or ``-``."""
    if not timestamp:
        return "-"
    seconds = max(0.0, time.time() - timestamp)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"
