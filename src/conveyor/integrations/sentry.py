"""Sentry (``pip install conveyor[sentry]``): task failures as Sentry events, beat entries as
Sentry cron check-ins.

    import sentry_sdk
    from conveyor.integrations.sentry import SentryMiddleware

    sentry_sdk.init(dsn=...)
    app.add_middleware(SentryMiddleware())

* A task that **fails for good** (no retry left, or no retry asked) is reported with its
  exception, tagged ``conveyor.task``, ``conveyor.queue`` and ``conveyor.retries``, with a
  ``conveyor`` context holding the id, name, queue, retries, delivery count and the
  **redacted arguments** (``arguments="names"``: values of secret-looking names such as
  ``password`` or ``token`` hidden, and URL passwords; ``"all"``: every value hidden;
  ``"none"``: arguments left out). The task's ``throws`` (expected errors) are not reported.
* A task **killed at its hard time limit** (its process killed by the supervisor) is reported
  the same way, from the supervisor (``TimeLimitExceeded``), and closes its cron check-in.
* A **retry** is reported only with ``report_retries=True`` (level warning); by default only
  the final failure is.
* With ``report_dead_letters=True``, a message **dead-lettered** without running (unknown
  task, malformed or undecodable) is reported as an error message tagged with the reason
  (by default Sentry's logging integration already reports the worker's error line for an
  unknown task; malformed messages are logged as warnings, i.e. breadcrumbs).
* A **beat entry** is a Sentry cron monitor (slug: the entry name, slugified): the publish
  sends an ``in_progress`` check-in with the monitor's schedule (crontab, or an interval of
  whole minutes) and the run ends it ``ok`` or ``error`` (a retry keeps it in progress)
  (``cron_monitors``).

Events are captured in an isolation scope, so the tags of one task never leak into another.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Literal

import sentry_sdk
from sentry_sdk.crons import MonitorStatus, capture_checkin
from sentry_sdk.integrations.logging import ignore_logger

from .. import states
from ..beat.cron import crontab
from ..beat.entry import Entry
from ..beat.intervals import every
from ..middleware import Middleware
from ..utils.redaction import redact_arguments, scrub, secret_strings

if TYPE_CHECKING:
    from sentry_sdk._types import Event, Hint, MonitorConfig

    from ..app import Conveyor
    from ..message import Envelope
    from ..worker.job import Job, Outcome

#: The message header carrying a beat run's check-in id to the worker.
CHECK_IN_HEADER = "sentry_check_in_id"
#: The header beat puts on the messages it sends (the entry's name).
ENTRY_HEADER = "periodic_entry"

type ArgumentMode = Literal["names", "all", "none"]


class SentryMiddleware(Middleware):
    """Reports failures, final by default, and beat runs as cron check-ins (module doc).

    The worker's own "task failed" log line is not sent again by Sentry's logging
    integration: the event this middleware captures has the exception and the context."""

    def __init__(
        self,
        *,
        report_retries: bool = False,
        report_dead_letters: bool = False,
        arguments: ArgumentMode = "names",
        cron_monitors: bool = True,
    ) -> None:
        if arguments not in ("names", "all", "none"):
            raise ValueError(f"arguments must be 'names', 'all' or 'none', got {arguments!r}")
        self.report_retries = report_retries
        self.report_dead_letters = report_dead_letters
        self.arguments = arguments
        self.cron_monitors = cron_monitors
        # Tasks that ran here and go to the dead-letter queue next (rejected): reported by
        # after_process, not again by on_dead_letter.
        self._ran_dead: set[str] = set()
        self._lock = threading.Lock()
        ignore_logger("conveyor.worker.tasks")

    # -- failures -------------------------------------------------------------------------
    def after_process(self, job: Job, outcome: Outcome) -> None:
        state = outcome.state
        if self.cron_monitors:
            self._finish_check_in(job.envelope, state, outcome.runtime)
        if outcome.reason:  # to be dead-lettered (only such outcomes have a reason)
            with self._lock:
                self._ran_dead.add(job.envelope.id)
        error = outcome.error
        if error is None or isinstance(error, job.task.throws):
            return
        delivery_count = job.delivery.delivery_count if job.delivery is not None else 1
        if state == states.FAILURE:
            self._capture(job.envelope, job.args, job.kwargs, delivery_count, error, "error")
        elif state == states.RETRY and self.report_retries:
            cause = error.__cause__ or error.__context__ or error
            self._capture(job.envelope, job.args, job.kwargs, delivery_count, cause, "warning")

    def on_dead_letter(self, envelope: Envelope | None, outcome: Outcome) -> None:
        delivery = outcome.delivery
        if envelope is not None and outcome.envelope is None:  # a task that ran
            with self._lock:
                reported = envelope.id in self._ran_dead
                self._ran_dead.discard(envelope.id)
            if reported:
                return
            # Its process was killed (hard time limit): the supervisor records the failure.
            if self.cron_monitors:
                self._finish_check_in(envelope, outcome.state, outcome.runtime)
            if outcome.error is not None and outcome.state == states.FAILURE:
                count = delivery.delivery_count if delivery is not None else 1
                args, kwargs = list(envelope.args), dict(envelope.kwargs)
                self._capture(envelope, args, kwargs, count, outcome.error, "error")
            return
        if not self.report_dead_letters:
            return
        with sentry_sdk.isolation_scope() as scope:
            scope.set_tag("conveyor.dead_letter_reason", outcome.reason)
            if envelope is not None:
                scope.set_tag("conveyor.task", envelope.task)
                scope.set_tag("conveyor.queue", envelope.queue)
                scope.set_context("conveyor", {"id": envelope.id, "task": envelope.task})
            elif delivery is not None:
                scope.set_tag("conveyor.queue", delivery.queue)
                scope.set_context("conveyor", {"id": delivery.id})
            name = envelope.task if envelope is not None else "an undecodable message"
            sentry_sdk.capture_message(
                f"{name} dead-lettered ({outcome.reason}): {outcome.detail}", level="error"
            )

    def _capture(
        self,
        envelope: Envelope,
        args: list[object],
        kwargs: dict[str, object],
        delivery_count: int,
        error: BaseException,
        level: str,
    ) -> None:
        details: dict[str, object] = {
            "id": envelope.id,
            "task": envelope.task,
            "queue": envelope.queue,
            "retries": envelope.retries,
            "delivery_count": delivery_count,
            "root_id": envelope.root_id,
            "parent_id": envelope.parent_id,
        }
        hide_all = self.arguments != "names"
        if self.arguments != "none":
            shown_args, shown_kwargs = redact_arguments(args, kwargs, all_values=hide_all)
            details["args"], details["kwargs"] = shown_args, shown_kwargs
        secrets = secret_strings(args, kwargs, all_values=hide_all)

        def scrubbed(event: Event, hint: Hint) -> Event:
            # The traceback's local variables hold the arguments too (and the job's repr).
            for exception in event.get("exception", {}).get("values", []):
                for frame in (exception.get("stacktrace") or {}).get("frames", []):
                    if "vars" in frame:
                        frame["vars"] = scrub(frame["vars"], secrets)
            return event

        with sentry_sdk.isolation_scope() as scope:
            scope.add_event_processor(scrubbed)
            scope.set_transaction_name(envelope.task)
            scope.set_tag("conveyor.task", envelope.task)
            scope.set_tag("conveyor.queue", envelope.queue)
            scope.set_tag("conveyor.retries", str(envelope.retries))
            scope.set_context("conveyor", details)
            scope.set_level(level)  # type: ignore[arg-type]  # a LogLevelStr literal
            sentry_sdk.capture_exception(error)

    # -- cron check-ins -------------------------------------------------------------------
    def before_publish(self, app: Conveyor, envelope: Envelope) -> None:
        entry = envelope.headers.get(ENTRY_HEADER)
        if not self.cron_monitors or not isinstance(entry, str):
            return
        if CHECK_IN_HEADER in envelope.headers:
            return  # a retry of a run already checked in
        check_in_id = capture_checkin(
            monitor_slug=monitor_slug(entry),
            status=MonitorStatus.IN_PROGRESS,
            monitor_config=monitor_config(app, entry),
        )
        if check_in_id:
            envelope.headers[CHECK_IN_HEADER] = check_in_id

    def _finish_check_in(self, envelope: Envelope, state: str, runtime: float) -> None:
        check_in_id = envelope.headers.get(CHECK_IN_HEADER)
        entry = envelope.headers.get(ENTRY_HEADER)
        if not isinstance(check_in_id, str) or not isinstance(entry, str):
            return
        if state == states.SUCCESS:
            status = MonitorStatus.OK
        elif state == states.FAILURE or state == states.REVOKED:
            status = MonitorStatus.ERROR
        else:
            return  # RETRY: the run goes on
        capture_checkin(
            monitor_slug=monitor_slug(entry),
            check_in_id=check_in_id,
            status=status,
            duration=runtime,
        )


def monitor_slug(entry: str) -> str:
    """Sentry's monitor slug for a beat entry name: lower case, ``-`` between words."""
    return re.sub(r"[^a-z0-9_]+", "-", entry.lower()).strip("-")[:50] or "beat-entry"


def monitor_config(app: Conveyor, entry: str) -> MonitorConfig | None:
    """The Sentry monitor config of beat entry ``entry``: its crontab (with its time zone)
    or its interval in whole minutes; None where Sentry cannot express it (an interval under
    a minute, a solar schedule, an entry not in ``beat_schedule``)."""
    spec = app.conf.beat_schedule.get(entry)
    if not isinstance(spec, Mapping):
        return None
    try:
        schedule = Entry.from_config(entry, spec).schedule
    except Exception:
        return None
    timezone = str(app.conf.timezone)
    if isinstance(schedule, crontab):
        fields = (
            schedule.minute,
            schedule.hour,
            schedule.day_of_month,
            schedule.month_of_year,
            schedule.day_of_week,
        )
        if schedule.tz is not None:
            timezone = str(schedule.tz)
        return {
            "schedule": {"type": "crontab", "value": " ".join(fields)},
            "timezone": timezone,
        }
    if isinstance(schedule, every):
        minutes, rest = divmod(schedule.interval.total_seconds(), 60)
        if minutes < 1 or rest:
            return None
        return {
            "schedule": {"type": "interval", "value": int(minutes), "unit": "minute"},
            "timezone": timezone,
        }
    return None
