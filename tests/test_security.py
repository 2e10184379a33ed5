"""What a deploy grants the jobs, read from the mock-rendered manifests: a dedicated service
account without an API token, Pod Security "restricted" on every pod and container, an
optional egress-only NetworkPolicy, and scanner exceptions that say why."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from components.names import (
    APP_NAME,
    DEFAULT_INSTANCE,
    DISPATCHER_NAME,
    INSTANCE_LABEL,
    NETWORK_POLICY_NAME,
    REAPER_NAME,
    SERVICE_ACCOUNT_NAME,
)
from components.network import BEADBOARD_POD_PORT
from devtools.manifests.mocks import Recorder, render_program
from devtools.manifests.render import CONFIGS, plain, write

SERVICE_ACCOUNT = "kubernetes:core/v1:ServiceAccount"
NETWORK_POLICY = "kubernetes:networking.k8s.io/v1:NetworkPolicy"
CRONJOBS = (DISPATCHER_NAME, REAPER_NAME)
AGENT_URL = "http://claude-agent-service.agents.svc.cluster.local:8080/health"


@pytest.fixture(scope="module")
def default_render() -> Recorder:
    return render_program()


@pytest.fixture(scope="module")
def policy_render() -> Recorder:
    return render_program({"networkPolicyEnabled": "true", "agentHealthUrl": AGENT_URL})


def pod_template(rendered: Recorder, cronjob: str) -> dict[str, Any]:
    template: dict[str, Any] = rendered.cronjob(cronjob)["spec"]["jobTemplate"]["spec"]["template"]
    return template


def network_policy(rendered: Recorder) -> dict[str, Any]:
    (policy,) = rendered.of_type(NETWORK_POLICY)
    body: dict[str, Any] = plain(policy.inputs)
    return body


# -- the service account -------------------------------------------------------------------


def test_both_cronjobs_run_as_a_dedicated_service_account_without_a_token(
    default_render: Recorder,
) -> None:
    (account,) = default_render.of_type(SERVICE_ACCOUNT)
    assert account.inputs["metadata"]["name"] == SERVICE_ACCOUNT_NAME == "beads-autodispatch"
    assert account.inputs["metadata"]["namespace"] == "beads-server"
    assert account.inputs["automountServiceAccountToken"] is False
    for cronjob in CRONJOBS:
        pod = pod_template(default_render, cronjob)["spec"]
        assert pod["serviceAccountName"] == SERVICE_ACCOUNT_NAME
        # Off on the pod too: either one left on would mount a token.
        assert pod["automountServiceAccountToken"] is False


# -- Pod Security Standards, "restricted" (which includes "baseline") ------------------------

RESTRICTED_VOLUMES = {
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
}
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
}


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """Every rule of Pod Security Standards "restricted" (v1.30) a pod spec breaks."""
    problems: list[str] = []
    pod_ctx = pod.get("securityContext", {})
    for host in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(host):
            problems.append(f"pod {host}")
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            problems.append(f"volume {volume['name']}: {sorted(kinds)}")
    for sysctl in pod_ctx.get("sysctls", []):
        if sysctl["name"] not in SAFE_SYSCTLS:
            problems.append(f"sysctl {sysctl['name']}")
    if pod_ctx.get("runAsUser") == 0:
        problems.append("pod runAsUser 0")
    pod_seccomp = pod_ctx.get("seccompProfile", {}).get("type")
    if pod_seccomp == "Unconfined":
        problems.append("pod seccomp Unconfined")
    if pod_ctx.get("appArmorProfile", {}).get("type") == "Unconfined":
        problems.append("pod AppArmor Unconfined")
    containers = pod.get("initContainers", []) + pod["containers"]
    for box in containers:
        ctx = box.get("securityContext", {})
        name = box["name"]
        if ctx.get("privileged"):
            problems.append(f"{name}: privileged")
        if ctx.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation not false")
        non_root = ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot"))
        if non_root is not True or ctx.get("runAsNonRoot") is False:
            problems.append(f"{name}: runAsNonRoot not true")
        if ctx.get("runAsUser") == 0:
            problems.append(f"{name}: runAsUser 0")
        seccomp = ctx.get("seccompProfile", {}).get("type", pod_seccomp)
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{name}: seccomp {seccomp}")
        capabilities = ctx.get("capabilities", {})
        if "ALL" not in capabilities.get("drop", []):
            problems.append(f"{name}: capabilities not dropping ALL")
        if set(capabilities.get("add", [])) - {"NET_BIND_SERVICE"}:
            problems.append(f"{name}: adds {capabilities['add']}")
        if ctx.get("procMount", "Default") != "Default":
            problems.append(f"{name}: procMount")
        if ctx.get("seLinuxOptions", {}).get("type") not in (
            None,
            "",
            "container_t",
            "container_init_t",
            "container_kvm_t",
            "container_engine_t",
        ):
            problems.append(f"{name}: SELinux type")
        if any(port.get("hostPort") for port in box.get("ports", [])):
            problems.append(f"{name}: hostPort")
    return problems


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def each_config_render(request: pytest.FixtureRequest) -> Recorder:
    """Every sample config's render, once per module: each render costs ~0.5 s."""
    return render_program(CONFIGS[request.param])


