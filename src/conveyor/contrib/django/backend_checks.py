"""The system checks of one ``django.tasks`` backend (``ConveyorBackend.check()``, which
Django calls from its task checks). Kept apart from :mod:`.checks`, whose import registers
the project-wide checks."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.core import checks

if TYPE_CHECKING:
    from conveyor.app import Conveyor

    from .backend import ConveyorBackend


def check_backend(backend: ConveyorBackend) -> list[checks.CheckMessage]:
    """Checks of one ``django.tasks`` backend (called by Django's task checks)."""
    try:
        app = backend.app
    except Exception as exc:
        return [
            checks.Error(
                f"task backend {backend.alias!r} has no Conveyor app: {exc}",
                hint="Create the app in proj/conveyor.py and import it in proj/__init__.py, "
                "or set OPTIONS['APP'] to its dotted path.",
                id="conveyor.E020",
            )
        ]
    if not backend.queues:
        return []
    known = set(backend.queues) | {str(app.conf.task_default_queue)}
    messages: list[checks.CheckMessage] = []
    for where, queue in _configured_queues(app):
        if queue not in known:
            messages.append(
                checks.Warning(
                    f"{where} sends to queue {queue!r}, which is not in "
                    f"TASKS[{backend.alias!r}]['QUEUES']",
                    hint="`manage.py conveyor_worker` consumes the QUEUES of the task backends "
                    "by default: add the queue there or start a worker with -Q.",
                    id="conveyor.W021",
                )
            )
    return messages


def _configured_queues(app: Conveyor) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    routes = app.conf.task_routes
    for table in routes if isinstance(routes, list) else [routes]:
        if isinstance(table, dict):
            for pattern, target in table.items():
                queue = target if isinstance(target, str) else (target or {}).get("queue")
                if isinstance(queue, str):
                    found.append((f"CONVEYOR_TASK_ROUTES[{pattern!r}]", queue))
    for name, entry in dict(app.conf.beat_schedule).items():
        queue = (entry.get("options") or {}).get("queue") if isinstance(entry, dict) else None
        if isinstance(queue, str):
            found.append((f"CONVEYOR_BEAT_SCHEDULE[{name!r}]", queue))
    return found
