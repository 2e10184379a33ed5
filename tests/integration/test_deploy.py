"""The real engine on the `local` stack: rendered manifests, config changes, and the rendered
CronJobs' containers run here against the real bd and a BeadBoard stand-in.

One `pulumi up` is shared by the module (`deployed` is what it rendered, parsed once); the
kill-switch and dnsConfig tests change the stack and put it back before they end.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from pulumi.automation import CommandError, OpType

from components.auto_dispatch import CONFIG_MAP_MUTABLE_KEY
from components.names import DISPATCHER_NAME, REAPER_NAME, RUNTIME_CONFIG_NAME
from devtools.localdeploy.stack import (
    PROJECT,
    STACK,
    LocalStack,
    Manifests,
    fake_secrets,
    local_run_overrides,
    pulumi_cli,
)
from devtools.localservices.bd import RealBd
from devtools.localservices.beadboard import AGENT_DISPATCH, BeadBoardStub
from devtools.paths import ROOT
from devtools.pods.process import JobRun
from devtools.pods.runner import make_image_like_venv, materialise
from jobs import notes
from jobs.lock import LOCK_FILE_NAME
from tests.integration.interleave import LEGACY_LOCK_BEAD

pytestmark = pytest.mark.slow

KUBERNETES_VERSION = "1.34"
CONFIGMAPS = {
    "beads-autodispatch-bd-config",
    "beads-autodispatch-code",
    "beads-autodispatch-runtime",
    "beads-autodispatch-vendor",
}


@pytest.fixture(scope="module")
def local_stack(tmp_path_factory: pytest.TempPathFactory) -> LocalStack:
    try:
        cli = pulumi_cli()
    except RuntimeError as exc:
        pytest.fail(f"cannot build the pulumi toolchain: {exc}")
    stack = LocalStack.create(tmp_path_factory.mktemp("local-stack") / "project", cli)
    result = stack.up()
    assert result.summary.result == "succeeded"
    return stack


@pytest.fixture(scope="module")
def deployed(local_stack: LocalStack) -> Manifests:
    """What the module's first `pulumi up` rendered, parsed now (later ups rewrite the files)."""
    return local_stack.manifests()


@pytest.fixture(scope="module")
def image_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_image_like_venv(tmp_path_factory.mktemp("image-venv"))


def committed_config() -> dict[str, Any]:
    document = yaml.safe_load((ROOT / f"Pulumi.{STACK}.yaml").read_text())
    config: dict[str, Any] = document["config"]
    return config


def run_container(
    manifests: Manifests,
    cronjob: str,
    pod_root: Path,
    python: Path,
    overrides: dict[str, str],
) -> JobRun:
    """One run of the rendered CronJob's container, as a fresh pod (new emptyDir)."""
    pod_spec = manifests.pod_spec(cronjob)
    pod = materialise(pod_spec, manifests.configmaps(), pod_root, secrets=fake_secrets(pod_spec))
    completed = pod.run(python, overrides)
    return JobRun(completed.returncode, completed.stdout, completed.stderr)


def all_bead_ids(bd: RealBd) -> set[str]:
    """Every bead in the database, closed ones included."""
    rows = json.loads(bd.run("list", "--all", "--limit", "0", "--json"))
    return {str(row["id"]) for row in rows}


def test_manifests_validate_against_kubernetes_1_34_strict(deployed: Manifests) -> None:
    rendered = {(d["kind"], d["metadata"]["name"]) for d in deployed.documents}
    expected = {("ConfigMap", name) for name in CONFIGMAPS}
    expected |= {("CronJob", DISPATCHER_NAME), ("CronJob", REAPER_NAME)}
    assert expected <= rendered
    for document in deployed.documents:
        used = kubernetes_validate.validate(document, f"{KUBERNETES_VERSION}.0", strict=True)
        assert used == KUBERNETES_VERSION, document["metadata"]["name"]


def test_strict_validation_rejects_an_unknown_field(deployed: Manifests) -> None:
    # Proof the validator is strict and really reads the pod template's schema.
    cronjob = copy.deepcopy(deployed.cronjob(DISPATCHER_NAME))
    cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["dnsConfg"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="dnsConfg"):
        kubernetes_validate.validate(cronjob, f"{KUBERNETES_VERSION}.0", strict=True)


def test_both_cronjobs_have_the_configured_schedules(
    deployed: Manifests, local_stack: LocalStack
) -> None:
    config = committed_config()
    expected = {
        DISPATCHER_NAME: config[f"{PROJECT}:dispatcherSchedule"],
        REAPER_NAME: config[f"{PROJECT}:reaperSchedule"],
    }
    # The local stack sets its own schedules, so this shows config reaching the manifests.
    assert expected[DISPATCHER_NAME] != "*/2 * * * *"
    for name, schedule in expected.items():
        spec = deployed.cronjob(name)["spec"]
        assert spec["schedule"] == schedule
        assert spec["suspend"] is False
    secret_refs = fake_secrets(deployed.pod_spec(DISPATCHER_NAME))
    assert secret_refs == {
        config[f"{PROJECT}:doltPasswordSecretName"]: {"password": "test-password"}
    }


