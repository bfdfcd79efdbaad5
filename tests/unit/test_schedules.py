"""Schedules: crontab syntax and evaluation, DST, intervals, one-offs, serialization."""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from conveyor.beat.schedules import (
    InvalidSchedule,
    Schedule,
    as_schedule,
    clocked,
    crontab,
    every,
    schedule,
)
from conveyor.exceptions import ConfigurationError

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
SHANGHAI = ZoneInfo("Asia/Shanghai")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


def runs(sched: Schedule, start: datetime, count: int) -> list[datetime]:
    out: list[datetime] = []
    moment: datetime | None = start
    for _ in range(count):
        assert moment is not None
        moment = sched.next_after(moment)
        if moment is None:
            break
        out.append(moment)
    return out


def between(sched: Schedule, start: datetime, end: datetime) -> list[datetime]:
    out: list[datetime] = []
    moment = sched.next_after(start)
    while moment is not None and moment <= end:
        out.append(moment)
        moment = sched.next_after(moment)
    return out


# -- crontab: known instants -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("cron", "start", "expected"),
    [
        (crontab(), utc(2024, 5, 1, 10, 0, 30), [utc(2024, 5, 1, 10, 1), utc(2024, 5, 1, 10, 2)]),
        (
            crontab(hour=7, minute=30),
            utc(2024, 5, 1, 7, 30),
            [utc(2024, 5, 2, 7, 30), utc(2024, 5, 3, 7, 30)],
        ),
        (
            crontab(minute="*/15"),
            utc(2024, 5, 1, 10, 7),
            [utc(2024, 5, 1, 10, 15), utc(2024, 5, 1, 10, 30), utc(2024, 5, 1, 10, 45)],
        ),
        (
            crontab(minute="0-30/10", hour=9),
            utc(2024, 5, 1),
            [utc(2024, 5, 1, 9, m) for m in (0, 10, 20, 30)],
        ),
        (
            crontab(minute="5/20", hour=0),
            utc(2024, 5, 1),
            [utc(2024, 5, 1, 0, 5), utc(2024, 5, 1, 0, 25), utc(2024, 5, 1, 0, 45)],
        ),
        (
            crontab(minute=0, hour="1,15"),
            utc(2024, 5, 1, 2),
            [utc(2024, 5, 1, 15), utc(2024, 5, 2, 1)],
        ),
        (
            crontab(minute=[0, 30], hour=[8]),
            utc(2024, 5, 1),
            [utc(2024, 5, 1, 8), utc(2024, 5, 1, 8, 30), utc(2024, 5, 2, 8)],
        ),
        (
            # 2024-05-03 is a Friday: the next weekday 07:00 is Monday the 6th
            crontab(minute=0, hour=7, day_of_week="mon-fri"),
            utc(2024, 5, 3, 8),
            [utc(2024, 5, 6, 7), utc(2024, 5, 7, 7)],
        ),
        (
            crontab(minute=0, hour=0, day_of_week="sun"),
            utc(2024, 5, 1),
            [utc(2024, 5, 5), utc(2024, 5, 12)],
        ),
        (
            crontab(minute=0, hour=0, day_of_week=7),
            utc(2024, 5, 1),
            [utc(2024, 5, 5), utc(2024, 5, 12)],
        ),
        (
            crontab(minute=0, hour=0, day_of_week=0),
            utc(2024, 5, 1),
            [utc(2024, 5, 5), utc(2024, 5, 12)],
        ),
        (
            # wrapping range, as in Celery: Friday through Monday
            crontab(minute=0, hour=12, day_of_week="fri-mon"),
            utc(2024, 5, 1),
            [utc(2024, 5, d, 12) for d in (3, 4, 5, 6, 10)],
        ),
        (
            crontab(minute=0, hour=12, day_of_week="5-7"),
            utc(2024, 5, 1),
            [utc(2024, 5, 3, 12), utc(2024, 5, 4, 12), utc(2024, 5, 5, 12), utc(2024, 5, 10, 12)],
        ),
        (
            crontab(minute=0, hour="22-2"),
            utc(2024, 5, 1, 12),
            [
                utc(2024, 5, 1, 22),
                utc(2024, 5, 1, 23),
                *(utc(2024, 5, 2, h) for h in (0, 1, 2, 22)),
            ],
        ),
        (
            crontab(minute=0, hour=0, day_of_month=1, month_of_year="jan,jul"),
            utc(2024, 2, 1),
            [utc(2024, 7, 1), utc(2025, 1, 1), utc(2025, 7, 1)],
        ),
        (
            crontab(minute=0, hour=0, day_of_month=1, month_of_year="january,july"),
            utc(2024, 2, 1),
            [utc(2024, 7, 1), utc(2025, 1, 1)],
        ),
        (
            crontab(minute=0, hour=0, day_of_month="1,15", month_of_year="*/3"),
            utc(2024, 1, 10),
            [utc(2024, 1, 15), utc(2024, 4, 1), utc(2024, 4, 15), utc(2024, 7, 1)],
        ),
        (
            crontab(minute=0, hour=0, day_of_month="*/10"),
            utc(2024, 1, 1, 1),
            [utc(2024, 1, 11), utc(2024, 1, 21), utc(2024, 1, 31), utc(2024, 2, 1)],
        ),
        (
            crontab(minute=59, hour=23, day_of_month=31, month_of_year=12),
            utc(2024, 1, 1),
            [utc(2024, 12, 31, 23, 59), utc(2025, 12, 31, 23, 59)],
        ),
        (
            crontab(minute="15,45", hour="*/6", day_of_week="sat,sun"),
            utc(2024, 5, 4, 6, 30),
            [utc(2024, 5, 4, 6, 45), utc(2024, 5, 4, 12, 15)],
        ),
    ],
)
def test_crontab_known_instants(cron: crontab, start: datetime, expected: list[datetime]) -> None:
    assert runs(cron, start, len(expected)) == expected


