"""Signal receivers of the app (connected by ``ConveyorConfig.ready()``)."""

from __future__ import annotations

from django.db.models.signals import post_delete

from .models import PeriodicTask, ScheduleChange


def _bump_on_delete(
    sender: type[PeriodicTask], instance: PeriodicTask, using: str, **kwargs: object
) -> None:
    ScheduleChange.bump(using)


def connect() -> None:
    post_delete.connect(
        _bump_on_delete, sender=PeriodicTask, dispatch_uid="conveyor.schedule.delete"
    )