def preview_ops(local_stack: LocalStack) -> dict[OpType, int]:
    result = local_stack.preview(diff=True)
    return {OpType(op): count for op, count in result.change_summary.items()}


def test_preview_right_after_up_reports_no_changes(local_stack: LocalStack) -> None:
    ops = preview_ops(local_stack)
    assert set(ops) == {OpType.SAME}, ops
    # The stack, the component and every rendered Kubernetes object.
    assert ops[OpType.SAME] == 2 + len(local_stack.manifests().documents)


def pod_specs_in_state(deployment: Mapping[str, Any] | None, part: str) -> list[dict[str, Any]]:
    """Both CronJobs' pod specs in exported state: `part` "live" (what the cluster returned)
    or "inputs" (what the program asked for)."""
    assert deployment is not None
    specs = []
    for resource in deployment["resources"]:
        if resource["type"] == "kubernetes:batch/v1:CronJob":
            state = resource["outputs"]
            source = state if part == "live" else state["__inputs"]
            specs.append(source["spec"]["jobTemplate"]["spec"]["template"]["spec"])
    assert len(specs) == 2
    return specs


def test_admission_added_dns_config_in_live_state_shows_no_diff(local_stack: LocalStack) -> None:
    """Why the program needs no ignore_changes for the dnsConfig a Kyverno policy adds.

    The provider diffs the new inputs against the live object pruned to the shape of the
    old inputs, so a field the program never sets is never compared. Simulated by writing
    what the cluster would hand back into the stack's state; a drifted field the program
    does set is the control.
    """
    original = local_stack.stack.export_stack()

    def edit_live(change: Any) -> None:
        deployment = copy.deepcopy(original)
        for pod in pod_specs_in_state(deployment.deployment, "live"):
            change(pod)
        local_stack.stack.import_stack(deployment)

    try:
        edit_live(lambda pod: pod.update(dnsConfig={"options": [{"name": "ndots", "value": "2"}]}))
        exported = local_stack.stack.export_stack().deployment
        assert all("dnsConfig" in pod for pod in pod_specs_in_state(exported, "live"))
        assert not any("dnsConfig" in pod for pod in pod_specs_in_state(exported, "inputs"))
        assert set(preview_ops(local_stack)) == {OpType.SAME}

        edit_live(lambda pod: pod.update(restartPolicy="OnFailure"))
        drifted = preview_ops(local_stack)
        assert set(drifted) == {OpType.SAME, OpType.UPDATE}
        assert drifted[OpType.UPDATE] == 2  # both CronJobs
    finally:
        local_stack.stack.import_stack(original)
    assert set(preview_ops(local_stack)) == {OpType.SAME}


def test_rendered_dispatcher_dispatches_an_agent_bead(
    deployed: Manifests,
    image_python: Path,
    real_bd: RealBd,
    beadboard: BeadBoardStub,
    tmp_path: Path,
) -> None:
    bead = real_bd.create("Fix the flaky test", priority=1, assignee="agent", acceptance="green")
    own_metadata = (real_bd.beads_dir / "metadata.json").read_text()
    overrides = local_run_overrides(real_bd.binary, real_bd.beads_dir, beadboard.url)

    # The first run on a new database dispatches at once: the lock is a flock on a file
    # beside the database, not a bead that has to be created first.
    first = run_container(deployed, DISPATCHER_NAME, tmp_path / "pod1", image_python, overrides)
    assert first.code == 0, first.stdout + first.stderr
    assert first.summary["dispatched"] == [bead]
    assert first.event("lock.acquired")["lock"] == f"flock {real_bd.beads_dir / LOCK_FILE_NAME}"
    assert [r.json for r in beadboard.requests_to(AGENT_DISPATCH)] == [{"taskId": bead}]
    after = real_bd.show(bead)
    assert after["status"] == "in_progress"
    assert "auto_dispatch_stage" not in after.get("metadata", {})
    [claimed] = after["notes"].splitlines()
    assert claimed.startswith(f"{notes.DISPATCHER} claimed at ")
    [dispatched] = [comment["text"] for comment in after["comments"]]
    assert dispatched.startswith("dispatched: job=job-1 ")
    # No bead was created along the way.
    assert all_bead_ids(real_bd) == {bead}

    # A second run (a new pod) finds nothing left: one bd call, no request.
    second = run_container(deployed, DISPATCHER_NAME, tmp_path / "pod2", image_python, overrides)
    assert second.code == 0, second.stdout + second.stderr
    done = second.summary
    assert done["outcome"] == "queue_empty"
    assert done["bd_calls"] == done["polls"] == done["idle_polls"] >= 1
    assert len(beadboard.requests_to(AGENT_DISPATCH)) == 1
    # The embedded database kept its own metadata.json (BEADS_METADATA_FILE blank).
    assert (real_bd.beads_dir / "metadata.json").read_text() == own_metadata
    assert json.loads(own_metadata)["dolt_mode"] == "embedded"


