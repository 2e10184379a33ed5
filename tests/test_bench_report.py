"""`make bench`'s rows judge issue 19's targets: each figure past its target is marked missed,
and the production preset's pods a day come from the rendered CronJobs."""

from __future__ import annotations

from typing import Any

import pytest

from components.config import settings_from
from devtools.bench import measure, report
from devtools.bench.__main__ import BEFORE, LOW_CHURN, presets
from devtools.paths import ROOT

PRESETS = presets(ROOT / "Pulumi.prod.yaml")
SETTINGS = {name: settings_from(PRESETS[name]) for name in (BEFORE, LOW_CHURN)}
MISSED = "✗ MISSED"


def idle_figures(**changes: Any) -> dict[str, Any]:
    figures = {
        "polls": 20,
        "bd_calls": 1,
        "polls_without_bd": 19,
        "requests": 0,
        "seconds": 20.5,
        "poll_ms": 0.4,
        "quiet_ms": 0.4,
        "quiet_ms_p95": 1.2,
        "quiet_ms_max": 14.0,  # one poll descheduled on a loaded machine
        "python_mib": 40.0,
        "child_mib": 50.0,
        "signal": "dolt_hashof_db",
    }
    return figures | changes


def idle_row(**changes: Any) -> str:
    figures = {BEFORE: idle_figures(bd_calls=4, poll_ms=110.0), LOW_CHURN: idle_figures()}
    text = report.idle(figures, idle_figures(**changes), SETTINGS, 200)
    return text.splitlines()[-3]  # the embedded row carries the changes


def test_the_production_preset_makes_48_pods_a_day_and_the_one_before_72() -> None:
    figures = measure.schedules(PRESETS)
    per_day = {name: f["dispatcher_runs"] + f["reaper_runs"] for name, f in figures.items()}
    assert per_day == {"original": 864, BEFORE: 72, LOW_CHURN: 48}
    assert MISSED not in report.pods_per_day(figures)


def test_an_idle_window_of_one_bd_process_and_quick_checks_meets_its_target() -> None:
    assert MISSED not in idle_row()


@pytest.mark.parametrize(
    "changes",
    [
        {"bd_calls": 2},  # a bd process after the first poll
        {"requests": 1},
        {"quiet_ms_p95": 5.5},
        {"python_mib": 45.0, "child_mib": 56.0},
        {"quiet_ms": None, "quiet_ms_p95": None, "quiet_ms_max": None},  # none skipped bd
    ],
)
def test_an_idle_window_past_any_target_is_marked_missed(changes: dict[str, Any]) -> None:
    assert MISSED in idle_row(**changes)


@pytest.mark.parametrize(("gaps", "met"), [([0.4, 1.9], True), ([0.4, 2.1], False)])
def test_the_slowest_refill_gap_decides_the_utilisation_target(
    gaps: list[float], met: bool
) -> None:
    measured = {"gaps": gaps, "dispatched": 10.0}
    results = {LOW_CHURN: {"single": measured, "ten": measured}}
    text = report.utilisation(results, SETTINGS, agent_minutes=10, scale=10, original_pass=1.0)
    assert (MISSED not in text) == met


@pytest.mark.parametrize(
    ("in_window", "met"), [([0.5] * 18 + [2.9, 2.95], True), ([0.5] * 18 + [3.1, 3.2], False)]
)
def test_the_latency_p95_inside_a_window_is_judged_at_3_s(
    in_window: list[float], met: bool
) -> None:
    text = report.latency({LOW_CHURN: in_window}, SETTINGS, 1.0)
    window_row = next(line for line in text.splitlines() if "inside a window" in line)
    assert (MISSED not in window_row) == met