@pytest.fixture(params=CRONJOBS)
def pod(each_config_render: Recorder, request: pytest.FixtureRequest) -> dict[str, Any]:
    spec: dict[str, Any] = pod_template(each_config_render, request.param)["spec"]
    return spec


def test_every_pod_meets_pod_security_restricted(pod: dict[str, Any]) -> None:
    assert restricted_violations(pod) == []


# The specific fields below, so a change to any of them is named in the failure.


def test_every_pod_runs_as_uid_1000_not_root(pod: dict[str, Any]) -> None:
    context = pod["securityContext"]
    assert (context["runAsNonRoot"], context["runAsUser"]) == (True, 1000)


def test_every_pod_has_the_default_seccomp_profile(pod: dict[str, Any]) -> None:
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}


def test_every_container_drops_every_privilege(pod: dict[str, Any]) -> None:
    contexts = [box["securityContext"] for box in pod["containers"]]
    assert [(c["allowPrivilegeEscalation"], c["capabilities"]) for c in contexts] == [
        (False, {"drop": ["ALL"]})
    ] * len(contexts)


def test_every_container_has_a_read_only_root(pod: dict[str, Any]) -> None:
    assert [box["securityContext"]["readOnlyRootFilesystem"] for box in pod["containers"]] == [
        True
    ] * len(pod["containers"])


def test_the_one_writable_path_is_an_empty_dir_at_tmp(pod: dict[str, Any]) -> None:
    # HOME and the beads dir live there.
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    for box in pod["containers"]:
        writable = [m for m in box["volumeMounts"] if not m.get("readOnly")]
        assert [m["mountPath"] for m in writable] == ["/tmp"]
        assert "emptyDir" in volumes[writable[0]["name"]]


@pytest.mark.parametrize(
    ("break_it", "named"),
    [
        (lambda pod: pod["containers"][0]["securityContext"].pop("capabilities"), "ALL"),
        (lambda pod: pod["securityContext"].update(runAsNonRoot=False), "runAsNonRoot"),
        (lambda pod: pod["securityContext"].pop("seccompProfile"), "seccomp"),
        (
            lambda pod: pod["containers"][0]["securityContext"].update(
                allowPrivilegeEscalation=True
            ),
            "allowPrivilegeEscalation",
        ),
        (lambda pod: pod["volumes"].append({"name": "h", "hostPath": {"path": "/"}}), "hostPath"),
        (lambda pod: pod.update(hostNetwork=True), "hostNetwork"),
    ],
    ids=["capabilities", "root", "seccomp", "escalation", "hostPath", "hostNetwork"],
)
def test_the_restricted_check_notices_a_weakened_pod(
    default_render: Recorder, break_it: Any, named: str
) -> None:
    pod = copy.deepcopy(pod_template(default_render, DISPATCHER_NAME)["spec"])
    break_it(pod)
    assert any(named in problem for problem in restricted_violations(pod))


# -- the NetworkPolicy ------------------------------------------------------------------------


@pytest.mark.parametrize("config", [{}, {"networkPolicyEnabled": "false"}])
def test_no_network_policy_unless_enabled(config: dict[str, str]) -> None:
    assert render_program(config).of_type(NETWORK_POLICY) == []


def test_network_policy_selects_both_jobs_and_allows_no_ingress(policy_render: Recorder) -> None:
    policy = network_policy(policy_render)
    assert policy["metadata"]["name"] == NETWORK_POLICY_NAME
    assert policy["metadata"]["namespace"] == "beads-server"
    spec = policy["spec"]
    selector = spec["podSelector"]["matchLabels"]
    assert selector == {"app.kubernetes.io/name": APP_NAME, INSTANCE_LABEL: DEFAULT_INSTANCE}
    for cronjob in CRONJOBS:
        pod_labels = pod_template(policy_render, cronjob)["metadata"]["labels"]
        assert selector.items() <= pod_labels.items(), cronjob
    # Ingress listed as a policy type with no rule: every inbound connection is refused.
    assert sorted(spec["policyTypes"]) == ["Egress", "Ingress"]
    assert not spec.get("ingress")


def test_network_policy_egress_is_dns_dolt_beadboard_and_agent_only(
    policy_render: Recorder,
) -> None:
    dns, dolt, board, agent = network_policy(policy_render)["spec"]["egress"]
    assert dns == {
        "to": [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}}
        ],
        "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
    }
    # Dolt and BeadBoard are Services in the jobs' own namespace.
    assert dolt == {"to": [{"podSelector": {}}], "ports": [{"protocol": "TCP", "port": 3306}]}
    # Not the Service's port 80: the policy sees the packet after it reached the pod.
    assert board == {
        "to": [{"podSelector": {}}],
        "ports": [{"protocol": "TCP", "port": BEADBOARD_POD_PORT}],
    }
    assert BEADBOARD_POD_PORT == 3000
    assert agent == {
        "to": [
            {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "agents"}},
                "podSelector": {},
            }
        ],
        "ports": [{"protocol": "TCP", "port": 8080}],
    }