def test_rendered_reaper_blocks_a_stale_bead(
    deployed: Manifests,
    image_python: Path,
    real_bd: RealBd,
    beadboard: BeadBoardStub,
    tmp_path: Path,
) -> None:
    stuck = real_bd.create("Agent run that died", assignee="agent", acceptance="x")
    real_bd.update(stuck, "--status", "in_progress")
    human = real_bd.create("Alice is on it", assignee="alice", acceptance="x")
    real_bd.update(human, "--status", "in_progress")
    runtime = deployed.configmaps()[RUNTIME_CONFIG_NAME]["data"]
    threshold = int(runtime["REAPER_THRESHOLD_MINUTES"])
    # Both look untouched for threshold + 1 minutes (bd import rewrites their stamps).
    for bead in (stuck, human):
        real_bd.backdate(bead, threshold + 1)
    overrides = local_run_overrides(real_bd.binary, real_bd.beads_dir, beadboard.url)

    run = run_container(deployed, REAPER_NAME, tmp_path / "pod", image_python, overrides)
    assert run.code == 0, run.stdout + run.stderr
    assert run.summary["blocked"] == [stuck]
    after = real_bd.show(stuck)
    assert after["status"] == "blocked"
    assert after["notes"].startswith(
        f"beads-reaper: no progress for {threshold + 1}m (threshold {threshold}m) — blocking"
    )
    assert real_bd.show(human)["status"] == "in_progress"
    assert beadboard.requests == []


def test_kill_switch_suspends_both_cronjobs_and_the_jobs_do_nothing(
    local_stack: LocalStack,
    image_python: Path,
    real_bd: RealBd,
    beadboard: BeadBoardStub,
    tmp_path: Path,
) -> None:
    waiting = real_bd.create("Waits for the agent", priority=0, assignee="agent", acceptance="x")
    stuck = real_bd.create("Stuck", assignee="agent", acceptance="x")
    real_bd.update(stuck, "--status", "in_progress")
    real_bd.backdate(stuck, 120)
    before = {bead: real_bd.show(bead) for bead in (waiting, stuck)}
    overrides = local_run_overrides(real_bd.binary, real_bd.beads_dir, beadboard.url)

    local_stack.set_config("dispatcherEnabled", "false")
    try:
        local_stack.up()
        paused = local_stack.manifests()
        assert local_stack.outputs()["suspended"] is True
        for name in (DISPATCHER_NAME, REAPER_NAME):
            assert paused.cronjob(name)["spec"]["suspend"] is True
        runtime = paused.configmaps()[RUNTIME_CONFIG_NAME]["data"]
        assert runtime["DISPATCHER_ENABLED"] == "false"

        # A run that starts anyway (kubectl create job --from=cronjob/...) does nothing.
        for number, name in enumerate((DISPATCHER_NAME, DISPATCHER_NAME, REAPER_NAME)):
            run = run_container(paused, name, tmp_path / f"pod{number}", image_python, overrides)
            assert run.code == 0, run.stdout + run.stderr
            assert [e["event"] for e in run.events] == ["run.start", "run.paused"]
        assert beadboard.requests == []
        assert {bead: real_bd.show(bead) for bead in before} == before
        # Nothing was created either: no bead (not even an old-style lock bead), no lock file.
        assert all_bead_ids(real_bd) == set(before)
        assert real_bd.query(f"id={LEGACY_LOCK_BEAD}") == []
        assert not (real_bd.beads_dir / LOCK_FILE_NAME).exists()
    finally:
        local_stack.set_config("dispatcherEnabled", "true")
        local_stack.up()
    resumed = local_stack.manifests()
    for name in (DISPATCHER_NAME, REAPER_NAME):
        assert resumed.cronjob(name)["spec"]["suspend"] is False
    assert resumed.configmaps()[RUNTIME_CONFIG_NAME]["data"]["DISPATCHER_ENABLED"] == "true"
    assert local_stack.outputs()["suspended"] is False


def test_a_runtime_change_updates_the_configmap_in_place_and_without_the_flag_is_refused(
    local_stack: LocalStack,
) -> None:
    """With kubernetes:enableConfigMapMutable (every stack file sets it) the provider updates
    the runtime ConfigMap under its name, which running pods see; without it the program
    stops at preview instead of letting the provider delete and re-create it."""
    local_stack.set_config("maxDispatchAttempts", "4")
    try:
        ops = preview_ops(local_stack)
        # The runtime ConfigMap, and both CronJobs for their pod-template checksum.
        assert ops.get(OpType.REPLACE, 0) == 0, ops
        assert ops[OpType.UPDATE] == 3, ops
        local_stack.set_config(CONFIG_MAP_MUTABLE_KEY, "false")
        with pytest.raises(CommandError) as refused:
            local_stack.preview()
        assert f"run `pulumi config set {CONFIG_MAP_MUTABLE_KEY} true`" in str(refused.value)
    finally:
        local_stack.set_config(CONFIG_MAP_MUTABLE_KEY, "true")
        local_stack.stack.remove_config(f"{PROJECT}:maxDispatchAttempts")
    assert set(preview_ops(local_stack)) == {OpType.SAME}
