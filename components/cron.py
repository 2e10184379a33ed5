"""Kubernetes CronJob schedules: validated before deploy, and counted (runs per day)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Schedule:
    """The times of day a valid schedule fires (the day fields are checked, not kept)."""

    minutes: frozenset[int]
    hours: frozenset[int]

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
    return Schedule(minutes=sets[0], hours=sets[1])


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
