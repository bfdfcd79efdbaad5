"""ORM models: task results (``result_backend = "django://"``) and database schedules."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator
from django.db import models, router, transaction
from django.db.models import F
from django.utils.timezone import now

from conveyor import states
from conveyor.beat.schedules import InvalidSchedule, Schedule, clocked, crontab, every
from conveyor.exceptions import SerializationError
from conveyor.message import encode_arguments

STATE_CHOICES = [(state, state) for state in sorted(states.ALL_STATES)]


# -- results ---------------------------------------------------------------------------------
class TaskResult(models.Model):  # type: ignore[misc]
    """What is known about one task (one row per task id and store namespace)."""

    namespace = models.CharField(max_length=100, default="conveyor", editable=False)
    task_id = models.CharField("task id", max_length=255)
    task_name = models.CharField("task", max_length=255, null=True, blank=True)
    state = models.CharField(max_length=32, choices=STATE_CHOICES, default=states.QUEUED)
    args = models.JSONField(null=True, blank=True)
    kwargs = models.JSONField(null=True, blank=True)
    result = models.JSONField(null=True, blank=True)
    traceback = models.TextField(null=True, blank=True)
    worker = models.CharField(max_length=255, null=True, blank=True)
    retries = models.PositiveIntegerField(default=0)
    queue = models.CharField(max_length=255, null=True, blank=True)
    parent_id = models.CharField(max_length=255, null=True, blank=True)
    root_id = models.CharField(max_length=255, null=True, blank=True)
    group_id = models.CharField(max_length=255, null=True, blank=True)
    children = models.JSONField(null=True, blank=True)
    periodic_entry = models.CharField("periodic task", max_length=255, null=True, blank=True)
    created_at = models.DateTimeField("sent", null=True, blank=True)
    started_at = models.DateTimeField("started", null=True, blank=True)
    date_done = models.DateTimeField("finished", null=True, blank=True)
    updated_at = models.DateTimeField("updated", default=now)
    expires_at = models.DateTimeField("expires", null=True, blank=True)

    class Meta:
        verbose_name = "task result"
        verbose_name_plural = "task results"
        ordering = ["-updated_at", "-id"]
        permissions = [
            ("view_dashboard", "Can see the Conveyor dashboard"),
            ("operate_dashboard", "Can take actions in the Conveyor dashboard"),
        ]
        constraints = [
            models.UniqueConstraint(fields=["namespace", "task_id"], name="conveyor_result_task_id")
        ]
        indexes = [
            models.Index(fields=["-updated_at"], name="conveyor_result_updated"),
            models.Index(fields=["state", "-updated_at"], name="conveyor_result_state"),
            models.Index(fields=["task_name", "-updated_at"], name="conveyor_result_name"),
            models.Index(fields=["worker"], name="conveyor_result_worker"),
            models.Index(fields=["periodic_entry"], name="conveyor_result_periodic"),
            models.Index(fields=["group_id"], name="conveyor_result_group"),
            models.Index(fields=["expires_at"], name="conveyor_result_expires"),
        ]

    def __str__(self) -> str:
        return f"{self.task_name or '?'}[{self.task_id}] {self.state}"

    @property
    def ready(self) -> bool:
        return self.state in states.READY_STATES


class ResultValue(models.Model):  # type: ignore[misc]
    """A small value of the canvas (group and chord state) or a claim."""

    namespace = models.CharField(max_length=100, default="conveyor")
    key = models.CharField(max_length=255)
    value = models.BinaryField()
    expires_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "result value"
        constraints = [
            models.UniqueConstraint(fields=["namespace", "key"], name="conveyor_value_key")
        ]
        indexes = [models.Index(fields=["expires_at"], name="conveyor_value_expires")]


class ResultSet(models.Model):  # type: ignore[misc]
    """A join set (chord counters); its row is locked while a member is added."""

    namespace = models.CharField(max_length=100, default="conveyor")
    key = models.CharField(max_length=255)
    expires_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "result set"
        constraints = [
            models.UniqueConstraint(fields=["namespace", "key"], name="conveyor_set_key")
        ]
        indexes = [models.Index(fields=["expires_at"], name="conveyor_set_expires")]


class ResultSetMember(models.Model):  # type: ignore[misc]
    set = models.ForeignKey(ResultSet, on_delete=models.CASCADE, related_name="members")
    member = models.CharField(max_length=255)

    class Meta:
        verbose_name = "result set member"
        constraints = [
            models.UniqueConstraint(fields=["set", "member"], name="conveyor_set_member")
        ]


# -- schedules -------------------------------------------------------------------------------
#: Fields beat writes after each run; writing only these is not a schedule change.
RUN_FIELDS = frozenset({"last_run_at", "total_run_count"})


class ScheduleChange(models.Model):  # type: ignore[misc]
    """One row whose ``version`` grows with every change to the periodic tasks. Beat polls it
    (a single indexed read) to pick changes up, including bulk ``update()`` and deletes."""

    version = models.BigIntegerField(default=0)
    changed_at = models.DateTimeField(default=now)

    class Meta:
        verbose_name = "schedule change"

    @classmethod
    def bump(cls, using: str | None = None) -> None:
        manager = cls.objects.db_manager(using)
        fields = {"version": F("version") + 1, "changed_at": now()}
        if not manager.filter(pk=1).update(**fields):
            manager.get_or_create(pk=1)
            manager.filter(pk=1).update(**fields)

    @classmethod
    def current(cls, using: str | None = None) -> int:
        row = cls.objects.db_manager(using).filter(pk=1).values_list("version", flat=True)
        return int(row.first() or 0)


class PeriodicTaskQuerySet(models.QuerySet):  # type: ignore[misc]
    """Bulk writes count as schedule changes, so beat sees them too."""

    def update(self, **kwargs: object) -> int:
        if set(kwargs) <= RUN_FIELDS:
            return int(super().update(**kwargs))
        kwargs.setdefault("updated_at", now())
        with transaction.atomic(using=self.db):
            count = int(super().update(**kwargs))
            ScheduleChange.bump(self.db)
        return count

    def bulk_create(
        self, objs: Iterable[PeriodicTask], *args: object, **kwargs: object
    ) -> list[PeriodicTask]:
        with transaction.atomic(using=self.db):
            created: list[PeriodicTask] = super().bulk_create(objs, *args, **kwargs)
            ScheduleChange.bump(self.db)
        return created

    def bulk_update(
        self, objs: Iterable[PeriodicTask], fields: Iterable[str], *args: object, **kwargs: object
    ) -> int:
        if set(fields) <= RUN_FIELDS:
            return int(super().bulk_update(objs, fields, *args, **kwargs))
        with transaction.atomic(using=self.db):
            count = int(super().bulk_update(objs, fields, *args, **kwargs))
            ScheduleChange.bump(self.db)
        return count


class PeriodicTask(models.Model):  # type: ignore[misc]
    """A periodic task kept in the database and editable in the admin.

    ``kind`` picks the schedule: ``crontab`` (the five crontab fields, Celery syntax),
    ``interval`` (every ``interval``, on a grid from the Unix epoch) or ``clocked`` (once, at
    ``clocked_at``). Schedules are evaluated in ``timezone`` (default: ``CONVEYOR_TIMEZONE``).
    """

    CRONTAB = "crontab"
    INTERVAL = "interval"
    CLOCKED = "clocked"
    KIND_CHOICES = [(CRONTAB, "crontab"), (INTERVAL, "interval"), (CLOCKED, "once (clocked)")]
    CATCH_UP_CHOICES = [
        ("latest", "send the latest missed run"),
        ("all", "send every missed run"),
        ("skip", "send no missed run"),
    ]

    name = models.CharField(max_length=200, unique=True, help_text="Unique name of the entry.")
    task = models.CharField(max_length=255, help_text="The registered task to send.")
    description = models.TextField(blank=True)
    enabled = models.BooleanField(default=True)
    kind = models.CharField("schedule", max_length=16, choices=KIND_CHOICES, default=CRONTAB)
    minute = models.CharField(max_length=240, default="*")
    hour = models.CharField(max_length=120, default="*")
    day_of_week = models.CharField(max_length=64, default="*")
    day_of_month = models.CharField(max_length=124, default="*")
    month_of_year = models.CharField(max_length=64, default="*")
    interval = models.DurationField(
        null=True, blank=True, help_text="For interval schedules, e.g. 00:05:00 or 300 (s)."
    )
    clocked_at = models.DateTimeField("run at", null=True, blank=True)
    timezone = models.CharField(
        max_length=64, blank=True, help_text="IANA time zone; empty: CONVEYOR_TIMEZONE."
    )
    args = models.JSONField(default=list, blank=True, help_text='A JSON list, e.g. [1, "a"].')
    kwargs = models.JSONField(default=dict, blank=True, help_text='A JSON object: {"x": 1}.')
    queue = models.CharField(max_length=255, blank=True, help_text="Empty: the task's route.")
    priority = models.PositiveSmallIntegerField(
        null=True, blank=True, validators=[MaxValueValidator(9)], help_text="0-9, 9 first."
    )
    expire_seconds = models.PositiveIntegerField(
        null=True, blank=True, help_text="Drop a run not started this long after it was due."
    )
    catch_up = models.CharField(max_length=8, choices=CATCH_UP_CHOICES, default="latest")
    last_run_at = models.DateTimeField(null=True, blank=True, editable=False)
    total_run_count = models.PositiveIntegerField(default=0, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(default=now, editable=False)

    objects = PeriodicTaskQuerySet.as_manager()

    class Meta:
        verbose_name = "periodic task"
        ordering = ["name"]
        indexes = [models.Index(fields=["-updated_at"], name="conveyor_periodic_updated")]

    def __str__(self) -> str:
        return str(self.name)

    def save(
        self,
        *args: object,
        using: str | None = None,
        update_fields: Iterable[str] | None = None,
        **kwargs: object,
    ) -> None:
        if update_fields is not None and set(update_fields) <= RUN_FIELDS:
            super().save(*args, using=using, update_fields=update_fields, **kwargs)
            return
        self.updated_at = now()
        if update_fields is not None:
            update_fields = {*update_fields, "updated_at"}
        alias = using or router.db_for_write(type(self), instance=self)
        with transaction.atomic(using=alias):
            super().save(*args, using=using, update_fields=update_fields, **kwargs)
            ScheduleChange.bump(alias)

    # -- schedule ------------------------------------------------------------------------------
    def get_schedule(self) -> Schedule:
        """The schedule object; raises InvalidSchedule when the fields do not make one."""
        if self.kind == self.CRONTAB:
            return crontab(
                minute=self.minute,
                hour=self.hour,
                day_of_week=self.day_of_week,
                day_of_month=self.day_of_month,
                month_of_year=self.month_of_year,
            )
        if self.kind == self.INTERVAL:
            if self.interval is None:
                raise InvalidSchedule("an interval schedule needs an interval")
            return every(self.interval)
        if self.kind == self.CLOCKED:
            if self.clocked_at is None:
                raise InvalidSchedule("a clocked schedule needs a time to run at")
            return clocked(self.clocked_at)
        raise InvalidSchedule(f"unknown schedule kind {self.kind!r}")

    def describe(self) -> str:
        try:
            return self.get_schedule().describe()
        except InvalidSchedule as exc:
            return f"invalid: {exc}"

    def call_options(self) -> dict[str, object]:
        """The ``apply_async`` options of each run."""
        options: dict[str, object] = {}
        if self.queue:
            options["queue"] = self.queue
        if self.priority is not None:
            options["priority"] = self.priority
        if self.expire_seconds:
            options["expires"] = timedelta(seconds=self.expire_seconds)
        return options

    def to_entry(self) -> dict[str, object]:
        """This row as a ``beat_schedule`` entry."""
        entry: dict[str, object] = {
            "task": self.task,
            "schedule": self.get_schedule(),
            "args": list(self.args or []),
            "kwargs": dict(self.kwargs or {}),
            "options": self.call_options(),
            "catch_up": self.catch_up,
            "enabled": self.enabled,
        }
        if self.timezone:
            entry["tz"] = self.timezone
        return entry

    def clean(self) -> None:
        errors: dict[str, str] = {}
        if not isinstance(self.args, list):
            errors["args"] = "Enter a JSON list, e.g. [1, 2]."
        if not isinstance(self.kwargs, dict):
            errors["kwargs"] = 'Enter a JSON object, e.g. {"x": 1}.'
        if self.timezone:
            try:
                ZoneInfo(self.timezone)
            except (ZoneInfoNotFoundError, ValueError):
                errors["timezone"] = f"Unknown time zone {self.timezone!r}."
        if self.kind == self.INTERVAL and (
            self.interval is None or self.interval.total_seconds() <= 0
        ):
            errors["interval"] = "Enter a positive interval."
        if self.kind == self.CLOCKED and self.clocked_at is None:
            errors["clocked_at"] = "Enter when to run."
        if not errors:
            try:
                self.get_schedule()
            except InvalidSchedule as exc:
                field = _crontab_field(str(exc)) if self.kind == self.CRONTAB else None
                errors[field or "kind"] = str(exc)
        if not errors:
            try:
                encode_arguments(self.task, self.args, self.kwargs)
            except SerializationError as exc:
                errors["args"] = str(exc)
        if errors:
            raise ValidationError(errors)


def _crontab_field(message: str) -> str | None:
    for field in ("day_of_month", "day_of_week", "month_of_year", "minute", "hour"):
        if field in message:
            return field
    return None
