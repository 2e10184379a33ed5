"""examples/two-agents on the real control plane: two instances side by side in one namespace,
each with its own assignee and BeadBoard stand-in, deployed once by the real pulumi CLI and
kubernetes provider; and the CronJob controller keeping finished runs by the history limits.

One deployment serves every test here, in order: up, dispatch, history, pause one, remove
one. Schedules are yearly: every run is a Job made from a CronJob by hand, so no test waits
for a cron minute.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from pulumi import automation as auto

from components.names import INSTANCE_LABEL, VERSION_LABEL, ObjectNames
from devtools.localcluster import Cluster
from devtools.localdeploy.stack import ClusterStack, pulumi_cli
from devtools.localservices.beadboard import BeadBoardStub
from devtools.localservices.dolt import DATABASE, DOLT_PASSWORD, DOLT_USER, DoltServer
from devtools.paths import ROOT
from devtools.pods.kube import Api
from tests.cluster.conftest import (
    DOLT_SECRET,
    ExecutorProcess,
    Jobs,
    Run,
    ServerBeads,
    job_finished,
    wait_until,
)
from tests.support.harness import posted

pytestmark = [pytest.mark.integration, pytest.mark.cluster]

PROJECT = "two-agents"
NAMESPACE = "beads-two"
CODER, REVIEWER = ObjectNames("coder"), ObjectNames("reviewer")
YEARLY = "0 0 1 1 *"


@dataclass
class TwoAgents:
    stack: ClusterStack
    instances: dict[str, dict[str, Any]]
    boards: dict[str, BeadBoardStub]
    jobs: Jobs
    first_up: auto.UpResult

    def up(self, instances: dict[str, dict[str, Any]]) -> auto.UpResult:
        """`pulumi up` with `instances` as the stack's config key `instances`."""
        self.stack.set_config(f"{PROJECT}:instances", json.dumps(instances))
        self.instances = instances
        result = self.stack.up()
        assert result.summary.result == "succeeded", result.stdout
        return result


