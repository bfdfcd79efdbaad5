"""The ``conveyor.contrib.django`` installed app."""

from __future__ import annotations

from typing import Any

from django.apps import AppConfig


class ConveyorConfig(AppConfig):  # type: ignore[misc]
    """Wires Conveyor into Django when the app registry is ready.

    * every Conveyor app, created before or after, gets the transaction hooks
      (``delay_on_commit``, ``apply_async(on_commit=True)``,
      ``CONVEYOR_TASK_ENQUEUE_ON_COMMIT``) and beat reads the database schedules;
    * the task that runs ``django.tasks`` functions is registered;
    * system checks and the schedule change tracking are connected.
    """

    name = "conveyor.contrib.django"
    label = "conveyor"
    verbose_name = "Conveyor"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from conveyor.app import app_created, registered_apps

        from . import checks, signals, tasks  # noqa: F401 - registration
        from .transactions import install

        for app in registered_apps():
            install(app)
        app_created.connect(_install_on_creation)
        signals.connect()


def _install_on_creation(sender: Any, **_: Any) -> None:
    from .transactions import install

    install(sender)