@pytest.mark.parametrize(
    ("expression", "start", "expected"),
    [
        ("0 7 * * 1-5", utc(2024, 5, 3, 8), [utc(2024, 5, 6, 7)]),
        ("30 7 * * *", utc(2024, 5, 1), [utc(2024, 5, 1, 7, 30), utc(2024, 5, 2, 7, 30)]),
        ("*/20 * * * *", utc(2024, 5, 1, 0, 1), [utc(2024, 5, 1, 0, 20), utc(2024, 5, 1, 0, 40)]),
        ("0 0 1 */2 *", utc(2024, 2, 5), [utc(2024, 3, 1), utc(2024, 5, 1)]),
        ("0 12 * JAN,JUL MON", utc(2024, 1, 1, 13), [utc(2024, 1, 8, 12)]),
        ("@daily", utc(2024, 5, 1, 0, 0, 1), [utc(2024, 5, 2)]),
        ("@hourly", utc(2024, 5, 1, 0, 0, 1), [utc(2024, 5, 1, 1)]),
        ("@weekly", utc(2024, 5, 1), [utc(2024, 5, 5)]),
        ("@monthly", utc(2024, 5, 1), [utc(2024, 6, 1)]),
        ("@yearly", utc(2024, 5, 1), [utc(2025, 1, 1)]),
    ],
)
def test_from_string(expression: str, start: datetime, expected: list[datetime]) -> None:
    assert runs(crontab.from_string(expression), start, len(expected)) == expected


def test_from_string_field_order_is_standard_cron() -> None:
    cron = crontab.from_string("1 2 3 4 5")
    assert (cron.minute, cron.hour, cron.day_of_month, cron.month_of_year, cron.day_of_week) == (
        "1",
        "2",
        "3",
        "4",
        "5",
    )


def test_next_after_is_strictly_after_and_ignores_sub_seconds() -> None:
    cron = crontab(hour=7, minute=30)
    assert cron.next_after(utc(2024, 5, 1, 7, 30)) == utc(2024, 5, 2, 7, 30)
    assert cron.next_after(utc(2024, 5, 1, 7, 29, 59, 999999)) == utc(2024, 5, 1, 7, 30)
    assert cron.next_after(utc(2024, 5, 1, 7, 30, 0, 1)) == utc(2024, 5, 2, 7, 30)


