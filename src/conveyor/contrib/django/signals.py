"""Signal receivers of the app (connected by ``ConveyorConfig.ready()``)."""

from __future__ import annotations

from typing import Any


def _bump_on_delete(sender: Any, instance: Any, using: str, **kwargs: Any) -> None:
    from .models import ScheduleChange

    ScheduleChange.bump(using)


def connect() -> None:
    from django.db.models.signals import post_delete

    from .models import PeriodicTask

    post_delete.connect(
        _bump_on_delete, sender=PeriodicTask, dispatch_uid="conveyor.schedule.delete"
    )
