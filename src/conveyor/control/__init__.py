"""Inspect and control running workers, with Celery's names and shapes.

``app.control`` (:class:`Control`) sends commands (``revoke``, ``rate_limit``, ``pool_grow``,
``shutdown``, ...) and ``app.control.inspect()`` (:class:`Inspect`) asks what workers do
(``active``, ``stats``, ...). Requests and replies travel in the broker's streams (see
:mod:`.protocol`); workers obey them in :mod:`conveyor.worker.control`. Queue pause is durable
(kept in the broker's ``kv``): see :meth:`Control.pause_queue`. Docs: ``docs/control.md``.
"""

from __future__ import annotations

from .client import PAUSED, Control, Inspect
from .protocol import COMMANDS, Command, ControlError, Request

__all__ = ["COMMANDS", "PAUSED", "Command", "Control", "ControlError", "Inspect", "Request"]