def test_naive_moment_is_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        crontab().next_after(datetime(2024, 5, 1))
    with pytest.raises(ValueError, match="aware"):
        every(10).next_after(datetime(2024, 5, 1))


# -- day of month AND day of week (Celery's rule) ---------------------------------------------
def test_day_of_month_and_day_of_week_are_anded_like_celery() -> None:
    friday_13th = crontab(minute=0, hour=0, day_of_month=13, day_of_week="fri")
    found = between(friday_13th, utc(2024, 1, 1), utc(2026, 12, 31))
    assert found == [
        utc(2024, 9, 13),
        utc(2024, 12, 13),
        utc(2025, 6, 13),
        utc(2026, 2, 13),
        utc(2026, 3, 13),
        utc(2026, 11, 13),
    ]
    assert all(day.weekday() == 4 and day.day == 13 for day in found)


def test_from_string_also_ands_day_fields() -> None:
    # Standard cron would fire on every 13th and every Friday; Celery (and Conveyor) do not.
    cron = crontab.from_string("0 0 13 * 5")
    assert cron.next_after(utc(2024, 1, 1)) == utc(2024, 9, 13)


def test_and_with_wall_clock_time_and_time_zone() -> None:
    cron = crontab(minute=30, hour=7, day_of_month="1-7", day_of_week="mon", tz="Europe/Berlin")
    # the first Monday of each month
    assert runs(cron, utc(2024, 1, 1, 12), 3) == [
        datetime(2024, 2, 5, 7, 30, tzinfo=BERLIN),
        datetime(2024, 3, 4, 7, 30, tzinfo=BERLIN),
        datetime(2024, 4, 1, 7, 30, tzinfo=BERLIN),
    ]


def test_leap_day_on_a_monday() -> None:
    cron = crontab(minute=0, hour=0, day_of_month=29, month_of_year=2, day_of_week="mon")
    assert cron.next_after(utc(2024, 3, 1)) == utc(2044, 2, 29)


# -- leap years and month ends ----------------------------------------------------------------
def test_february_29th_only_in_leap_years() -> None:
    cron = crontab(minute=0, hour=0, day_of_month=29, month_of_year=2)
    assert runs(cron, utc(2023, 1, 1), 3) == [utc(2024, 2, 29), utc(2028, 2, 29), utc(2032, 2, 29)]
    # 2100 is not a leap year
    assert cron.next_after(utc(2096, 3, 1)) == utc(2104, 2, 29)


def test_31st_skips_months_with_30_days() -> None:
    cron = crontab(minute=0, hour=12, day_of_month=31)
    assert runs(cron, utc(2024, 1, 1), 7) == [
        utc(2024, 1, 31, 12),
        utc(2024, 3, 31, 12),
        utc(2024, 5, 31, 12),
        utc(2024, 7, 31, 12),
        utc(2024, 8, 31, 12),
        utc(2024, 10, 31, 12),
        utc(2024, 12, 31, 12),
    ]


def test_30th_skips_february() -> None:
    cron = crontab(minute=0, hour=0, day_of_month=30)
    assert runs(cron, utc(2024, 1, 31), 2) == [utc(2024, 3, 30), utc(2024, 4, 30)]


def test_impossible_day_of_month_is_refused() -> None:
    with pytest.raises(InvalidSchedule, match="never fires"):
        crontab(day_of_month=31, month_of_year="apr,jun")
    with pytest.raises(InvalidSchedule, match="never fires"):
        crontab(day_of_month=30, month_of_year=2)
    crontab(day_of_month=29, month_of_year=2)  # leap years exist


