"""Periodic tasks from the database, fed to beat.

:class:`DatabaseSchedule` turns the enabled and disabled rows of
:class:`~conveyor.contrib.django.models.PeriodicTask` into ``beat_schedule`` entries (merged
with ``CONVEYOR_BEAT_SCHEDULE``) and notices changes through one cheap query: the
:class:`~conveyor.contrib.django.models.ScheduleChange` counter (bumped by ``save()``,
``delete()``, queryset ``update()``, ``bulk_create()`` and ``bulk_update()``), the row count
and the newest ``updated_at`` (which also catch most raw SQL edits).

:class:`DjangoBeat` is :class:`conveyor.beat.scheduler.Beat` reading that source every
``poll_interval`` seconds. Exactly-once is untouched: entries only say *what* is due; every
run is still claimed in the broker before it is sent.

:func:`run_beat` runs one in a process prepared by :func:`setup_worker`, which installs the
Django hooks (:func:`install`) - among them :func:`run_beat` itself as the app's beat runner.
They live together here because each refers to the other.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from datetime import datetime
from typing import TYPE_CHECKING, Unpack

import django
import django.apps
from django.db.models import Count, F, Max, Value
from django.db.models.functions import Coalesce, Greatest

from conveyor._state import registered_apps
from conveyor.beat.scheduler import Beat, BeatOptions, BeatRunOptions, Entry
from conveyor.beat.scheduler import run_beat as run_settings_schedule
from conveyor.beat.schedules import InvalidSchedule

from .backend import django_task_paths
from .connections import close_idle_connections, close_old_connections
from .transactions import commit_hook, in_transaction, transaction_connection

if TYPE_CHECKING:
    from conveyor.app import Conveyor

logger = logging.getLogger("conveyor.beat")


class DatabaseSchedule:
    """The beat entries of the settings and of the database."""

    def __init__(self, app: Conveyor, *, using: str | None = None) -> None:
        self.app = app
        self.using = using
        self._seen: tuple[object, ...] | None = None
        self._reported: dict[str, str] = {}
        #: Names of the entries that come from the database.
        self.names: set[str] = set()

    def fingerprint(self) -> tuple[object, ...]:
        """Changes whenever a periodic task is created, edited or deleted."""
        from .models import PeriodicTask, ScheduleChange  # deferred: needs Django's app registry

        totals = PeriodicTask.objects.db_manager(self.using).aggregate(
            count=Count("id"), newest=Max("updated_at")
        )
        return (ScheduleChange.current(self.using), totals["count"], totals["newest"])

    def changed(self) -> bool:
        """True the first time and after every change since the previous call."""
        current = self.fingerprint()
        changed, self._seen = current != self._seen, current
        return changed

    def entries(self) -> dict[str, object]:
        """``CONVEYOR_BEAT_SCHEDULE`` plus the database's entries (which win on a name
        clash). Invalid rows are logged once and left out, so one bad row cannot stop the
        others from being updated."""
        from .models import PeriodicTask  # deferred until Django's app registry is ready

        entries: dict[str, object] = dict(self.app.conf.beat_schedule)
        names: set[str] = set()
        for row in PeriodicTask.objects.db_manager(self.using).all():
            try:
                spec = row.to_entry()
                Entry.from_config(row.name, spec)
            except InvalidSchedule as exc:
                if self._reported.get(row.name) != str(exc):
                    self._reported[row.name] = str(exc)
                    logger.error("periodic task %r is invalid, skipped: %s", row.name, exc)
                continue
            self._reported.pop(row.name, None)
            if row.name in entries and row.name not in self.names:
                logger.warning(
                    "periodic task %r in the database replaces the entry of the same name "
                    "in CONVEYOR_BEAT_SCHEDULE",
                    row.name,
                )
            entries[row.name] = spec
            names.add(row.name)
        self.names = names
        return entries

    def record_run(self, name: str, instant: datetime) -> None:
        """Count a run of ``name`` due at ``instant`` (sent once, by one beat)."""
        from .models import PeriodicTask  # deferred until Django's app registry is ready
        from .results import to_datetime  # deferred likewise: it imports the models

        when = to_datetime(instant.timestamp())
        rows = PeriodicTask.objects.db_manager(self.using).filter(name=name)
        rows.update(
            total_run_count=F("total_run_count") + 1,
            last_run_at=Greatest(Coalesce("last_run_at", Value(when)), Value(when)),
        )
        # A one-off task has nothing left to do: show it as disabled.
        rows.filter(kind="clocked", enabled=True).update(enabled=False)


class DjangoBeat(Beat):
    """Beat with entries from the settings and the database (polled every
    ``poll_interval`` seconds), recording ``last_run_at`` and ``total_run_count``."""

    def __init__(
        self,
        app: Conveyor,
        *,
        poll_interval: float = 2.0,
        using: str | None = None,
        **options: Unpack[BeatOptions],
    ) -> None:
        self.source = DatabaseSchedule(app, using=using)
        self.poll_interval = poll_interval
        self._next_poll = 0.0
        super().__init__(app, **options)
        self.refresh()

    def refresh(self) -> bool:
        """Reload the entries if the database changed; True if it did."""
        self._next_poll = time.monotonic() + self.poll_interval
        close_old_connections()
        try:
            if not self.source.changed():
                return False
            entries = self.source.entries()
        except Exception:
            logger.exception("%s: cannot read periodic tasks; keeping the current ones", self.name)
            self.source._seen = None  # try again at the next poll
            return False
        self.set_entries(entries)
        return True

    def run(self, stop: threading.Event) -> None:
        try:
            super().run(stop)
        finally:
            close_idle_connections()  # this thread's, which the beat used for the schedule

    def tick(self) -> float:
        if time.monotonic() >= self._next_poll:
            self.refresh()
        delay = super().tick()
        return max(0.0, min(delay, self._next_poll - time.monotonic()))

    def on_sent(self, entry: Entry, instant: datetime, task_id: str) -> None:
        if entry.name in self.source.names:
            self.source.record_run(entry.name, instant)


def run_beat(
    app: Conveyor,
    stop: threading.Event | None = None,
    *,
    name: str | None = None,
    max_interval: float = 5.0,
    poll_interval: float = 2.0,
) -> None:
    """Run a :class:`DjangoBeat` until ``stop`` is set (same signature as
    :func:`conveyor.beat.scheduler.run_beat`). Without ``stop``, SIGINT and SIGTERM stop it
    (when called from the main thread)."""
    setup_worker(app)
    if stop is None:
        stop = threading.Event()
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                signal.signal(signum, lambda *_: stop.set())
    beat = DjangoBeat(app, name=name, max_interval=max_interval, poll_interval=poll_interval)
    beat.run(stop)


_fork_hook_registered = False


def install(app: Conveyor) -> Conveyor:
    """Give ``app`` Django's transaction hooks (done for every app by the installed app's
    ``ready()``; call it for apps created later). Returns ``app``."""
    app.commit_hook = commit_hook
    app.in_transaction = in_transaction
    app.transaction_connection = transaction_connection
    # Schedules from the database as well as beat_schedule - if the models can be used:
    # without conveyor.contrib.django in INSTALLED_APPS they cannot be imported.
    apps = django.apps.apps
    installed = not apps.apps_ready or apps.is_installed("conveyor.contrib.django")
    app.beat_runner = run_beat if installed else run_settings_beat
    if django_task_paths not in app.task_listers:
        app.task_listers.append(django_task_paths)  # the worker banner lists them
    return app


def run_settings_beat(
    app: Conveyor, stop: threading.Event | None = None, **options: Unpack[BeatRunOptions]
) -> None:
    """Beat for a Django project without ``conveyor.contrib.django`` in ``INSTALLED_APPS``:
    the ``beat_schedule`` entries only, said once at start."""
    logger.warning(
        "conveyor.contrib.django is not in INSTALLED_APPS: beat sends the "
        "CONVEYOR_BEAT_SCHEDULE entries only (add it to INSTALLED_APPS for schedules in the "
        "database and the admin)"
    )
    run_settings_schedule(app, stop, **options)


def setup_worker(app: Conveyor | None = None) -> None:
    """Prepare this process to run a Django project's tasks. Call it before ``app.finalize()``
    (which imports the tasks modules) in workers, beat and any process running tasks.

    It calls ``django.setup()`` if needed (``DJANGO_SETTINGS_MODULE`` must be set), installs
    the transaction hooks on ``app`` (or on every app) and closes this process's connections,
    so that child processes forked later never share a socket with it. Tasks then run with
    :class:`~.worker.DjangoTaskRunner` (which ``conveyor worker`` uses for Django projects).
    """
    if not django.apps.apps.ready:
        django.setup()
    for each in [app] if app is not None else registered_apps():
        install(each)
    close_idle_connections()
    global _fork_hook_registered
    if not _fork_hook_registered and hasattr(os, "register_at_fork"):
        _fork_hook_registered = True
        os.register_at_fork(before=close_idle_connections)
