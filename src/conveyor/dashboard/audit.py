"""The audit log: every action taken in the dashboard, who took it and when, kept in the
broker's key/value store (so every dashboard process of a deployment shows the same log)."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from ..kv import KeyValue

PREFIX = "dashboard:audit:"
#: Entries are kept this long (90 days).
KEEP = 90 * 86400.0


@dataclass(frozen=True)
class AuditEntry:
    at: float
    who: str
    action: str
    target: str
    count: int


class AuditLog:
    """``kv`` gives the key/value store to use (asked at each use: an app may reconnect)."""

    def __init__(self, kv: Callable[[], KeyValue]) -> None:
        self._kv = kv

    def record(self, who: str, action: str, target: str, count: int) -> AuditEntry:
        entry = AuditEntry(time.time(), who, action, target, count)
        key = f"{PREFIX}{time.time_ns():020d}:{secrets.token_hex(4)}"
        self._kv().set_value(key, json.dumps(asdict(entry)).encode(), KEEP)
        return entry

    def entries(self, limit: int = 200) -> list[AuditEntry]:
        """The newest ``limit`` entries, newest first (entries that do not parse are left out)."""
        found = []
        for _key, raw in sorted(self._kv().values(PREFIX).items(), reverse=True)[:limit]:
            try:
                data = json.loads(raw)
                found.append(
                    AuditEntry(
                        float(data["at"]),
                        str(data["who"]),
                        str(data["action"]),
                        str(data["target"]),
                        int(data["count"]),
                    )
                )
            except (ValueError, KeyError, TypeError):
                continue
        return found