# -- DST ---------------------------------------------------------------------------------------
def test_berlin_spring_forward_wall_time_in_the_gap_runs_once_at_03_00() -> None:
    # 2024-03-31 02:00 CET -> 03:00 CEST: 02:30 does not exist that day
    cron = crontab(hour=2, minute=30, tz="Europe/Berlin")
    found = between(cron, utc(2024, 3, 30, 12), utc(2024, 4, 1, 12))
    assert found == [
        datetime(2024, 3, 31, 3, 0, tzinfo=BERLIN),
        datetime(2024, 4, 1, 2, 30, tzinfo=BERLIN),
    ]
    assert found[0].astimezone(UTC) == utc(2024, 3, 31, 1, 0)


def test_berlin_fall_back_repeated_wall_time_runs_once() -> None:
    # 2024-10-27 03:00 CEST -> 02:00 CET: 02:30 happens twice
    cron = crontab(hour=2, minute=30, tz="Europe/Berlin")
    found = between(cron, utc(2024, 10, 26, 12), utc(2024, 10, 28, 12))
    assert [f.astimezone(UTC) for f in found] == [
        utc(2024, 10, 27, 0, 30),  # 02:30 CEST, the first occurrence
        utc(2024, 10, 28, 1, 30),  # 02:30 CET
    ]


def test_berlin_fall_back_from_inside_the_repeated_hour() -> None:
    cron = crontab(hour=2, minute=30, tz="Europe/Berlin")
    # 02:10 CET: the second pass through 02:xx, after 02:30 CEST already fired
    moment = datetime(2024, 10, 27, 2, 10, tzinfo=BERLIN, fold=1)
    assert moment.astimezone(UTC) == utc(2024, 10, 27, 1, 10)
    assert cron.next_after(moment) == datetime(2024, 10, 28, 2, 30, tzinfo=BERLIN)
    # the same moment given in UTC
    assert cron.next_after(utc(2024, 10, 27, 1, 10)) == datetime(2024, 10, 28, 2, 30, tzinfo=BERLIN)


@pytest.mark.parametrize(
    ("start", "expected_utc"),
    [
        # Berlin spring forward on 2024-03-31 (CET +1 -> CEST +2)
        (utc(2024, 3, 29, 12), [utc(2024, 3, 30, 6, 30), utc(2024, 3, 31, 5, 30)]),
        # Berlin fall back on 2024-10-27 (CEST +2 -> CET +1)
        (utc(2024, 10, 26), [utc(2024, 10, 26, 5, 30), utc(2024, 10, 27, 6, 30)]),
    ],
)
def test_berlin_0730_is_0730_local_on_both_sides(
    start: datetime, expected_utc: list[datetime]
) -> None:
    cron = crontab(hour=7, minute=30, tz="Europe/Berlin")
    found = runs(cron, start, 2)
    assert [f.astimezone(UTC) for f in found] == expected_utc
    assert all((f.hour, f.minute) == (7, 30) and f.tzinfo is BERLIN for f in found)


def test_new_york_spring_forward_gap_runs_once_at_03_00() -> None:
    # 2024-03-10 02:00 EST -> 03:00 EDT
    cron = crontab(hour=2, minute=30, tz="America/New_York")
    found = between(cron, utc(2024, 3, 9, 12), utc(2024, 3, 11, 12))
    assert [f.astimezone(UTC) for f in found] == [utc(2024, 3, 10, 7, 0), utc(2024, 3, 11, 6, 30)]
    assert found[0] == datetime(2024, 3, 10, 3, 0, tzinfo=NEW_YORK)


def test_new_york_fall_back_repeated_wall_time_runs_once() -> None:
    # 2024-11-03 02:00 EDT -> 01:00 EST: 01:30 happens twice
    cron = crontab(hour=1, minute=30, tz="America/New_York")
    found = between(cron, utc(2024, 11, 2, 12), utc(2024, 11, 4, 12))
    assert [f.astimezone(UTC) for f in found] == [utc(2024, 11, 3, 5, 30), utc(2024, 11, 4, 6, 30)]


