"""Checks of the app's settings on their own: time zone, message signing, and how long
results (and chord state, kept as long) live compared with the tasks."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from ..beat.cron import crontab
from ..brokers import redact_url, scheme_of
from ..signing import key_ids
from .findings import Finding, info, ok, warning

if TYPE_CHECKING:
    from ..app import Conveyor

#: Below this, a chord of ordinary tasks may outlive its join state.
SHORT_RESULT_EXPIRY = 3600.0
LOOPBACK = {"localhost", "127.0.0.1", "::1", ""}


def settings_checks(app: Conveyor) -> list[Finding]:
    return [*_time_zone(app), *_signing(app), *_result_expiry(app)]


def _time_zone(app: Conveyor) -> list[Finding]:
    check = "timezone"
    conf = app.conf
    findings = []
    if not conf.enable_utc:
        findings.append(
            warning(
                check,
                "enable_utc is False, which Conveyor ignores: times are always UTC and crontab "
                f"entries follow the timezone setting ({conf.timezone})",
                "remove enable_utc; set timezone to the zone your crontab entries mean",
            )
        )
    zone = ZoneInfo(str(conf.timezone))
    crontabs = [
        name
        for name, spec in conf.beat_schedule.items()
        if isinstance(spec, dict) and isinstance(spec.get("schedule"), crontab)
    ]
    if crontabs and _has_dst(zone):
        findings.append(
            info(
                check,
                f"timezone {conf.timezone} changes with daylight saving time: crontab entries "
                f"({', '.join(crontabs)}) in the hour that is skipped or repeated on a "
                "changeover day run at a shifted time that day",
                "schedule such entries outside 01:00-03:00 local time, or use timezone UTC",
            )
        )
    if not findings:
        findings.append(ok(check, f"timezone {conf.timezone}"))
    return findings


def _has_dst(zone: ZoneInfo) -> bool:
    offsets = {dt.datetime(2026, month, 15, tzinfo=zone).utcoffset() for month in (1, 7)}
    return len(offsets) > 1


def _signing(app: Conveyor) -> list[Finding]:
    check = "signing"
    keys = app.conf.message_signing_keys
    url = app.broker_url
    if keys:
        ids = key_ids(keys)
        rotation = f"; {len(keys) - 1} more accepted (rotation)" if len(keys) > 1 else ""
        return [ok(check, f"messages signed with key id {ids[0]}{rotation}")]
    scheme = scheme_of(url)
    if scheme in {"redis", "rediss"}:
        parts = urlsplit(url)
        if parts.password is None and (parts.hostname or "") not in LOOPBACK:
            return [
                warning(
                    check,
                    f"the broker {redact_url(url)} has no password and messages are not "
                    "signed: anyone who reaches it can run any registered task with any "
                    "arguments",
                    "set a Redis password (requirepass / ACL) and use it in the URL; consider "
                    "message_signing_keys (docs/security.md)",
                )
            ]
    return [
        info(
            check,
            "messages are not signed: whoever can write to the broker can run any registered task",
            "keep the broker private; set message_signing_keys if others can write to it "
            "(docs/security.md)",
        )
    ]


def _result_expiry(app: Conveyor) -> list[Finding]:
    check = "results"
    expires = app.conf.result_expires
    if expires is None:
        return [
            info(
                check,
                "result_expires is None: results and chord state are kept forever and the "
                "store only grows",
                "set result_expires (seconds) longer than your longest workflow",
            )
        ]
    findings = []
    default_limit = app.conf.task_time_limit
    for name, task in sorted(app.tasks.items()):
        limit = task.time_limit if task.time_limit is not None else default_limit
        if limit is not None and limit >= expires:
            findings.append(
                warning(
                    check,
                    f"task {name!r} may run {limit:g} s (its time limit), not less than "
                    f"result_expires ({expires:g} s): its result, and the state of a chord it "
                    "is part of, may expire before it finishes (the chord body never runs)",
                    f"raise result_expires above the longest workflow (e.g. {4 * limit:g})",
                )
            )
    if expires < SHORT_RESULT_EXPIRY:
        findings.append(
            warning(
                check,
                f"result_expires is {expires:g} s: a chord whose header takes longer than that "
                "(queueing and retries included) loses its join state and never runs its body",
                f"set result_expires to at least {SHORT_RESULT_EXPIRY:g} s",
            )
        )
    if not findings:
        findings.append(ok(check, f"results and chord state kept {expires:g} s"))
    return findings
