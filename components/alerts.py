"""Alerts on the two CronJobs, over kube-state-metrics series: the rules, and the opt-in
PrometheusRule (prometheus-operator CRD) that carries them.

Two alerts per CronJob, each scoped to the instance's namespace and that CronJob's name:
- no successful run for more than twice the schedule's longest gap;
- a failed Job owned by the CronJob (kube-state-metrics names Jobs by `job_name` and links
  them to their CronJob through `kube_job_owner`).
Neither fires while the CronJob is suspended (the kill switch): the paused stack is expected
to be quiet. `rule_groups` is the one source of the expressions: the PrometheusRule, the
promtool tests and the runbook's copy for users without the operator are all made from it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
from pulumi_kubernetes.apiextensions import CustomResource
from pulumi_kubernetes.meta.v1 import ObjectMetaArgs

from components.cron import parse_schedule

RULE_GROUP = "beads-autodispatch"
NO_RECENT_SUCCESS = "BeadsAutoDispatchNoRecentSuccess"
JOB_FAILED = "BeadsAutoDispatchJobFailed"
# Missing one run is normal (a deadline, a node drain); missing two in a row is not.
MISSED_RUNS = 2


@dataclass(frozen=True)
class WatchedCronJob:
    """One CronJob the alerts watch: its role, its Kubernetes name and its schedule."""

    component: str  # "dispatcher" or "reaper"
    name: str
    schedule: str

    @property
    def silence_seconds(self) -> int:
        """How long without a successful run before the alert fires."""
        return MISSED_RUNS * longest_gap_seconds(self.schedule)


def longest_gap_seconds(schedule: str) -> int:
    """Longest wait between two scheduled runs, over the calendar.

    The longest, not the shortest: `0 9,17 * * *` waits 16 h overnight, and an alert sized on
    its 8 h gap would fire every night; `* 9-17 * * 1-5` waits the weekend, and an alert sized
    on a day would fire every Saturday.
    """
    return parse_schedule(schedule).longest_gap_minutes() * 60


def _selector(metric: str, **labels: str) -> str:
    matchers = ",".join(f'{key}="{_quoted(value)}"' for key, value in labels.items())
    return f"{metric}{{{matchers}}}"


def _quoted(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _unless_suspended(
    namespace: str, cronjob: WatchedCronJob, lookback_seconds: int | None = None
) -> str:
    suspend = _selector("kube_cronjob_spec_suspend", namespace=namespace, cronjob=cronjob.name)
    if lookback_seconds is not None:
        # Suspended at any point within the lookback: a resumed CronJob gets that long to
        # succeed again before its old last success counts against it.
        suspend = f"max_over_time({suspend}[{lookback_seconds}s])"
    return f"unless on (namespace)\n  max by (namespace) ({suspend}) > 0"


def no_recent_success_expr(namespace: str, cronjob: WatchedCronJob) -> str:
    """Seconds since the CronJob's last success (or its creation), when over the limit."""
    scope = {"namespace": namespace, "cronjob": cronjob.name}
    limit = cronjob.silence_seconds
    # A CronJob that never succeeded has no last-successful-time series: count from creation.
    return (
        f"time() - max by (namespace, cronjob) (\n"
        f"    {_selector('kube_cronjob_status_last_successful_time', **scope)}\n"
        f"  or\n"
        f"    {_selector('kube_cronjob_created', **scope)}\n"
        f") > {limit}\n" + _unless_suspended(namespace, cronjob, limit)
    )


def job_failed_expr(namespace: str, cronjob: WatchedCronJob) -> str:
    """Each Job of the CronJob whose Failed condition is true, while that Job exists."""
    failed = _selector("kube_job_failed", namespace=namespace, condition="true")
    owner = _selector(
        "kube_job_owner", namespace=namespace, owner_kind="CronJob", owner_name=cronjob.name
    )
    # max by: two kube-state-metrics replicas would otherwise make the join many-to-many.
    return (
        f"(max by (namespace, job_name) ({failed}) > 0)\n"
        f"* on (namespace, job_name) group_left (owner_name)\n"
        f"  max by (namespace, job_name, owner_name) ({owner})\n"
        + _unless_suspended(namespace, cronjob)
    )


def _rules_for(namespace: str, cronjob: WatchedCronJob) -> list[dict[str, Any]]:
    labels = {"severity": "warning", "cronjob": cronjob.name, "component": cronjob.component}
    return [
        {
            "alert": NO_RECENT_SUCCESS,
            "expr": no_recent_success_expr(namespace, cronjob),
            "labels": dict(labels),
            "annotations": {
                "summary": f"{cronjob.name} has not succeeded for over "
                f"{MISSED_RUNS} of its intervals",
                "description": f"No successful run of CronJob {namespace}/{cronjob.name} "
                "for {{ $value | humanizeDuration }} (limit "
                f"{cronjob.silence_seconds}s). See the runbook, Alerts.",
            },
        },
        {
            "alert": JOB_FAILED,
            "expr": job_failed_expr(namespace, cronjob),
            "labels": dict(labels),
            "annotations": {
                "summary": f"A run of {cronjob.name} failed",
                "description": f"Job {namespace}/{{{{ $labels.job_name }}}} of CronJob "
                f"{cronjob.name} failed. Read its logs (kubectl -n {namespace} logs "
                "job/{{ $labels.job_name }}), then delete the Job to clear the alert.",
            },
        },
    ]


def rule_groups(namespace: str, cronjobs: Sequence[WatchedCronJob]) -> list[dict[str, Any]]:
    """The rule groups, as a Prometheus rule file's `groups:` (and the CRD's spec) hold them."""
    rules = [rule for cronjob in cronjobs for rule in _rules_for(namespace, cronjob)]
    return [{"name": RULE_GROUP, "rules": rules}]


def prometheus_rule(
    resource_name: str,
    *,
    name: str,
    namespace: str,
    cronjobs: Sequence[WatchedCronJob],
    labels: Mapping[str, str],
    opts: pulumi.ResourceOptions,
) -> CustomResource:
    """The PrometheusRule object; the cluster needs the prometheus-operator CRDs."""
    return CustomResource(
        resource_name,
        api_version="monitoring.coreos.com/v1",
        kind="PrometheusRule",
        metadata=ObjectMetaArgs(name=name, namespace=namespace, labels=dict(labels)),
        spec={"groups": rule_groups(namespace, cronjobs)},
        opts=opts,
    )