@pytest.mark.parametrize(
    ("start", "expected_utc"),
    [
        # spring forward on 2024-03-10 (EST -5 -> EDT -4)
        (utc(2024, 3, 9, 10), [utc(2024, 3, 9, 12, 30), utc(2024, 3, 10, 11, 30)]),
        # fall back on 2024-11-03 (EDT -4 -> EST -5)
        (utc(2024, 11, 2, 10), [utc(2024, 11, 2, 11, 30), utc(2024, 11, 3, 12, 30)]),
    ],
)
def test_new_york_0730_is_0730_local_on_both_sides(
    start: datetime, expected_utc: list[datetime]
) -> None:
    cron = crontab(hour=7, minute=30, tz="America/New_York")
    assert [f.astimezone(UTC) for f in runs(cron, start, 2)] == expected_utc


def test_hourly_jobs_count_real_hours_across_dst() -> None:
    cron = crontab(minute=30, tz="Europe/Berlin")
    spring = between(cron, utc(2024, 3, 30, 23, 0), utc(2024, 3, 31, 3, 0))
    # 00:30 CET, 01:30 CET, 03:30 CEST, 04:30 CEST: one hour apart in real time
    assert [f.astimezone(UTC) for f in spring] == [
        utc(2024, 3, 30, 23, 30),
        utc(2024, 3, 31, 0, 30),
        utc(2024, 3, 31, 1, 30),
        utc(2024, 3, 31, 2, 30),
    ]
    fall = between(cron, utc(2024, 10, 26, 22, 0), utc(2024, 10, 27, 3, 0))
    # 02:30 CEST and 02:30 CET both fire: there really are two such hours
    assert [f.astimezone(UTC) for f in fall] == [
        utc(2024, 10, 26, 22, 30),  # 00:30 CEST
        utc(2024, 10, 26, 23, 30),  # 01:30 CEST
        utc(2024, 10, 27, 0, 30),  # 02:30 CEST
        utc(2024, 10, 27, 1, 30),  # 02:30 CET
        utc(2024, 10, 27, 2, 30),  # 03:30 CET
    ]


def test_steps_inside_a_skipped_hour_collapse_to_one_run() -> None:
    cron = crontab(minute="*/15", hour=2, tz="Europe/Berlin")
    found = between(cron, utc(2024, 3, 30, 23), utc(2024, 3, 31, 22))
    assert found == [datetime(2024, 3, 31, 3, 0, tzinfo=BERLIN)]
    fall = between(cron, utc(2024, 10, 26, 22), utc(2024, 10, 27, 22))
    assert [f.astimezone(UTC) for f in fall] == [utc(2024, 10, 27, 0, m) for m in (0, 15, 30, 45)]


def test_every_day_of_a_dst_year_fires_once_in_berlin() -> None:
    cron = crontab(hour=2, minute=30, tz="Europe/Berlin")
    found = between(cron, utc(2023, 12, 31, 12), utc(2024, 12, 31, 12))
    assert len(found) == 366
    assert len({f.date() for f in found}) == 366


def test_shanghai() -> None:
    cron = crontab(hour=7, minute=30, tz="Asia/Shanghai")
    # 2024-05-01 00:00 UTC is 08:00 in Shanghai: 07:30 has passed there
    assert cron.next_after(utc(2024, 5, 1)) == datetime(2024, 5, 2, 7, 30, tzinfo=SHANGHAI)
    assert cron.next_after(utc(2024, 4, 30, 23)) == utc(2024, 4, 30, 23, 30)


def test_schedule_tz_overrides_the_moment_tz() -> None:
    in_shanghai = crontab(hour=8, minute=0, tz="Asia/Shanghai")
    without_tz = crontab(hour=8, minute=0)
    moment = datetime(2024, 5, 1, 0, 0, tzinfo=BERLIN)
    assert in_shanghai.next_after(moment) == utc(2024, 5, 1, 0, 0)
    assert without_tz.next_after(moment) == datetime(2024, 5, 1, 8, 0, tzinfo=BERLIN)
    assert without_tz.next_after(moment.astimezone(SHANGHAI)) == utc(2024, 5, 1, 0, 0)


