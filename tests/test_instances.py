"""Several instances in one namespace, under Pulumi's mocks: names, labels, selectors, and
the production stack's identity kept (URNs and object names as main rendered them)."""

from __future__ import annotations

import json
import runpy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pulumi
import pulumi.runtime
import pulumi.runtime.mocks
import pytest
import yaml

from components.bundle import build_bundle
from components.config import settings_from
from components.names import INSTANCE_LABEL, VERSION_LABEL, ObjectNames
from devtools.manifests.mocks import (
    PROJECT,
    STACK_PROVIDER_CONFIG,
    Recorder,
    render_program,
    render_with_config,
)
from devtools.paths import ROOT
from jobs.settings import ConfigError

EXAMPLE = ROOT / "examples" / "two-agents"
IDENTITY = json.loads((Path(__file__).parent / "support" / "prod_identity.json").read_text())
CRONJOB = "kubernetes:batch/v1:CronJob"
POLICY = "kubernetes:networking.k8s.io/v1:NetworkPolicy"


@pytest.fixture
def urns(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every URN the mocks hand out during the test, as the engine would name them."""
    made: list[str] = []
    original = pulumi.runtime.mocks.MockMonitor.make_urn

    def recording(self: Any, parent: str, type_: str, name: str) -> str:
        urn: str = original(self, parent, type_, name)
        made.append(urn)
        return urn

    monkeypatch.setattr(pulumi.runtime.mocks.MockMonitor, "make_urn", recording)
    yield made


def prod_config(**extra: str) -> dict[str, str]:
    stack = yaml.safe_load((ROOT / "Pulumi.prod.yaml").read_text())["config"]
    values = {
        key.split(":", 1)[1]: str(value).lower() if isinstance(value, bool) else str(value)
        for key, value in stack.items()
        if key.startswith(f"{PROJECT}:")
    }
    return values | extra


def identity(recorder: Recorder, urns: list[str]) -> dict[str, Any]:
    objects = sorted(
        [r.type.rsplit(":", 1)[1], r.inputs["metadata"]["name"], r.inputs["metadata"]["namespace"]]
        for r in recorder.resources
        if "metadata" in r.inputs
    )
    stack_root = "::pulumi:pulumi:Stack::"
    return {"urns": sorted({u for u in urns if stack_root not in u}), "objects": objects}


@pytest.mark.parametrize(
    ("case", "extra"),
    [("prod", {}), ("prod_with_network_policy", {"networkPolicyEnabled": "true"})],
)
def test_the_prod_stack_keeps_its_urns_and_object_names(
    case: str, extra: dict[str, str], urns: list[str]
) -> None:
    """A preview of Pulumi.prod.yaml over today's stack replaces nothing: same URNs, same
    Kubernetes names (tests/support/prod_identity.json, rendered by main before instances)."""
    recorder = render_program(prod_config(**extra))
    expected = {key: IDENTITY[case][key] for key in ("urns", "objects")}
    assert identity(recorder, urns) == expected


def render_example(instances: dict[str, Any], shared: dict[str, Any] | None = None) -> Recorder:
    # The example's stack file sets the provider flag as every stack must.
    config = {**STACK_PROVIDER_CONFIG, "two-agents:instances": json.dumps(instances)}
    if shared is not None:
        config["two-agents:shared"] = json.dumps(shared)
    return render_with_config(
        lambda: runpy.run_path(str(EXAMPLE / "__main__.py"), run_name="__main__"),
        config,
        project="two-agents",
    )


def example_config() -> tuple[dict[str, Any], dict[str, Any]]:
    stack = yaml.safe_load((EXAMPLE / "Pulumi.dev.yaml").read_text())["config"]
    return stack["two-agents:instances"], stack["two-agents:shared"]


@pytest.fixture(scope="module")
def two() -> Recorder:
    instances, shared = example_config()
    return render_example(instances, shared)


def object_names(recorder: Recorder) -> list[str]:
    return [r.inputs["metadata"]["name"] for r in recorder.resources if "metadata" in r.inputs]


def test_each_instance_names_its_objects_after_itself(two: Recorder) -> None:
    names = object_names(two)
    assert len(names) == len(set(names)) == 14
    reviewer = ObjectNames("reviewer")
    assert {reviewer.dispatcher, reviewer.reaper, reviewer.runtime_config} <= set(names)
    assert {"beads-dispatcher", "beads-reaper", "beads-autodispatch-runtime"} <= set(names)


def test_each_pod_reads_its_own_instances_configmaps(two: Recorder) -> None:
    for instance in ("beads", "reviewer"):
        own = ObjectNames(instance)
        pod = two.cronjob(own.dispatcher)["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        volumes = {v["name"]: v["configMap"]["name"] for v in pod["volumes"] if "configMap" in v}
        assert set(volumes.values()) == {own.code, own.vendor, own.bd_config, own.runtime_config}
        [box] = pod["containers"]
        assert box["envFrom"] == [{"configMapRef": {"name": own.runtime_config}}]
        assert pod["serviceAccountName"] == own.service_account


def test_each_cronjobs_runs_sign_their_notes_with_its_name(two: Recorder) -> None:
    for instance in ("beads", "reviewer"):
        own = ObjectNames(instance)
        for cronjob in (own.dispatcher, own.reaper):
            pod = two.cronjob(cronjob)["spec"]["jobTemplate"]["spec"]["template"]["spec"]
            [box] = pod["containers"]
            env = {e["name"]: e.get("value") for e in box["env"]}
            assert env["CRONJOB_NAME"] == cronjob


def test_each_instance_carries_its_assignee_and_beadboard(two: Recorder) -> None:
    beads = two.configmap(ObjectNames("beads").runtime_config)["data"]
    reviewer = two.configmap(ObjectNames("reviewer").runtime_config)["data"]
    assert (beads["AGENT_ASSIGNEE"], reviewer["AGENT_ASSIGNEE"]) == ("agent", "reviewer")
    assert beads["BEADBOARD_URL"] != reviewer["BEADBOARD_URL"]


def pod_labels(recorder: Recorder, cronjob: str) -> dict[str, str]:
    labels: dict[str, str] = recorder.cronjob(cronjob)["spec"]["jobTemplate"]["spec"]["template"][
        "metadata"
    ]["labels"]
    return labels


def test_every_object_carries_its_instance_label(two: Recorder) -> None:
    for resource in two.resources:
        if "metadata" in resource.inputs:
            labels = resource.inputs["metadata"]["labels"]
            assert resource.inputs["metadata"]["name"].startswith(labels[INSTANCE_LABEL])


def test_pods_carry_the_jobs_bundle_digest_as_their_version(two: Recorder) -> None:
    version = pod_labels(two, "reviewer-dispatcher")[VERSION_LABEL]
    assert build_bundle().digest().startswith(version)
    assert len(version) == 12


@pytest.fixture(scope="module")
def two_with_policies() -> Recorder:
    instances, shared = example_config()
    return render_example(instances, shared | {"networkPolicyEnabled": True})


def test_each_network_policy_selects_its_own_instances_pods_only(
    two_with_policies: Recorder,
) -> None:
    policies = {
        p.inputs["metadata"]["labels"][INSTANCE_LABEL]: p.inputs["spec"]["podSelector"]
        for p in two_with_policies.of_type(POLICY)
    }
    assert set(policies) == {"beads", "reviewer"}
    for instance, selector in policies.items():
        for other in ("beads", "reviewer"):
            for cronjob in ObjectNames(other).dispatcher, ObjectNames(other).reaper:
                labels = pod_labels(two_with_policies, cronjob)
                chosen = selector["matchLabels"].items() <= labels.items()
                assert chosen == (other == instance), (instance, cronjob)


def test_a_cronjob_name_past_52_characters_is_refused_naming_the_key() -> None:
    with pytest.raises(ConfigError) as error:
        settings_from({"instance": "a" * 42})
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("config key 'instance'"), message
    assert "53 characters" in message and "at most 41" in message, message


def test_the_longest_instance_name_is_accepted() -> None:
    settings = settings_from({"instance": "a" * 41})
    assert len(ObjectNames(settings.instance).dispatcher) == 52


def test_the_program_refuses_it_at_preview_in_one_line() -> None:
    with pytest.raises(pulumi.RunError, match=r"^config key 'instance': makes the CronJob name"):
        render_program({"instance": "an-instance-name-that-is-far-too-long-for-it"})


def test_the_example_refuses_two_instances_for_one_assignee() -> None:
    same = {"a": {"agentAssignee": "agent"}, "b": {"agentAssignee": "agent"}}
    with pytest.raises(pulumi.RunError, match="served by another instance too"):
        render_example(same)


def history_limits(recorder: Recorder) -> set[tuple[int, int]]:
    specs = [r.inputs["spec"] for r in recorder.of_type(CRONJOB)]
    return {(s["successfulJobsHistoryLimit"], s["failedJobsHistoryLimit"]) for s in specs}


def test_no_ttl_undercuts_the_history_limits() -> None:
    recorder = render_program()
    for cronjob in recorder.of_type(CRONJOB):
        assert "ttlSecondsAfterFinished" not in cronjob.inputs["spec"]["jobTemplate"]["spec"]
    assert history_limits(recorder) == {(1, 3)}


def test_the_history_limits_are_config() -> None:
    config = {"successfulJobsHistoryLimit": "2", "failedJobsHistoryLimit": "5"}
    assert history_limits(render_program(config)) == {(2, 5)}
