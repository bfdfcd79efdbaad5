"""Which queues tasks are sent to, and whether a live worker consumes them: the worker's
start-up warning and the flags of ``conveyor status``.

A task sent to a queue that no worker consumes waits forever without an error anywhere
(``-Q hipri,celery`` on a Conveyor worker leaves Conveyor's ``default`` queue alone), so both
commands say so.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ..app import Conveyor
from ..exceptions import ConveyorError
from ..registry import WorkerInfo, read_announcements
from ..routing import route

#: Celery's default queue name, which Celery users put in ``-Q``.
CELERY_DEFAULT_QUEUE = "celery"


def live_workers(app: Conveyor) -> dict[str, WorkerInfo]:
    """The workers registered in the broker (they announce themselves every few seconds and
    vanish when they stop), by name; an unreadable entry reads as ``{}``."""
    return {name: info or {} for name, info in read_announcements(app.kv).items()}


def consumed(workers: Mapping[str, WorkerInfo]) -> set[str]:
    """The queues the given workers consume."""
    return {queue for info in workers.values() for queue in (info.get("queues") or [])}


def expected_queues(app: Conveyor) -> dict[str, list[str]]:
    """The queues this app sends tasks to, each with why: the default queue, the routes of
    its registered tasks (``task_routes``, ``queue=``), every queue named in a static
    ``task_routes`` table, the queues declared in ``task_queues``."""
    conf = app.conf
    why: dict[str, list[str]] = {conf.task_default_queue: ["the default queue"]}
    routed: dict[str, list[str]] = {}
    for name, task in sorted(app.tasks.items()):
        if name.startswith("conveyor."):
            continue
        try:
            queue = route(conf, name, task)
        except ConveyorError:
            continue  # a broken route fails the call itself, with its own error
        if queue != conf.task_default_queue:
            routed.setdefault(queue, []).append(name)
    routes = conf.task_routes
    for table in routes if isinstance(routes, list) else [routes]:
        if isinstance(table, Mapping):
            for pattern, target in table.items():
                named = target if isinstance(target, str) else target.get("queue")
                if isinstance(named, str) and named not in routed:
                    routed[named] = [f"task_routes[{pattern!r}]"]
    for queue, names in routed.items():
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        why.setdefault(queue, []).append(f"routed: {shown}")
    for declared in conf.task_queues:
        why.setdefault(declared.name, []).append("declared in task_queues")
    return why


def unconsumed_warning(app: Conveyor, queues: Iterable[str]) -> str | None:
    """What a worker consuming ``queues`` says at start when tasks of the app go to queues
    that neither it nor any live worker consumes; None when every queue is covered."""
    mine = set(queues)
    others = consumed(live_workers(app))
    missing = {
        queue: reasons
        for queue, reasons in expected_queues(app).items()
        if queue not in mine and queue not in others
    }
    if not missing:
        return None
    listed = "; ".join(f"{queue!r} ({', '.join(why)})" for queue, why in missing.items())
    text = (
        f"no live worker consumes {listed}: tasks sent there wait until a worker does "
        f"(add them to -Q, or start another worker with -Q {','.join(missing)})"
    )
    default = app.conf.task_default_queue
    if CELERY_DEFAULT_QUEUE in mine and default != CELERY_DEFAULT_QUEUE and default in missing:
        text += (
            f". Note: {CELERY_DEFAULT_QUEUE!r} is Celery's default queue; Conveyor's is "
            f"{default!r} (task_default_queue)"
        )
    return text