def test_time_zone_arguments() -> None:
    assert crontab(tz=BERLIN).tz is BERLIN
    assert crontab(tz=UTC).tz == ZoneInfo("UTC")
    with pytest.raises(InvalidSchedule, match="unknown time zone 'Mars/Olympus'"):
        crontab(tz="Mars/Olympus")


# -- parsing errors ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"minute": 60}, "crontab minute='60': 60 is out of range 0-59"),
        ({"minute": "*/0"}, "crontab minute='\\*/0': step '0'"),
        ({"minute": "*/x"}, "step 'x'"),
        ({"minute": ""}, "crontab minute='': empty field"),
        ({"minute": "1,,2"}, "crontab minute='1,,2'"),
        ({"minute": "-5"}, "crontab minute='-5'"),
        ({"hour": 24}, "crontab hour='24': 24 is out of range 0-23"),
        ({"hour": "9-17,25"}, "crontab hour='9-17,25': 25 is out of range"),
        ({"hour": "nine"}, "crontab hour='nine': 'nine' is not a number"),
        (
            {"day_of_week": "funday"},
            "crontab day_of_week='funday': 'funday' is not a number or a name",
        ),
        ({"day_of_week": 8}, "crontab day_of_week='8': 8 is out of range 0-7"),
        ({"day_of_month": 0}, "crontab day_of_month='0': 0 is out of range 1-31"),
        ({"day_of_month": "32"}, "crontab day_of_month='32': 32 is out of range 1-31"),
        ({"month_of_year": 13}, "crontab month_of_year='13': 13 is out of range 1-12"),
        ({"month_of_year": "jun-foo"}, "crontab month_of_year='jun-foo': 'foo'"),
        ({"minute": 1.5}, "crontab minute"),
        ({"minute": True}, "crontab minute"),
        ({"minute": []}, "crontab minute=''"),
    ],
)
def test_invalid_fields_name_the_field_and_value(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidSchedule, match=message):
        crontab(**kwargs)  # type: ignore[arg-type]


def test_invalid_schedule_is_a_value_and_configuration_error() -> None:
    assert issubclass(InvalidSchedule, ValueError)
    assert issubclass(InvalidSchedule, ConfigurationError)


@pytest.mark.parametrize(
    "expression", ["", "* * * *", "* * * * * *", "0 7 * * mon-fri extra", "@often"]
)
def test_from_string_needs_five_fields(expression: str) -> None:
    with pytest.raises(InvalidSchedule, match="must have 5 fields"):
        crontab.from_string(expression)


def test_from_string_errors_name_the_field() -> None:
    with pytest.raises(InvalidSchedule, match="crontab day_of_week='9'"):
        crontab.from_string("0 7 * * 9")
    with pytest.raises(InvalidSchedule, match="crontab month_of_year='13'"):
        crontab.from_string("0 7 * 13 *")


def test_field_normalization() -> None:
    cron = crontab(minute=[0, 30], hour=" 9-17 ", day_of_week="MON-Fri")
    assert (cron.minute, cron.hour, cron.day_of_week) == ("0,30", "9-17", "mon-fri")


# -- describe ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("cron", "text"),
    [
        (crontab(hour=7, minute=30), "At 07:30 every day"),
        (crontab(minute="*/15"), "Every 15th minute of every hour"),
        (crontab(minute=0, hour=7, day_of_week="mon-fri"), "At 07:00 on Monday through Friday"),
        (crontab(hour=7, minute=30, tz="Asia/Shanghai"), "At 07:30 every day (Asia/Shanghai)"),
        (
            crontab(minute=0, hour=0, day_of_month=13, day_of_week="fri"),
            "At 00:00 on the 13th day of every month, if it's on Friday",
        ),
        (crontab(minute=0, hour=0, day_of_week="monday,friday"), "At 00:00 on Monday and Friday"),
    ],
)
def test_crontab_describe(cron: crontab, text: str) -> None:
    assert cron.describe() == text


