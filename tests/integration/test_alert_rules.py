"""`promtool test rules` over synthetic kube-state-metrics series: each alert fires when it
should, stays quiet when the CronJobs are healthy, and stays quiet while the stack is paused.

The rule file is components/alerts.py's `rule_groups`, the same the PrometheusRule carries.
Defaults: the dispatcher runs every 2 min (silence limit 240 s), the reaper every 10 min.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from components.alerts import JOB_FAILED, NO_RECENT_SUCCESS, WatchedCronJob, rule_groups

NS = "beads-server"
DISPATCHER = WatchedCronJob("dispatcher", "beads-dispatcher", "*/2 * * * *")
REAPER = WatchedCronJob("reaper", "beads-reaper", "*/10 * * * *")
FAILED_JOB = "beads-dispatcher-29400000"
KSM = 'job="kube-state-metrics"'


def series(metric: str, values: str, **labels: str) -> dict[str, str]:
    matchers = ",".join([KSM, *(f'{k}="{v}"' for k, v in labels.items())])
    return {"series": f"{metric}{{{matchers}}}", "values": values}


def cronjob_series(
    cronjob: str, *, last_success: str | None, suspend: str, namespace: str = NS
) -> list[dict[str, str]]:
    scope = {"namespace": namespace, "cronjob": cronjob}
    found = [
        series("kube_cronjob_created", "0x40", **scope),
        series("kube_cronjob_spec_suspend", suspend, **scope),
    ]
    if last_success is not None:  # kube-state-metrics has none before the first success
        found.append(series("kube_cronjob_status_last_successful_time", last_success, **scope))
    return found


def failed_job_series(
    job_name: str, owner: str, *, failed: bool = True, namespace: str = NS
) -> list[dict[str, str]]:
    scope = {"namespace": namespace, "job_name": job_name}
    return [
        series("kube_job_failed", "1x40" if failed else "0x40", condition="true", **scope),
        series("kube_job_failed", "0x40" if failed else "1x40", condition="false", **scope),
        series(
            "kube_job_owner",
            "1x40",
            owner_kind="CronJob",
            owner_name=owner,
            owner_is_controller="true",
            **scope,
        ),
    ]


def on_schedule(every_minutes: int, minutes: int = 40) -> str:
    """A last-successful-time that moves on at each scheduled run, as a healthy one does."""
    return " ".join(str(60 * every_minutes * (m // every_minutes)) for m in range(minutes + 1))


def stalled_alert(cronjob: WatchedCronJob, silent_for: str) -> dict[str, Any]:
    return {
        "exp_labels": {
            "namespace": NS,
            "cronjob": cronjob.name,
            "component": cronjob.component,
            "severity": "warning",
        },
        "exp_annotations": {
            "summary": f"{cronjob.name} has not succeeded for over 2 of its intervals",
            "description": f"No successful run of CronJob {NS}/{cronjob.name} for {silent_for} "
            f"(limit {cronjob.silence_seconds}s). See the runbook, Alerts.",
        },
    }


FAILED_ALERT = {
    "exp_labels": {
        "namespace": NS,
        "job_name": FAILED_JOB,
        "owner_name": DISPATCHER.name,
        "cronjob": DISPATCHER.name,
        "component": "dispatcher",
        "severity": "warning",
    },
    "exp_annotations": {
        "summary": f"A run of {DISPATCHER.name} failed",
        "description": f"Job {NS}/{FAILED_JOB} of CronJob {DISPATCHER.name} failed. Read its "
        f"logs (kubectl -n {NS} logs job/{FAILED_JOB}), then delete the Job to clear the alert.",
    },
}


def expect(at: str, alert: str, *alerts: dict[str, Any]) -> dict[str, Any]:
    return {"eval_time": at, "alertname": alert, "exp_alerts": list(alerts)}


HEALTHY = [
    *cronjob_series(DISPATCHER.name, last_success=on_schedule(2), suspend="0x40"),
    *cronjob_series(REAPER.name, last_success=on_schedule(10), suspend="0x40"),
]

SCENARIOS: dict[str, tuple[list[dict[str, str]], list[dict[str, Any]]]] = {
    "the dispatcher stops succeeding: fires once over twice its interval": (
        [
            *cronjob_series(DISPATCHER.name, last_success="0x40", suspend="0x40"),
            *cronjob_series(REAPER.name, last_success=on_schedule(10), suspend="0x40"),
        ],
        [
            expect("4m", NO_RECENT_SUCCESS),
            expect("5m", NO_RECENT_SUCCESS, stalled_alert(DISPATCHER, "5m 0s")),
            expect("30m", NO_RECENT_SUCCESS, stalled_alert(DISPATCHER, "30m 0s")),
        ],
    ),
    "the reaper stops succeeding: its own, longer limit": (
        [
            *cronjob_series(DISPATCHER.name, last_success=on_schedule(2), suspend="0x40"),
            *cronjob_series(REAPER.name, last_success="0x40", suspend="0x40"),
        ],
        [
            expect("20m", NO_RECENT_SUCCESS),
            expect("21m", NO_RECENT_SUCCESS, stalled_alert(REAPER, "21m 0s")),
        ],
    ),
    "a CronJob that never succeeded counts from its creation": (
        [
            *cronjob_series(DISPATCHER.name, last_success=None, suspend="0x40"),
            *cronjob_series(REAPER.name, last_success=on_schedule(10), suspend="0x40"),
        ],
        [
            expect("4m", NO_RECENT_SUCCESS),
            expect("5m", NO_RECENT_SUCCESS, stalled_alert(DISPATCHER, "5m 0s")),
        ],
    ),
    "a failed dispatcher Job fires, named by the Job": (
        [*HEALTHY, *failed_job_series(FAILED_JOB, DISPATCHER.name)],
        [
            expect("1m", JOB_FAILED, FAILED_ALERT),
            expect("1m", NO_RECENT_SUCCESS),
        ],
    ),
    "healthy: runs on schedule, a Job whose Failed condition is false": (
        [*HEALTHY, *failed_job_series(FAILED_JOB, DISPATCHER.name, failed=False)],
        [
            expect(at, alert)
            for at in ("5m", "21m", "40m")
            for alert in (NO_RECENT_SUCCESS, JOB_FAILED)
        ],
    ),
    "other CronJobs and other namespaces are not ours": (
        [
            *HEALTHY,
            *failed_job_series("nightly-backup-1", "nightly-backup"),
            *failed_job_series(FAILED_JOB, DISPATCHER.name, namespace="staging"),
            *cronjob_series(
                DISPATCHER.name, last_success="0x40", suspend="0x40", namespace="staging"
            ),
            *cronjob_series("nightly-backup", last_success="0x40", suspend="0x40"),
        ],
        [expect("30m", NO_RECENT_SUCCESS), expect("30m", JOB_FAILED)],
    ),
    "paused (both suspended): neither alert, stalled and failed as they are": (
        [
            *cronjob_series(DISPATCHER.name, last_success="0x40", suspend="1x40"),
            *cronjob_series(REAPER.name, last_success="0x40", suspend="1x40"),
            *failed_job_series(FAILED_JOB, DISPATCHER.name),
        ],
        [
            expect(at, alert)
            for at in ("5m", "21m", "40m")
            for alert in (NO_RECENT_SUCCESS, JOB_FAILED)
        ],
    ),
    "resumed (last seen suspended at 9m): quiet for twice the interval, then it fires": (
        [
            *cronjob_series(DISPATCHER.name, last_success="0x40", suspend="1x9 0x30"),
            *cronjob_series(REAPER.name, last_success=on_schedule(10), suspend="0x40"),
            *failed_job_series(FAILED_JOB, DISPATCHER.name),
        ],
        [
            expect("9m", JOB_FAILED),
            expect("10m", JOB_FAILED, FAILED_ALERT),
            expect("12m", NO_RECENT_SUCCESS),
            expect("13m", NO_RECENT_SUCCESS, stalled_alert(DISPATCHER, "13m 0s")),
        ],
    ),
}


def promtool_test(promtool: Path, workdir: Path, unit_test: dict[str, Any]) -> str:
    rules = workdir / "rules.json"  # JSON is YAML: promtool reads it as a rule file
    rules.write_text(json.dumps({"groups": rule_groups(NS, [DISPATCHER, REAPER])}))
    tests = workdir / "tests.json"
    tests.write_text(
        json.dumps({"rule_files": [rules.name], "evaluation_interval": "1m", "tests": [unit_test]})
    )
    done = subprocess.run(
        [str(promtool), "test", "rules", tests.name],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_rules(promtool: Path, tmp_path: Path, scenario: str) -> None:
    input_series, checks = SCENARIOS[scenario]
    unit_test = {"name": scenario, "interval": "1m", "input_series": input_series}
    promtool_test(promtool, tmp_path, unit_test | {"alert_rule_test": checks})


def test_promtool_accepts_the_rule_file(promtool: Path, tmp_path: Path) -> None:
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps({"groups": rule_groups(NS, [DISPATCHER, REAPER])}))
    checked = subprocess.run(
        [str(promtool), "check", "rules", str(rules)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 4 rules found" in checked.stdout
