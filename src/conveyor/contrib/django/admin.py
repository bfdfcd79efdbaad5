"""Admin: task results (read-only, with revoke and retry) and periodic tasks (editable)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.forms import ChoiceField, ModelForm
from django.http import HttpRequest
from django.tasks import task_backends
from django.utils import timezone
from django.utils.html import format_html

from conveyor import states
from conveyor._state import default_app, registered_apps
from conveyor.beat.schedules import InvalidSchedule
from conveyor.message import from_json_value

from .backend import ARUN_TASK, META_PREFIX, RUN_TASK, TaskMeta, resolve_task
from .models import PeriodicTask, TaskResult

if TYPE_CHECKING:
    from conveyor.app import Conveyor

_DJANGO_TASKS = frozenset({RUN_TASK, ARUN_TASK})
_REVOCABLE = (states.PENDING, states.QUEUED, states.RETRY, states.STARTED)
_RETRYABLE = (states.FAILURE, states.REVOKED, states.EXPIRED)


def app_for(namespace: str | None = None) -> Conveyor:
    """The Conveyor app whose ORM results use ``namespace`` (else the default app)."""
    for app in registered_apps():
        if app.result_backend_url.startswith("django:") and app.key_prefix == namespace:
            return app
    return default_app()


def _pretty(value: object) -> str:
    return str(format_html("<pre>{}</pre>", json.dumps(value, indent=2, ensure_ascii=False)))


@admin.register(TaskResult)
class TaskResultAdmin(admin.ModelAdmin):  # type: ignore[misc]
    list_display = [
        "task_id",
        "task",
        "state",
        "worker",
        "queue",
        "retries",
        "created_at",
        "date_done",
    ]
    list_filter = [
        "state",
        "task_name",
        "worker",
        "queue",
        ("created_at", admin.DateFieldListFilter),
        ("date_done", admin.DateFieldListFilter),
    ]
    search_fields = ["task_id", "task_name", "periodic_entry", "worker", "root_id", "group_id"]
    date_hierarchy = "updated_at"
    list_per_page = 50
    actions = ["revoke", "retry"]
    fieldsets = [
        (None, {"fields": ["task_id", "task", "state", "worker", "queue", "retries"]}),
        ("Call", {"fields": ["arguments", "keyword_arguments", "periodic_entry"]}),
        ("Outcome", {"fields": ["outcome", "traceback_text"]}),
        ("Times", {"fields": ["created_at", "started_at", "date_done", "expires_at"]}),
        ("Family", {"fields": ["root_id", "parent_id", "group_id", "children"]}),
    ]
    readonly_fields = [
        "task_id",
        "task",
        "state",
        "worker",
        "queue",
        "retries",
        "arguments",
        "keyword_arguments",
        "periodic_entry",
        "outcome",
        "traceback_text",
        "created_at",
        "started_at",
        "date_done",
        "expires_at",
        "root_id",
        "parent_id",
        "group_id",
        "children",
    ]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: TaskResult | None = None) -> bool:
        return False  # results are written by workers only; actions need the view permission

    @admin.display(description="task", ordering="task_name")  # type: ignore[untyped-decorator]
    def task(self, obj: TaskResult) -> str:
        if obj.task_name in _DJANGO_TASKS and obj.args:
            return f"{obj.args[0]} (django.tasks)"
        return str(obj.task_name or "")

    @admin.display(description="args")  # type: ignore[untyped-decorator]
    def arguments(self, obj: TaskResult) -> str:
        return _pretty(obj.args)

    @admin.display(description="kwargs")  # type: ignore[untyped-decorator]
    def keyword_arguments(self, obj: TaskResult) -> str:
        return _pretty(obj.kwargs)

    @admin.display(description="result")  # type: ignore[untyped-decorator]
    def outcome(self, obj: TaskResult) -> str:
        return _pretty(obj.result)

    @admin.display(description="traceback")  # type: ignore[untyped-decorator]
    def traceback_text(self, obj: TaskResult) -> str:
        return str(format_html("<pre>{}</pre>", obj.traceback or ""))

    @admin.action(description="Revoke selected tasks (running ones are terminated)")  # type: ignore[untyped-decorator]
    def revoke(self, request: HttpRequest, queryset: QuerySet[TaskResult]) -> None:
        pending = list(queryset.filter(state__in=_REVOCABLE))
        if not pending:
            self.message_user(
                request, "None of the selected tasks can be revoked.", messages.WARNING
            )
            return
        for namespace in {row.namespace for row in pending}:
            rows = [row for row in pending if row.namespace == namespace]
            app = app_for(namespace)
            running = [row.task_id for row in rows if row.state == states.STARTED]
            waiting = [row.task_id for row in rows if row.state != states.STARTED]
            if waiting:
                app.revoke(waiting)
            if running:
                app.revoke(running, terminate=True)
        # Shown at once; the worker records REVOKED again when it drops the message.
        TaskResult.objects.filter(
            pk__in=[row.pk for row in pending],
            state__in=(states.PENDING, states.QUEUED, states.RETRY),
        ).update(state=states.REVOKED, date_done=timezone.now())
        skipped = queryset.count() - len(pending)
        note = f"; {skipped} already finished were left alone" if skipped else ""
        self.message_user(request, f"Revoked {len(pending)} task(s){note}.", messages.SUCCESS)

    @admin.action(description="Retry selected failed tasks (send again with the same arguments)")  # type: ignore[untyped-decorator]
    def retry(self, request: HttpRequest, queryset: QuerySet[TaskResult]) -> None:
        sent: list[str] = []
        skipped: list[str] = []
        for row in queryset:
            if row.state not in _RETRYABLE or not row.task_name:
                skipped.append(row.task_id)
                continue
            new_id = _resend(row)
            if new_id is None:
                skipped.append(row.task_id)
            else:
                sent.append(new_id)
        if sent:
            self.message_user(
                request, f"Sent {len(sent)} task(s) again: {', '.join(sent)}", messages.SUCCESS
            )
        if skipped:
            self.message_user(
                request,
                f"Skipped {len(skipped)} task(s) that did not fail or whose arguments are not "
                "stored (set CONVEYOR_RESULT_EXTENDED = True to keep them).",
                messages.WARNING,
            )


def _resend(row: TaskResult) -> str | None:
    """Send the task of ``row`` again with the same arguments; return the new id."""
    app = app_for(row.namespace)
    if row.task_name in _DJANGO_TASKS:
        raw = app.results.kv.get_value(META_PREFIX + row.task_id)
        if raw is None:
            return None
        meta: TaskMeta = json.loads(raw)
        task = resolve_task(meta["path"], app).using(backend=meta["backend"])
        task_backends[meta["backend"]]  # an unknown alias raises here, not in the worker
        return str(task.enqueue(*meta["args"], **meta["kwargs"]).id)
    if row.args is None:
        return None
    args = from_json_value(row.args)
    kwargs = from_json_value(row.kwargs or {})
    options = {"queue": row.queue} if row.queue else {}
    return app.send_task(row.task_name, args, kwargs, **options).id


# -- periodic tasks --------------------------------------------------------------------------
def registered_task_names() -> list[str]:
    """Names of the tasks the project's apps know (Conveyor's internal ones excepted)."""
    names: set[str] = set()
    for app in registered_apps():
        app.finalize()  # imports the tasks modules, as a worker does
        names.update(name for name in app.tasks if not name.startswith("conveyor."))
    return sorted(names)


class PeriodicTaskForm(ModelForm):  # type: ignore[misc]
    task = ChoiceField(choices=(), help_text="A task registered with the Conveyor app.")

    class Meta:
        model = PeriodicTask
        fields = "__all__"

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        names = registered_task_names()
        current = self.instance.task if self.instance and self.instance.pk else None
        if current and current not in names:
            names.append(current)  # keep an entry whose task is gone editable
        self.fields["task"].choices = [("", "---------"), *((n, n) for n in names)]


@admin.register(PeriodicTask)
class PeriodicTaskAdmin(admin.ModelAdmin):  # type: ignore[misc]
    form = PeriodicTaskForm
    list_display = [
        "name",
        "task",
        "enabled",
        "schedule",
        "next_run",
        "last_run_at",
        "total_run_count",
        "queue",
    ]
    list_filter = ["enabled", "kind", "queue", "catch_up"]
    search_fields = ["name", "task", "description"]
    actions = ["enable", "disable", "run_now"]
    readonly_fields = ["last_run_at", "total_run_count", "created_at", "updated_at"]
    fieldsets = [
        (None, {"fields": ["name", "task", "description", "enabled"]}),
        (
            "Schedule",
            {
                "fields": [
                    "kind",
                    ("minute", "hour", "day_of_week", "day_of_month", "month_of_year"),
                    "interval",
                    "clocked_at",
                    "timezone",
                    "catch_up",
                ],
                "description": "Crontab fields use Celery's syntax (*/15, 1-5, mon-fri...).",
            },
        ),
        ("Arguments", {"fields": ["args", "kwargs"]}),
        ("Delivery", {"fields": ["queue", "priority", "expire_seconds"]}),
        ("Runs", {"fields": ["last_run_at", "total_run_count", "created_at", "updated_at"]}),
    ]

    @admin.display(description="schedule")  # type: ignore[untyped-decorator]
    def schedule(self, obj: PeriodicTask) -> str:
        return obj.describe()

    @admin.display(description="next run")  # type: ignore[untyped-decorator]
    def next_run(self, obj: PeriodicTask) -> datetime | str | None:
        if not obj.enabled:
            return "disabled"
        try:
            schedule = obj.get_schedule()
        except InvalidSchedule:
            return None
        zone = ZoneInfo(obj.timezone or str(app_for().conf.timezone))
        upcoming = schedule.next_after(datetime.now(UTC).astimezone(zone))
        return upcoming

    @admin.action(description="Enable selected periodic tasks")  # type: ignore[untyped-decorator]
    def enable(self, request: HttpRequest, queryset: QuerySet[PeriodicTask]) -> None:
        count = queryset.update(enabled=True)
        self.message_user(request, f"Enabled {count} periodic task(s).", messages.SUCCESS)

    @admin.action(description="Disable selected periodic tasks")  # type: ignore[untyped-decorator]
    def disable(self, request: HttpRequest, queryset: QuerySet[PeriodicTask]) -> None:
        count = queryset.update(enabled=False)
        self.message_user(request, f"Disabled {count} periodic task(s).", messages.SUCCESS)

    @admin.action(description="Run selected periodic tasks now")  # type: ignore[untyped-decorator]
    def run_now(self, request: HttpRequest, queryset: QuerySet[PeriodicTask]) -> None:
        sent = [run_now(row) for row in queryset]
        self.message_user(request, f"Sent {len(sent)} task(s): {', '.join(sent)}", messages.SUCCESS)


def run_now(row: PeriodicTask) -> str:
    """Send ``row``'s task at once (outside its schedule); return the task id."""
    options = row.call_options()
    expires = options.get("expires")
    if isinstance(expires, timedelta):
        options["expires"] = expires.total_seconds()
    result = app_for().send_call(
        row.task,
        list(row.args or []),
        dict(row.kwargs or {}),
        {**options, "headers": {"periodic_entry": row.name, "manual": True}},
    )
    PeriodicTask.objects.filter(pk=row.pk).update(
        last_run_at=timezone.now(), total_run_count=row.total_run_count + 1
    )
    return result.id
