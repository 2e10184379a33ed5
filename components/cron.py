"""Kubernetes CronJob schedules: validated before deploy, and counted (runs per day, the
longest wait between two runs)."""

from __future__ import annotations

import calendar
import itertools
from dataclasses import dataclass, field
from datetime import date, timedelta

# Kubernetes accepts these macros (robfig/cron's descriptors).
MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_MONTHS = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]
_DAYS = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"]


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: tuple[str, ...] = ()
    names_start: int = 0


_FIELDS = (
    _Field("minute", 0, 59),
    _Field("hour", 0, 23),
    _Field("day of month", 1, 31),
    _Field("month", 1, 12, tuple(_MONTHS), 1),
    _Field("day of week", 0, 6, tuple(_DAYS), 0),
)


class CronError(ValueError):
    pass


# Weekdays and leap years repeat every 28 years from 1901 to 2099: a gap between run days
# measured over one such cycle holds for every date a cluster will see.
_CYCLE_START = date(2001, 1, 1)
_CYCLE_DAYS = (date(2029, 1, 1) - _CYCLE_START).days
_MINUTES_A_DAY = 24 * 60


@dataclass(frozen=True)
class Days:
    """The calendar days a schedule runs on, as Kubernetes' cron library (robfig/cron) picks
    them: when both day fields are restricted a day matching either one runs, otherwise a day
    must match both (an unrestricted field matches every day)."""

    days_of_month: frozenset[int] = frozenset(range(1, 32))
    months: frozenset[int] = frozenset(range(1, 13))
    days_of_week: frozenset[int] = frozenset(range(7))  # 0 is Sunday
    either_field: bool = False

    def include(self, day: date) -> bool:
        if day.month not in self.months:
            return False
        by_month_day = day.day in self.days_of_month
        by_weekday = day.isoweekday() % 7 in self.days_of_week
        return (by_month_day or by_weekday) if self.either_field else by_month_day and by_weekday

    def ever(self) -> bool:
        """Some day of some year matches: `30 2` (30 February) alone never does."""
        if self.either_field or len(self.days_of_month) == 31:
            return True  # some weekday falls in every month
        # Leap years give February its 29th.
        longest = {month: calendar.monthrange(2000, month)[1] for month in self.months}
        return any(day <= longest[month] for month in self.months for day in self.days_of_month)


@dataclass(frozen=True)
class Schedule:
    """The times of day a valid schedule fires, and the days it fires on."""

    minutes: frozenset[int]
    hours: frozenset[int]
    days: Days = field(default_factory=Days)

    def runs_per_day(self) -> int:
        """Runs on a day the schedule is active at all (the busiest case for daily figures)."""
        return len(self.minutes) * len(self.hours)

    def min_interval_minutes(self) -> int:
        """Shortest gap between two runs within a day, wrapping across midnight."""
        times = sorted(h * 60 + m for h in self.hours for m in self.minutes)
        if len(times) == 1:
            return 24 * 60
        gaps = [b - a for a, b in itertools.pairwise(times)]
        gaps.append(times[0] + 24 * 60 - times[-1])
        return min(gaps)

    def longest_gap_minutes(self) -> int:
        """Longest wait between two runs: within a day, overnight, and over the days the
        schedule skips (`* 9-17 * * 1-5` waits from Friday 17:59 to Monday 9:00)."""
        times = sorted(h * 60 + m for h in self.hours for m in self.minutes)
        longest = max((b - a for a, b in itertools.pairwise(times)), default=0)
        start = _CYCLE_START
        run_days = [n for n in range(_CYCLE_DAYS) if self.days.include(start + timedelta(n))]
        # From the last run of one run day to the first of the next, the last run day of the
        # cycle wrapping to the first of the next cycle.
        following = [*run_days[1:], run_days[0] + _CYCLE_DAYS]
        for day, next_day in zip(run_days, following, strict=True):
            longest = max(longest, (next_day - day) * _MINUTES_A_DAY + times[0] - times[-1])
        return longest


def parse_schedule(expression: str) -> Schedule:
    text = " ".join(expression.split())
    if text.startswith("@"):
        if text not in MACROS:
            raise CronError(f"unknown macro {text!r} (use one of {', '.join(sorted(MACROS))})")
        text = MACROS[text]
    if text.upper().startswith(("TZ=", "CRON_TZ=")):
        raise CronError("time zones go in the CronJob's timeZone field, not the schedule")
    parts = text.split(" ")
    if len(parts) != 5:
        raise CronError(
            f"needs 5 fields (minute hour day-of-month month day-of-week), got {len(parts)}"
        )
    sets = [_parse_field(part, spec) for part, spec in zip(parts, _FIELDS, strict=True)]
    day_of_month, day_of_week = parts[2], parts[4]
    days = Days(
        days_of_month=sets[2],
        months=sets[3],
        days_of_week=sets[4],
        either_field=not (_unrestricted(day_of_month) or _unrestricted(day_of_week)),
    )
    if not days.ever():
        raise CronError(f"never runs: no month has day {day_of_month} in months {parts[3]}")
    return Schedule(minutes=sets[0], hours=sets[1], days=days)


def _unrestricted(text: str) -> bool:
    """A day field written as `*` or `?` (also inside a list), without a step: robfig/cron
    then lets the other day field alone decide. `*/2` is a restriction."""
    return any(item in ("*", "?", "*/1", "?/1") for item in text.split(","))


def _parse_field(text: str, spec: _Field) -> frozenset[int]:
    values: set[int] = set()
    for item in text.split(","):
        if not item:
            raise CronError(f"{spec.name}: empty list item in {text!r}")
        values |= _parse_item(item, spec)
    return frozenset(values)


def _parse_item(item: str, spec: _Field) -> set[int]:
    base, _, step_text = item.partition("/")
    step = 1
    if step_text:
        if not (step_text.isascii() and step_text.isdigit()) or int(step_text) == 0:
            raise CronError(f"{spec.name}: step must be a positive number in {item!r}")
        step = int(step_text)
    if base in ("*", "?"):
        if base == "?" and spec.name not in ("day of month", "day of week"):
            raise CronError(f"{spec.name}: '?' is only allowed for the day fields")
        low, high = spec.low, spec.high
    elif "-" in base:
        first, _, last = base.partition("-")
        low, high = _value(first, spec), _value(last, spec)
        if low > high:
            raise CronError(f"{spec.name}: range {base!r} runs backwards")
    else:
        low = _value(base, spec)
        # "5/10" means from 5 to the end in steps of 10, as robfig/cron reads it.
        high = spec.high if step_text else low
    return set(range(low, high + 1, step))


def _value(text: str, spec: _Field) -> int:
    upper = text.upper()
    if upper in spec.names:
        return spec.names.index(upper) + spec.names_start
    if not (text.isascii() and text.isdigit()):
        raise CronError(f"{spec.name}: {text!r} is not a number")
    value = int(text)
    high = 7 if spec.name == "day of week" else spec.high  # 7 is Sunday too
    if not spec.low <= value <= high:
        raise CronError(f"{spec.name}: {value} is outside {spec.low}-{high}")
    return value % 7 if spec.name == "day of week" else value
