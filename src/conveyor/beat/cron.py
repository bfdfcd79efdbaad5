"""The crontab schedule: Celery's crontab fields, or a five-field cron expression.

Cron evaluation is delegated to `cronsim <https://github.com/cuu508/cronsim>`_: it is small,
typed, maintained, and evaluates with zoneinfo datetimes exactly like Debian's cron, including
its DST rules. A hand-written evaluator would have to re-learn those rules (and their bugs);
croniter is larger, was declared abandoned at the end of 2024 (it now lives on under
pallets-eco, while PyPI still shows the notice) and has a long history of DST issues with
zoneinfo. Conveyor parses Celery's field syntax itself (names, Sunday as 7, wrapping ranges such
as ``fri-mon``, clear errors naming the field) and hands cronsim plain numeric lists.

Semantics Conveyor fixes on purpose:

* **Day of month and day of week are ANDed**, as in Celery: ``crontab(day_of_month=13,
  day_of_week="fri")`` fires on Friday the 13th only. Standard cron would fire on every 13th
  *and* every Friday. ``from_string`` follows the same (Celery) rule, so a ported entry behaves
  as it did under Celery beat.
* **Daylight saving time.** A crontab whose ``hour`` is restricted names wall-clock times: on
  spring-forward day a time inside the gap (02:30 in Berlin) fires once, at the first valid
  instant after the gap (03:00 local); on fall-back day a repeated time fires once, at its first
  occurrence. A crontab with ``hour="*"`` counts real hours: it fires in both copies of a
  repeated hour and has nothing to fire in a skipped one. (This is Debian cron's rule.)
* A crontab without ``tz`` is evaluated in the time zone of the moment passed in; the beat
  passes moments in the entry's ``tz`` or the app's ``timezone``.
"""

from __future__ import annotations

import calendar
from collections.abc import Iterable
from datetime import UTC, date, datetime, time, tzinfo
from typing import Self

from cronsim import CronSim, CronSimError
from cronsim.explain import explain as cron_explain

from ..message import JSONValue
from .base import InvalidSchedule, Schedule
from .zones import require_aware, zone

__all__ = ["CronField", "crontab"]

_DAY_NAMES = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]
_MONTH_NAMES = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
_FULL_DAYS = ["sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday"]
_FULL_MONTHS = [m.lower() for m in calendar.month_name[1:]]
_MONTH_DAYS = [0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]


class _Field:
    """One crontab field: its name, bounds and the names it accepts."""

    def __init__(self, name: str, low: int, high: int, names: dict[str, int] | None = None):
        self.name = name
        self.low = low
        self.high = high
        self.names = names or {}

    def value(self, token: str, spec: str) -> int:
        if token in self.names:
            return self.names[token]
        if not token.isdigit():
            hint = f" or a name such as {next(iter(self.names))!r}" if self.names else ""
            raise self.error(spec, f"{token!r} is not a number{hint}")
        number = int(token)
        if self.name == "day_of_week" and number == 7:
            return 0  # Sunday, as in cron
        top = 7 if self.name == "day_of_week" else self.high
        if not self.low <= number <= top:
            raise self.error(spec, f"{number} is out of range {self.low}-{top}")
        return number

    def error(self, spec: str, why: str) -> InvalidSchedule:
        return InvalidSchedule(f"crontab {self.name}={spec!r}: {why}")

    def parse(self, spec: str) -> frozenset[int]:
        if not spec:
            raise self.error(spec, "empty field")
        values: set[int] = set()
        for term in spec.split(","):
            values.update(self._term(term, spec))
        return frozenset(values)

    def _term(self, term: str, spec: str) -> list[int]:
        base, slash, step_text = term.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) == 0:
                raise self.error(spec, f"step {step_text!r} in {term!r} must be a positive number")
            step = int(step_text)
        if base == "*":
            return list(range(self.low, self.high + 1, step))
        first_text, dash, last_text = base.partition("-")
        if not first_text:
            raise self.error(spec, f"{term!r} is not a value, a range or a step")
        first = self.value(first_text, spec)
        if dash:
            last = self.value(last_text, spec)
        elif slash:
            last = self.high  # "5/15" means 5 to the end in steps of 15, as in cron
        else:
            return [first]
        if last >= first:
            span = list(range(first, last + 1))
        elif self.name == "day_of_week" and last_text == "7":
            span = [*range(first, 7), 0]  # "5-7" is Friday to Sunday
        else:  # wraps around, as in Celery: "fri-mon", "22-2"
            span = [*range(first, self.high + 1), *range(self.low, last + 1)]
        return span[::step]

    def full(self, values: frozenset[int]) -> bool:
        return len(values) == self.high - self.low + 1