def test_describe_never_fails_on_celery_only_syntax() -> None:
    assert crontab(minute=0, hour=0, day_of_week="sat-mon", day_of_month="1-7").describe()
    assert crontab(minute=0, hour="22-2").describe()


# -- intervals ---------------------------------------------------------------------------------
def test_every_is_anchored_on_the_epoch_grid() -> None:
    sched = every(900)
    assert sched.next_after(utc(2024, 5, 1, 10, 7, 13)) == utc(2024, 5, 1, 10, 15)
    assert sched.next_after(utc(2024, 5, 1, 10, 15)) == utc(2024, 5, 1, 10, 30)


def test_every_does_not_drift() -> None:
    sched = every(timedelta(seconds=7))
    found = runs(sched, utc(2024, 5, 1), 1000)
    assert all(b - a == timedelta(seconds=7) for a, b in itertools.pairwise(found))
    # a late evaluation lands back on the grid, it does not restart from "now"
    late = found[10] + timedelta(seconds=3, microseconds=500)
    assert sched.next_after(late) == found[11]


def test_every_with_an_anchor() -> None:
    anchor = datetime(2024, 5, 1, 9, 5, tzinfo=BERLIN)
    sched = every(timedelta(hours=1), anchor=anchor)
    assert sched.next_after(utc(2024, 5, 1, 12, 0)) == utc(2024, 5, 1, 12, 5)
    assert sched.next_after(utc(2000, 1, 1, 0, 0)) == utc(2000, 1, 1, 0, 5)


def test_every_fractional_seconds() -> None:
    sched = every(0.25)
    assert runs(sched, utc(2024, 5, 1), 2) == [
        utc(2024, 5, 1) + timedelta(milliseconds=250),
        utc(2024, 5, 1) + timedelta(milliseconds=500),
    ]


def test_every_keeps_the_moment_time_zone_and_counts_real_time_over_dst() -> None:
    sched = every(timedelta(hours=1))
    start = datetime(2024, 10, 27, 1, 0, tzinfo=BERLIN)
    found = runs(sched, start, 3)
    assert [f.astimezone(UTC) for f in found] == [utc(2024, 10, 27, h) for h in (0, 1, 2)]
    assert all(f.tzinfo is BERLIN for f in found)


@pytest.mark.parametrize("bad", [0, -1, timedelta(0), float("nan"), float("inf"), True, "10"])
def test_every_refuses_bad_intervals(bad: object) -> None:
    with pytest.raises(InvalidSchedule, match="interval"):
        every(bad)  # type: ignore[arg-type]


def test_every_describe() -> None:
    assert every(10).describe() == "every 10 seconds"
    assert every(1).describe() == "every second"
    assert every(60).describe() == "every minute"
    assert every(3600).describe() == "every hour"
    assert every(90).describe() == "every 1 minute 30 seconds"
    assert every(0.5).describe() == "every 0.5 seconds"
    assert every(timedelta(days=2, hours=1)).describe() == "every 2 days 1 hour"


def test_celery_schedule_alias() -> None:
    assert schedule(run_every=timedelta(seconds=30)) == every(30)
    assert schedule(10.0) == every(10)


# -- clocked -----------------------------------------------------------------------------------
def test_clocked_fires_once() -> None:
    at = datetime(2024, 5, 1, 9, 0, tzinfo=BERLIN)
    sched = clocked(at)
    assert sched.next_after(utc(2024, 4, 1)) == at
    assert sched.next_after(at) is None
    assert sched.next_after(at + timedelta(days=1)) is None


def test_clocked_naive_time_takes_its_zone() -> None:
    naive = datetime(2024, 5, 1, 9, 0)
    assert clocked(naive, tz="Asia/Shanghai").next_after(utc(2024, 1, 1)) == utc(2024, 5, 1, 1, 0)
    # without tz: the zone of the moment (the entry's or the app's)
    floating = clocked(naive)
    assert floating.next_after(datetime(2024, 1, 1, tzinfo=BERLIN)) == utc(2024, 5, 1, 7, 0)
    assert floating.next_after(datetime(2024, 1, 1, tzinfo=SHANGHAI)) == utc(2024, 5, 1, 1, 0)


