"""Django system checks for Conveyor (``manage.py check``; ids ``conveyor.E/W...``)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from django.conf import settings
from django.core import checks

from conveyor._state import registered_apps
from conveyor.brokers import scheme_of
from conveyor.brokers.base import redact_url

if TYPE_CHECKING:
    from conveyor.app import Conveyor

#: Seconds the broker may take to answer the startup check.
PING_TIMEOUT = 2.0
_LOCAL_SCHEMES = frozenset({"memory", "sqlite"})


def _apps() -> list[Conveyor]:
    return registered_apps()


@checks.register("conveyor")  # type: ignore[untyped-decorator]
def check_apps(
    app_configs: Sequence[object] | None = None, **kwargs: object
) -> list[checks.CheckMessage]:
    apps = _apps()
    if not apps:
        return [
            checks.Warning(
                "no Conveyor app has been created",
                hint="Create one in proj/conveyor.py (app = Conveyor('proj'); "
                "app.config_from_object('django.conf:settings', namespace='CONVEYOR'); "
                "app.autodiscover_tasks()) and import it in proj/__init__.py.",
                id="conveyor.W001",
            )
        ]
    messages: list[checks.CheckMessage] = []
    for app in apps:
        messages += _check_results(app)
        messages += _check_on_commit(app)
        messages += _check_timezone(app)
        messages += _check_broker(app)
    return messages


def _check_timezone(app: Conveyor) -> list[checks.CheckMessage]:
    if "timezone" in app.conf.explicit() or not app.conf.beat_schedule:
        return []
    zone = getattr(settings, "TIME_ZONE", None) or "UTC"
    if zone == app.conf.timezone:
        return []
    return [
        checks.Warning(
            f"periodic tasks are evaluated in CONVEYOR_TIMEZONE ({app.conf.timezone!r}), "
            f"not in TIME_ZONE ({zone!r})",
            hint="Set CONVEYOR_TIMEZONE = TIME_ZONE if crontab(hour=7) should mean 7:00 "
            "in the site's time zone.",
            id="conveyor.W007",
        )
    ]


def _check_results(app: Conveyor) -> list[checks.CheckMessage]:
    url = app.result_backend_url
    if scheme_of(url) != "django":
        return []
    parts = urlsplit(url)
    alias = parts.netloc or parts.path.strip("/") or "default"
    if alias not in settings.DATABASES:
        return [
            checks.Error(
                f"result backend {url!r} names database {alias!r}, which is not in DATABASES",
                id="conveyor.E002",
            )
        ]
    database = settings.DATABASES[alias]
    options = database.get("OPTIONS", {})
    if "sqlite3" in database.get("ENGINE", "") and str(
        options.get("transaction_mode", "")
    ).upper() not in {"IMMEDIATE", "EXCLUSIVE"}:
        return [
            checks.Warning(
                f"results are stored in SQLite database {alias!r} without "
                "OPTIONS['transaction_mode'] = 'IMMEDIATE'",
                hint="Workers writing results at the same time can fail with 'database is "
                "locked'. Set 'transaction_mode': 'IMMEDIATE' and 'timeout': 20, and "
                "'init_command': 'PRAGMA journal_mode=WAL;'.",
                id="conveyor.W003",
            )
        ]
    return []


def _check_on_commit(app: Conveyor) -> list[checks.CheckMessage]:
    messages: list[checks.CheckMessage] = []
    on_commit = bool(app.conf.task_enqueue_on_commit)
    if on_commit and app.conf.task_always_eager:
        messages.append(
            checks.Warning(
                "CONVEYOR_TASK_ENQUEUE_ON_COMMIT has no effect with CONVEYOR_TASK_ALWAYS_EAGER",
                hint="Eager tasks run at once, inside the caller's transaction.",
                id="conveyor.W004",
            )
        )
    for alias, database in settings.DATABASES.items():
        if database.get("AUTOCOMMIT", True) is False and on_commit:
            messages.append(
                checks.Error(
                    f"database {alias!r} has AUTOCOMMIT = False: tasks sent on commit "
                    "would raise TransactionManagementError outside atomic blocks",
                    hint="Keep AUTOCOMMIT on, or turn CONVEYOR_TASK_ENQUEUE_ON_COMMIT off.",
                    id="conveyor.E005",
                )
            )
        if database.get("ATOMIC_REQUESTS") and not on_commit:
            messages.append(
                checks.Warning(
                    f"database {alias!r} has ATOMIC_REQUESTS = True: a task sent with delay() "
                    "from a view can start before the view's data is committed",
                    hint="Use task.delay_on_commit() or set "
                    "CONVEYOR_TASK_ENQUEUE_ON_COMMIT = True.",
                    id="conveyor.W006",
                )
            )
    return messages


def _check_broker(app: Conveyor) -> list[checks.CheckMessage]:
    url = app.broker_url
    if scheme_of(url) in _LOCAL_SCHEMES or app.conf.task_always_eager:
        return []
    outcome: list[BaseException | None] = []

    def ping() -> None:
        try:
            app.broker.time()
            outcome.append(None)
        except Exception as exc:  # any failure is reported, never raised
            outcome.append(exc)

    thread = threading.Thread(target=ping, name="conveyor-check-broker", daemon=True)
    thread.start()
    thread.join(PING_TIMEOUT)
    if outcome and outcome[0] is None:
        return []
    why = f"{outcome[0]}" if outcome else f"no answer within {PING_TIMEOUT:g} s"
    return [
        checks.Warning(
            f"the broker {redact_url(url)} cannot be reached: {why}",
            hint="Tasks cannot be sent until it is up. Check CONVEYOR_BROKER_URL.",
            id="conveyor.W010",
        )
    ]