_MINUTE = _Field("minute", 0, 59)
_HOUR = _Field("hour", 0, 23)
_DAY_OF_WEEK = _Field(
    "day_of_week",
    0,
    6,
    {**{n: i for i, n in enumerate(_DAY_NAMES)}, **{n: i for i, n in enumerate(_FULL_DAYS)}},
)
_DAY_OF_MONTH = _Field("day_of_month", 1, 31)
_MONTH_OF_YEAR = _Field(
    "month_of_year",
    1,
    12,
    {
        **{n: i + 1 for i, n in enumerate(_MONTH_NAMES)},
        **{n: i + 1 for i, n in enumerate(_FULL_MONTHS)},
    },
)

_ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

CronField = int | str | Iterable[int | str]
#: The fields of a cron expression, in :class:`crontab`'s parameter order.
_FIELD_NAMES = ("minute", "hour", "day_of_week", "day_of_month", "month_of_year")


def _spec_text(value: CronField, field: _Field) -> str:
    if isinstance(value, bool):
        raise field.error(repr(value), "expected a number, a string or a list")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return "".join(value.split()).lower()
    if isinstance(value, Iterable):
        items = [_spec_text(item, field) for item in value]
        if not items:
            raise field.error("", "empty list")
        return ",".join(items)
    raise field.error(repr(value), "expected a number, a string or a list")


def _numbers(values: Iterable[int]) -> str:
    """Compact a set of numbers for cron text: ``1,2,3,4,5,9`` -> ``1-5,9``."""
    ordered = sorted(values)
    parts: list[str] = []
    start = prev = ordered[0]
    for value in [*ordered[1:], None]:
        if value is not None and value == prev + 1:
            prev = value
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if value is not None:
            start = prev = value
    return ",".join(parts)