def test_clocked_inside_a_dst_gap_moves_after_the_gap() -> None:
    sched = clocked(datetime(2024, 3, 31, 2, 30), tz="Europe/Berlin")
    assert sched.next_after(utc(2024, 1, 1)) == datetime(2024, 3, 31, 3, 0, tzinfo=BERLIN)


# -- serialization -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "sched",
    [
        crontab(),
        crontab(minute="*/15", hour="9-17", day_of_week="mon-fri", tz="Europe/Berlin"),
        crontab(minute=0, hour=0, day_of_month=13, day_of_week="fri", month_of_year="jan,jul"),
        crontab.from_string("@daily", tz="Asia/Shanghai"),
        every(10),
        every(0.25),
        every(timedelta(hours=1), anchor=datetime(2024, 5, 1, 9, 5, tzinfo=UTC)),
        clocked(datetime(2024, 5, 1, 9, 0, tzinfo=UTC)),
        clocked(datetime(2024, 5, 1, 9, 0)),
        clocked(datetime(2024, 5, 1, 9, 0), tz="America/New_York"),
    ],
)
def test_to_dict_round_trips_through_json(sched: Schedule) -> None:
    data = json.loads(json.dumps(sched.to_dict()))
    again = Schedule.from_dict(data)
    assert again == sched
    assert type(again) is type(sched)
    assert again.next_after(utc(2024, 1, 1)) == sched.next_after(utc(2024, 1, 1))
    assert hash(again) == hash(sched)
    assert type(sched).from_dict(data) == sched


def test_crontab_to_dict_shape() -> None:
    assert crontab(hour=7, minute=30, tz="Europe/Berlin").to_dict() == {
        "type": "crontab",
        "minute": "30",
        "hour": "7",
        "day_of_week": "*",
        "day_of_month": "*",
        "month_of_year": "*",
        "tz": "Europe/Berlin",
    }
    assert every(10).to_dict() == {"type": "interval", "seconds": 10.0, "anchor": None}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "'type'"),
        ({"type": "solar"}, "unknown schedule type 'solar'"),
        ({"type": "crontab", "minute": "61"}, "crontab minute='61'"),
        ({"type": "crontab", "second": "1"}, "bad crontab fields"),
        ({"type": "interval"}, "'seconds'"),
        ({"type": "interval", "seconds": -1}, "positive"),
        ({"type": "clocked"}, "bad clocked fields"),
    ],
)
def test_from_dict_errors(data: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidSchedule, match=message):
        Schedule.from_dict(data)  # type: ignore[arg-type]


def test_from_dict_on_a_subclass_checks_the_type() -> None:
    with pytest.raises(InvalidSchedule, match="expected a crontab"):
        crontab.from_dict(every(10).to_dict())


# -- what beat_schedule accepts ----------------------------------------------------------------
def test_as_schedule() -> None:
    cron = crontab(hour=7, minute=30)
    assert as_schedule(cron) is cron
    assert as_schedule(10) == every(10)
    assert as_schedule(10.0) == every(10)
    assert as_schedule(timedelta(minutes=1)) == every(60)
    assert as_schedule("30 7 * * *") == cron
    assert as_schedule(cron.to_dict()) == cron
    with pytest.raises(InvalidSchedule, match="a schedule must be"):
        as_schedule(None)
    with pytest.raises(InvalidSchedule, match="a schedule must be"):
        as_schedule(True)


def test_schedules_are_comparable_values() -> None:
    assert crontab(hour=7, minute=30) == crontab.from_string("30 7 * * *")
    assert crontab(hour=7) != crontab(hour=8)
    assert crontab(hour=7) != crontab(hour=7, tz="UTC")
    assert every(10) != crontab()
    assert len({every(10), every(10.0), every(timedelta(seconds=10))}) == 1
    assert "7" in repr(crontab(hour=7))
