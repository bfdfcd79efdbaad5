"""The ``conveyor.contrib.django`` installed app."""

from __future__ import annotations

from django.apps import AppConfig

from conveyor._state import registered_apps
from conveyor.app import Conveyor, app_created

from .schedules import install


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
        # deferred until the app registry is ready: checks, django.tasks runners, model signals
        from . import checks, signals, tasks  # noqa: F401

        for app in registered_apps():
            install(app)
        app_created.connect(_install_on_creation)
        signals.connect()


def _install_on_creation(sender: Conveyor, **_: object) -> None:
    install(sender)