def test_without_an_agent_url_the_agent_gets_no_rule() -> None:
    rules = network_policy(render_program({"networkPolicyEnabled": "true"}))["spec"]["egress"]
    assert [rule["ports"][0]["port"] for rule in rules] == [53, 3306, BEADBOARD_POD_PORT]


@pytest.mark.parametrize(
    ("config", "dolt_peer", "dolt_port", "board_peer", "board_port"),
    [
        (
            {"doltPort": "3307", "doltHost": "dolt.data.svc.cluster.local"},
            {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "data"}},
                "podSelector": {},
            },
            3307,
            {"podSelector": {}},
            BEADBOARD_POD_PORT,
        ),
        (
            {"doltHost": "dolt", "beadboardUrl": "http://beadboard"},
            {"podSelector": {}},
            3306,
            {"podSelector": {}},
            BEADBOARD_POD_PORT,
        ),
        (
            {"doltHost": "10.1.2.3", "beadboardUrl": "https://beadboard.example.com"},
            {"ipBlock": {"cidr": "10.1.2.3/32"}},
            3306,
            {"ipBlock": {"cidr": "0.0.0.0/0"}},
            443,
        ),
    ],
    ids=["other-namespace", "bare-names", "outside-the-cluster"],
)
def test_network_policy_destinations_follow_the_config(
    config: dict[str, str],
    dolt_peer: dict[str, Any],
    dolt_port: int,
    board_peer: dict[str, Any],
    board_port: int,
) -> None:
    rendered = render_program({"networkPolicyEnabled": "true", **config})
    _, dolt, board = network_policy(rendered)["spec"]["egress"]
    assert dolt == {"to": [dolt_peer], "ports": [{"protocol": "TCP", "port": dolt_port}]}
    assert board == {"to": [board_peer], "ports": [{"protocol": "TCP", "port": board_port}]}


# -- scanner exceptions -----------------------------------------------------------------------


def exceptions(rendered: Recorder, cronjob: str) -> dict[str, str]:
    annotations = rendered.cronjob(cronjob)["metadata"].get("annotations", {})
    pairs = (value.split("=", 1) for key, value in annotations.items() if "checkov.io/skip" in key)
    return {check: reason for check, reason in pairs}


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({}, {"CKV_K8S_11", "CKV_K8S_14", "CKV_K8S_15", "CKV_K8S_40", "CKV_K8S_43"}),
        (
            {"image": "reg.example/agent:1.4.2"},
            {"CKV_K8S_11", "CKV_K8S_15", "CKV_K8S_40", "CKV_K8S_43"},
        ),
        (
            {"image": "reg.example/agent@sha256:" + "0" * 64},
            {"CKV_K8S_11", "CKV_K8S_15", "CKV_K8S_40"},
        ),
        (
            {"doltPasswordSecretName": "dolt"},
            {"CKV_K8S_11", "CKV_K8S_14", "CKV_K8S_15", "CKV_K8S_35", "CKV_K8S_40", "CKV_K8S_43"},
        ),
    ],
    ids=["latest", "pinned-tag", "digest", "password-secret"],
)
def test_scanner_exceptions_are_only_those_the_config_needs_and_say_why(
    config: dict[str, str], expected: set[str]
) -> None:
    rendered = render_program(config)
    for cronjob in CRONJOBS:
        found = exceptions(rendered, cronjob)
        assert set(found) == expected
        assert all(len(reason) > 40 for reason in found.values()), found


def test_rendered_yaml_is_what_kubernetes_would_receive(tmp_path: Path) -> None:
    written = write(tmp_path, {"policy": {"networkPolicyEnabled": "true"}})
    documents = [yaml.safe_load(path.read_text()) for path in written]
    assert sorted((d["apiVersion"], d["kind"]) for d in documents) == [
        ("batch/v1", "CronJob"),
        ("batch/v1", "CronJob"),
        ("networking.k8s.io/v1", "NetworkPolicy"),
        ("v1", "ConfigMap"),
        ("v1", "ConfigMap"),
        ("v1", "ConfigMap"),
        ("v1", "ConfigMap"),
        ("v1", "ServiceAccount"),
    ]
    policy = next(d for d in documents if d["kind"] == "NetworkPolicy")
    # Whole numbers, as the API expects (the mocks hand numbers over as floats).
    assert policy["spec"]["egress"][0]["ports"][0]["port"] == 53
    assert isinstance(policy["spec"]["egress"][0]["ports"][0]["port"], int)