class crontab(Schedule):
    """Celery's crontab: due at every combination of the given fields, in ``tz``.

    Each field takes an int, a list, or a string with ``*``, lists ``1,15``, ranges ``1-5``,
    steps ``*/15`` and ``0-30/10``, and names (``mon-fri``, ``jan,jul``). Sunday is 0 or 7.
    When both ``day_of_month`` and ``day_of_week`` are restricted, a day must match both
    (Celery's rule).
    """

    kind = "crontab"
    __slots__ = (
        "_day_filter",
        "_days_of_week",
        "_expr",
        "day_of_month",
        "day_of_week",
        "hour",
        "minute",
        "month_of_year",
        "tz",
    )

    def __init__(
        self,
        minute: CronField = "*",
        hour: CronField = "*",
        day_of_week: CronField = "*",
        day_of_month: CronField = "*",
        month_of_year: CronField = "*",
        tz: str | tzinfo | None = None,
    ) -> None:
        self.minute = _spec_text(minute, _MINUTE)
        self.hour = _spec_text(hour, _HOUR)
        self.day_of_week = _spec_text(day_of_week, _DAY_OF_WEEK)
        self.day_of_month = _spec_text(day_of_month, _DAY_OF_MONTH)
        self.month_of_year = _spec_text(month_of_year, _MONTH_OF_YEAR)
        self.tz = zone(tz)

        minutes = _MINUTE.parse(self.minute)
        hours = _HOUR.parse(self.hour)
        weekdays = _DAY_OF_WEEK.parse(self.day_of_week)
        days = _DAY_OF_MONTH.parse(self.day_of_month)
        months = _MONTH_OF_YEAR.parse(self.month_of_year)
        if min(days) > max(_MONTH_DAYS[m] for m in months):
            raise InvalidSchedule(
                f"crontab never fires: day_of_month={self.day_of_month!r} does not occur in "
                f"month_of_year={self.month_of_year!r}"
            )
        dom_restricted = not _DAY_OF_MONTH.full(days)
        dow_restricted = not _DAY_OF_WEEK.full(weekdays)
        # cronsim ORs day-of-month and day-of-week when both are restricted (standard cron);
        # Celery ANDs them, so then cronsim gets the days of month and we filter weekdays.
        self._day_filter = dom_restricted and dow_restricted
        self._days_of_week = weekdays
        # The hour field is "*" exactly when it is unrestricted: cronsim (like Debian cron)
        # applies the wall-clock DST rule only to expressions with specific hours.
        self._expr = " ".join(
            [
                _numbers(minutes),
                _numbers(hours) if not _HOUR.full(hours) else "*",
                _numbers(days) if dom_restricted else "*",
                _numbers(months) if not _MONTH_OF_YEAR.full(months) else "*",
                _numbers(weekdays) if dow_restricted and not self._day_filter else "*",
            ]
        )

    @classmethod
    def from_string(cls, expression: str, tz: str | tzinfo | None = None) -> crontab:
        """Parse ``"minute hour day_of_month month day_of_week"`` (or ``@daily`` and friends)."""
        text = _ALIASES.get(expression.strip().lower(), expression)
        parts = text.split()
        if len(parts) != 5:
            raise InvalidSchedule(
                f"crontab expression {expression!r} must have 5 fields "
                "(minute hour day_of_month month_of_year day_of_week), got {len(parts)}"
            )
        minute, hour, day_of_month, month_of_year, day_of_week = parts
        return cls(minute, hour, day_of_week, day_of_month, month_of_year, tz=tz)

    def next_after(self, moment: datetime) -> datetime | None:
        require_aware(moment)
        tz = self.tz or moment.tzinfo
        assert tz is not None
        after = moment.astimezone(UTC)
        start = moment.astimezone(tz)
        while True:
            try:
                for candidate in CronSim(self._expr, start):
                    # In wall-clock mode cronsim works on naive times: a repeated time may come
                    # back as its first occurrence, before ``moment``. Compare in UTC, since
                    # datetimes sharing a tzinfo compare by wall time and ignore fold.
                    if candidate.astimezone(UTC) <= after:
                        continue
                    if (
                        self._day_filter
                        and _cron_weekday(candidate.date()) not in self._days_of_week
                    ):
                        # Resume at the end of that day: cronsim ticks one second first.
                        start = datetime.combine(candidate.date(), time(23, 59, 59), tzinfo=tz)
                        break
                    return candidate.astimezone(UTC).astimezone(tz)
                else:  # pragma: no cover - cronsim raises StopIteration instead
                    return None
            except StopIteration:  # nothing within 50 years
                return None

    def describe(self) -> str:
        fields = [self.minute, self.hour, self.day_of_month, self.month_of_year]
        try:
            if self._day_filter:
                text = cron_explain(" ".join([*fields, "*"]))
                days = cron_explain(f"0 0 * * {self.day_of_week}").removeprefix("At 00:00 ")
                text = f"{text}, if it's {days}"
            else:
                text = cron_explain(" ".join([*fields, self.day_of_week]))
        except (CronSimError, ValueError, KeyError, IndexError):
            # Celery syntax cronsim does not read (full names, wrapping ranges): explain the
            # equivalent numeric form instead.
            text = cron_explain(self._expr)
            if self._day_filter:
                days = cron_explain(f"0 0 * * {_numbers(self._days_of_week)}")
                text = f"{text}, if it's {days.removeprefix('At 00:00 ')}"
        return f"{text} ({self.tz.key})" if self.tz else text

    def to_dict(self) -> dict[str, JSONValue]:
        return {
            "type": self.kind,
            "minute": self.minute,
            "hour": self.hour,
            "day_of_week": self.day_of_week,
            "day_of_month": self.day_of_month,
            "month_of_year": self.month_of_year,
            "tz": self.tz.key if self.tz else None,
        }

    @classmethod
    def _from_fields(cls, fields: dict[str, object]) -> Self:
        unknown = set(fields) - {*_FIELD_NAMES, "tz"}
        if unknown:
            raise InvalidSchedule(f"bad crontab fields {fields!r}: unexpected {sorted(unknown)}")
        tz = fields.get("tz")
        if not (tz is None or isinstance(tz, str | tzinfo)):
            raise InvalidSchedule(f"bad crontab fields {fields!r}: tz must be a zone name")

        def spec(name: str) -> CronField:
            value = fields.get(name, "*")
            if not isinstance(value, int | str | list | tuple):
                raise InvalidSchedule(f"bad crontab fields {fields!r}: {name} is {value!r}")
            return value

        return cls(
            minute=spec("minute"),
            hour=spec("hour"),
            day_of_week=spec("day_of_week"),
            day_of_month=spec("day_of_month"),
            month_of_year=spec("month_of_year"),
            tz=tz,
        )

    def __repr__(self) -> str:
        tz = f", tz={self.tz.key!r}" if self.tz else ""
        return (
            f"<crontab: {self.minute} {self.hour} {self.day_of_month} {self.month_of_year} "
            f"{self.day_of_week} (m/h/dM/MY/d){tz}>"
        )


def _cron_weekday(day: date) -> int:
    return (day.weekday() + 1) % 7  # cron counts from Sunday = 0