@pytest.fixture(scope="module")
def two_agents(
    cluster: Cluster,
    api: Api,
    dolt: DoltServer,
    executor: ExecutorProcess,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[TwoAgents]:
    cluster.kubectl("create", "namespace", NAMESPACE)
    restricted = "pod-security.kubernetes.io/enforce=restricted"
    cluster.kubectl("label", "namespace", NAMESPACE, restricted)
    cluster.kubectl(
        "-n", NAMESPACE, "create", "secret", "generic", DOLT_SECRET,
        f"--from-literal=password={DOLT_PASSWORD}",
    )  # fmt: skip
    shared = {
        "namespace": NAMESPACE,
        "doltHost": "127.0.0.1",
        "doltPort": dolt.port,
        "doltDatabase": DATABASE,
        "doltUser": DOLT_USER,
        "doltPasswordSecretName": DOLT_SECRET,
        "imagePullSecret": "",
        "dispatcherSchedule": YEARLY,
        "reaperSchedule": YEARLY,
        "httpTimeoutSeconds": 5,
    }
    with BeadBoardStub() as coder_board, BeadBoardStub() as reviewer_board:
        boards = {"coder": coder_board, "reviewer": reviewer_board}
        instances = {
            name: {"agentAssignee": name, "beadboardUrl": board.url}
            for name, board in boards.items()
        }
        work_dir = tmp_path_factory.mktemp("two-agents") / "project"
        config = {f"{PROJECT}:shared": shared, f"{PROJECT}:instances": instances}
        stack = ClusterStack.create(
            work_dir, cluster.kubeconfig, config, pulumi_cli(), print, ROOT / "examples" / PROJECT
        )
        result = stack.up()
        assert result.summary.result == "succeeded", result.stdout
        yield TwoAgents(stack, instances, boards, Jobs(api, NAMESPACE, executor), result)


def live(cluster: Cluster, *args: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(
        cluster.kubectl("-n", NAMESPACE, "get", *args, "-o", "json").stdout
    )
    return document


def live_names(cluster: Cluster, instance: str) -> list[str]:
    listed = live(cluster, "cronjob,configmap,serviceaccount", "-l", f"{INSTANCE_LABEL}={instance}")
    return sorted(f"{o['kind']}/{o['metadata']['name']}" for o in listed["items"])


def expected_names(names: ObjectNames) -> list[str]:
    configmaps = (names.bd_config, names.code, names.runtime_config, names.vendor)
    return sorted(
        [f"ConfigMap/{c}" for c in configmaps]
        + [f"CronJob/{names.dispatcher}", f"CronJob/{names.reaper}"]
        + [f"ServiceAccount/{names.service_account}"]
    )


def create_bead(beads: ServerBeads, assignee: str) -> str:
    return beads.run(
        "create", f"for {assignee}", "--assignee", assignee, "--acceptance", "x", "--silent"
    ).strip()  # fmt: skip


def start_job(cluster: Cluster, cronjob: str, job_name: str) -> str:
    cluster.kubectl("-n", NAMESPACE, "create", "job", f"--from=cronjob/{cronjob}", job_name)
    return job_name


def dispatched(run: Run) -> list[str]:
    return list(run.event("tick.done").get("dispatched") or [])


def test_two_instances_come_up_side_by_side(two_agents: TwoAgents, cluster: Cluster) -> None:
    # The stack, and per instance the component, four ConfigMaps, a ServiceAccount, two CronJobs.
    assert two_agents.first_up.summary.resource_changes == {"create": 17}
    assert live_names(cluster, "coder") == expected_names(CODER)
    assert live_names(cluster, "reviewer") == expected_names(REVIEWER)
    for cronjob in (CODER.dispatcher, REVIEWER.reaper):
        labels = live(cluster, "cronjob", cronjob)["spec"]["jobTemplate"]["spec"]["template"][
            "metadata"
        ]["labels"]
        assert labels[INSTANCE_LABEL] == cronjob.split("-")[0] and labels[VERSION_LABEL]


def test_each_instance_dispatches_only_its_assignees_beads_to_its_own_board(
    two_agents: TwoAgents, cluster: Cluster, beads: ServerBeads
) -> None:
    mine = {name: create_bead(beads, name) for name in ("coder", "reviewer")}
    started = [
        start_job(cluster, names.dispatcher, f"{names.instance}-by-hand")
        for names in (CODER, REVIEWER)
    ]
    runs = {name.split("-")[0]: two_agents.jobs.wait(name) for name in started}
    for instance, run in runs.items():
        assert run.exit_code == 0, run.output
        assert dispatched(run) == [mine[instance]], run.output
        assert posted(two_agents.boards[instance]) == [mine[instance]]
        assert beads.show(mine[instance])["status"] == "in_progress"


def owned_jobs(two_agents: TwoAgents, cronjob: str) -> dict[str, dict[str, Any]]:
    return {j["metadata"]["name"]: j for j in two_agents.jobs.owned_by(cronjob)}


def succeeded(job: dict[str, Any]) -> bool:
    return bool(job.get("status", {}).get("succeeded"))


def failing_job(cronjob: dict[str, Any], name: str) -> dict[str, Any]:
    """A run of the CronJob's own template that fails at once (a setting it refuses), owned
    by the CronJob as `kubectl create job --from` owns it, so its history limits apply."""
    template = copy.deepcopy(cronjob["spec"]["jobTemplate"])
    [container] = template["spec"]["template"]["spec"]["containers"]
    container["env"].append({"name": "BD_TIMEOUT_SECONDS", "value": "0"})
    owner = {"apiVersion": "batch/v1", "kind": "CronJob", "controller": True}
    owner |= {"name": cronjob["metadata"]["name"], "uid": cronjob["metadata"]["uid"]}
    metadata = {"name": name, "labels": template["metadata"]["labels"], "ownerReferences": [owner]}
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": template["spec"]}


def test_history_limits_keep_the_failed_run_and_trim_the_successful_ones(
    two_agents: TwoAgents, cluster: Cluster
) -> None:
    """successfulJobsHistoryLimit 1, failedJobsHistoryLimit 3 (the defaults): after a failed
    run and three successful ones the controller leaves the failed Job, its pod and log,
    and the newest successful Job."""
    reaper = live(cluster, "cronjob", REVIEWER.reaper)
    job = failing_job(reaper, "reaper-fails")
    cluster.kubectl("-n", NAMESPACE, "create", "-f", "-", stdin=json.dumps(job))
    failed = two_agents.jobs.wait("reaper-fails")
    assert failed.exit_code == 2 and "BD_TIMEOUT_SECONDS" in failed.output, failed.output
    for number in range(3):
        two_agents.jobs.wait(start_job(cluster, REVIEWER.reaper, f"reaper-ok-{number}"))

    def trimmed() -> dict[str, dict[str, Any]] | None:
        jobs = owned_jobs(two_agents, REVIEWER.reaper)
        ok = [name for name, j in jobs.items() if succeeded(j)]
        return jobs if len(ok) == 1 else None

    kept = wait_until("the CronJob controller to trim to one successful Job", trimmed, 60)
    assert sorted(kept) == ["reaper-fails", "reaper-ok-2"], sorted(kept)
    assert all(job_finished(j) for j in kept.values())
    # Nothing else will delete it: no TTL, and its pod (and so `kubectl logs`) stays.
    assert "ttlSecondsAfterFinished" not in kept["reaper-fails"]["spec"]
    assert two_agents.jobs.pod_of("reaper-fails") is not None


def test_pausing_one_instance_leaves_the_other_running(
    two_agents: TwoAgents, cluster: Cluster, beads: ServerBeads
) -> None:
    paused = copy.deepcopy(two_agents.instances)
    paused["reviewer"]["dispatcherEnabled"] = False
    two_agents.up(paused)
    suspended = {
        name: live(cluster, "cronjob", name)["spec"]["suspend"]
        for name in (CODER.dispatcher, CODER.reaper, REVIEWER.dispatcher, REVIEWER.reaper)
    }
    assert suspended == {
        CODER.dispatcher: False,
        CODER.reaper: False,
        REVIEWER.dispatcher: True,
        REVIEWER.reaper: True,
    }
    mine = {name: create_bead(beads, name) for name in ("coder", "reviewer")}
    names = [start_job(cluster, n.dispatcher, f"{n.instance}-paused") for n in (CODER, REVIEWER)]
    coder, reviewer = (two_agents.jobs.wait(name) for name in names)
    assert dispatched(coder) == [mine["coder"]], coder.output
    assert [e["event"] for e in reviewer.events] == ["run.start", "run.paused"], reviewer.output
    assert beads.show(mine["reviewer"])["status"] == "open"
    assert mine["reviewer"] not in posted(two_agents.boards["reviewer"])


def uids(cluster: Cluster, instance: str) -> dict[str, str]:
    listed = live(cluster, "cronjob,configmap,serviceaccount", "-l", f"{INSTANCE_LABEL}={instance}")
    return {o["metadata"]["name"]: o["metadata"]["uid"] for o in listed["items"]}


def test_removing_one_instance_leaves_the_other_intact(
    two_agents: TwoAgents, cluster: Cluster
) -> None:
    before = uids(cluster, "reviewer")
    remaining = {"reviewer": two_agents.instances["reviewer"]}
    result = two_agents.up(remaining)
    # The coder's component and its seven objects; nothing of the reviewer's changes.
    assert result.summary.resource_changes == {"delete": 8, "same": 9}, result.summary
    wait_until("the coder's objects to be gone", lambda: uids(cluster, "coder") == {}, 60)
    assert uids(cluster, "reviewer") == before
