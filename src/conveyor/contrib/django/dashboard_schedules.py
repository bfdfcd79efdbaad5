"""The database's periodic tasks on the dashboard's Periodic page (the Django mount): listed
beside the code's entries, switched on and off in their row, edited in the admin."""

from __future__ import annotations

from collections.abc import Mapping

from django.urls import NoReverseMatch, reverse

from conveyor.beat.schedules import InvalidSchedule


class DatabaseSchedules:
    """:class:`conveyor.dashboard.schedules.ScheduleSource` of ``PeriodicTask`` rows."""

    def __init__(self, using: str | None = None) -> None:
        self.using = using

    def entries(self) -> Mapping[str, object]:
        from .models import PeriodicTask  # deferred: needs Django's app registry

        found: dict[str, object] = {}
        for row in PeriodicTask.objects.db_manager(self.using).all():
            try:
                found[row.name] = row.to_entry()
            except (InvalidSchedule, ValueError, TypeError) as exc:
                found[row.name] = exc
        return found

    def edit_url(self, name: str) -> str | None:
        from .models import PeriodicTask

        row = PeriodicTask.objects.db_manager(self.using).filter(name=name).only("pk").first()
        if row is None:
            return None
        try:
            return str(reverse("admin:conveyor_periodictask_change", args=[row.pk]))
        except NoReverseMatch:  # the admin is not in this project's URLs
            return None

    def set_enabled(self, name: str, enabled: bool) -> bool:
        from .models import PeriodicTask

        rows = PeriodicTask.objects.db_manager(self.using).filter(name=name)
        if not rows.exists():
            return False
        # Through save(), so ScheduleChange is bumped and every beat reloads.
        for row in rows:
            if row.enabled != enabled:
                row.enabled = enabled
                row.save(update_fields=["enabled", "updated_at"])
                return True
        return False
