"""The opt-in PrometheusRule under Pulumi's mocks, and the rules' scope and thresholds.

Whether the rules fire is promtool's to say: tests/integration/test_alert_rules.py.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from components.alerts import (
    JOB_FAILED,
    NO_RECENT_SUCCESS,
    WatchedCronJob,
    longest_gap_seconds,
    rule_groups,
)
from components.config import BeadsAutoDispatchArgs
from components.names import APP_NAME, DISPATCHER_NAME, REAPER_NAME
from devtools.manifests.mocks import Recorder, render_program
from devtools.paths import ROOT

PROMETHEUS_RULE = "kubernetes:monitoring.coreos.com/v1:PrometheusRule"


def the_rule(rendered: Recorder) -> dict[str, Any]:
    (rule,) = rendered.of_type(PROMETHEUS_RULE)
    return rule.inputs


def test_no_prometheus_rule_by_default() -> None:
    assert render_program().of_type(PROMETHEUS_RULE) == []


def test_alerts_enabled_adds_one_prometheus_rule_of_the_operators_kind() -> None:
    rule = the_rule(render_program({"alertsEnabled": "true"}))
    assert (rule["apiVersion"], rule["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    assert rule["metadata"]["name"] == APP_NAME
    assert rule["metadata"]["namespace"] == "beads-server"
    assert rule["metadata"]["labels"]["app.kubernetes.io/name"] == APP_NAME


def test_the_rule_carries_the_groups_for_this_namespace_and_schedules() -> None:
    config = {
        "alertsEnabled": "true",
        "namespace": "team-a",
        "dispatcherSchedule": "*/5 * * * *",
        "reaperSchedule": "@hourly",
    }
    rule = the_rule(render_program(config))
    assert rule["metadata"]["namespace"] == "team-a"
    assert rule["spec"]["groups"] == rule_groups(
        "team-a",
        [
            WatchedCronJob("dispatcher", DISPATCHER_NAME, "*/5 * * * *"),
            WatchedCronJob("reaper", REAPER_NAME, "@hourly"),
        ],
    )


def test_each_cronjob_gets_both_alerts_selecting_only_its_own_series() -> None:
    cronjobs = [
        WatchedCronJob("dispatcher", "a-dispatcher", "*/2 * * * *"),
        WatchedCronJob("reaper", "a-reaper", "*/10 * * * *"),
    ]
    (group,) = rule_groups("team-a", cronjobs)
    assert [(r["alert"], r["labels"]["cronjob"]) for r in group["rules"]] == [
        (NO_RECENT_SUCCESS, "a-dispatcher"),
        (JOB_FAILED, "a-dispatcher"),
        (NO_RECENT_SUCCESS, "a-reaper"),
        (JOB_FAILED, "a-reaper"),
    ]
    other = {"a-dispatcher": "a-reaper", "a-reaper": "a-dispatcher"}
    for rule in group["rules"]:
        own = rule["labels"]["cronjob"]
        assert f'"{own}"' in rule["expr"]
        assert other[own] not in rule["expr"]
        selectors = re.findall(r"\w+\{[^}]*\}", rule["expr"])
        assert selectors
        assert all('namespace="team-a"' in selector for selector in selectors)


@pytest.mark.parametrize(
    ("schedule", "limit_seconds"),
    [
        ("*/2 * * * *", 2 * 120),
        ("*/10 * * * *", 2 * 600),
        ("@hourly", 2 * 3600),
        ("@daily", 2 * 86400),
        ("0,50 * * * *", 2 * 50 * 60),  # the longest gap (50 min), not the shortest (10)
        ("0 9,17 * * *", 2 * 16 * 3600),  # overnight
        # Friday 17:59 to Monday 9:00: a weekday schedule does not alert on weekends.
        ("* 9-17 * * 1-5", 2 * ((2 * 24 + 15) * 3600 + 60)),
        ("0 0 * * SUN", 2 * 7 * 86400),
        ("0 0 31 * *", 2 * 61 * 86400),  # 31 July to 31 August is short; 31 May to 31 July not
    ],
)
def test_the_silence_limit_is_twice_the_schedules_longest_gap(
    schedule: str, limit_seconds: int
) -> None:
    watched = WatchedCronJob("dispatcher", "d", schedule)
    assert watched.silence_seconds == limit_seconds == 2 * longest_gap_seconds(schedule)
    (group,) = rule_groups("ns", [watched])
    assert f") > {limit_seconds}\n" in group["rules"][0]["expr"]


def test_the_runbooks_rule_file_is_the_default_stacks_rules() -> None:
    runbook = (ROOT / "docs" / "runbook.md").read_text(encoding="utf-8")
    section = runbook.split("\n## Alerts\n", 1)[1].split("\n## ", 1)[0]
    block = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    defaults = BeadsAutoDispatchArgs()
    expected = rule_groups(
        defaults.namespace,
        [
            WatchedCronJob("dispatcher", DISPATCHER_NAME, defaults.dispatcher_schedule),
            WatchedCronJob("reaper", REAPER_NAME, defaults.reaper_schedule),
        ],
    )
    assert yaml.safe_load(block) == {"groups": expected}
