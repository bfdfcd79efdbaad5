"""The ``conveyor.contrib.django`` installed app."""

from __future__ import annotations

from django.apps import AppConfig


class ConveyorConfig(AppConfig):  # type: ignore[misc]
    """Wires Conveyor into Django when the app registry is ready.

    * every Conveyor app created so far gets the transaction hooks (``delay_on_commit``,
      ``apply_async(on_commit=True)``, ``CONVEYOR_TASK_ENQUEUE_ON_COMMIT``); apps created
      later need :func:`conveyor.contrib.django.install`;
    * the task that runs ``django.tasks`` functions is registered;
    * system checks and the schedule change tracking are connected.
    """

    name = "conveyor.contrib.django"
    label = "conveyor"
    verbose_name = "Conveyor"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from conveyor.app import registered_apps

        from . import checks, signals, tasks  # noqa: F401 - registration
        from .transactions import install

        for app in registered_apps():
            install(app)
        signals.connect()
