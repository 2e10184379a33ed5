"""The Pulumi program and BeadsAutoDispatch under Pulumi's mocks: what a deploy would create."""

from __future__ import annotations

import base64
import io
import json
import re
import zipfile
from collections.abc import Callable
from typing import Any, cast

import pulumi
import pulumi_kubernetes as kubernetes
import pytest
import yaml

from components.auto_dispatch import (
    CONFIG_MAP_MUTABLE_ENV,
    CONFIG_MAP_MUTABLE_KEY,
    BeadsAutoDispatch,
    bd_metadata_json,
)
from components.bundle import CONFIGMAP_LIMIT_BYTES, VENDOR_ZIP_NAME
from components.config import BeadsAutoDispatchArgs, settings_from
from components.names import (
    BD_CONFIG_NAME,
    CHECKSUM_ANNOTATION,
    CODE_NAME,
    DISPATCHER_NAME,
    REAPER_NAME,
    RUNTIME_CONFIG_NAME,
    SERVICE_ACCOUNT_NAME,
    VENDOR_NAME,
)
from devtools.manifests.mocks import (
    STACK_PROVIDER_CONFIG,
    Recorder,
    render_program,
    render_with_config,
)
from devtools.paths import ROOT
from jobs.settings import RuntimeSettings, env_name

CRONJOB = "kubernetes:batch/v1:CronJob"
CONFIGMAP = "kubernetes:core/v1:ConfigMap"


@pytest.fixture(scope="module")
def default_render() -> Recorder:
    return render_program()


def pod_spec(cronjob: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return spec


def container(cronjob: dict[str, Any]) -> dict[str, Any]:
    containers = pod_spec(cronjob)["containers"]
    assert len(containers) == 1
    result: dict[str, Any] = containers[0]
    return result


def test_resource_set_and_names(default_render: Recorder) -> None:
    kinds = sorted((r.type, r.name) for r in default_render.resources)
    assert kinds == [
        ("beads:autodispatch:BeadsAutoDispatch", "beads-autodispatch"),
        (CRONJOB, "beads-autodispatch-dispatcher"),
        (CRONJOB, "beads-autodispatch-reaper"),
        (CONFIGMAP, "beads-autodispatch-bd-config"),
        (CONFIGMAP, "beads-autodispatch-code"),
        (CONFIGMAP, "beads-autodispatch-runtime"),
        (CONFIGMAP, "beads-autodispatch-vendor"),
        ("kubernetes:core/v1:ServiceAccount", "beads-autodispatch-service-account"),
    ]
    names = {
        r.inputs["metadata"]["name"] for r in default_render.resources if "metadata" in r.inputs
    }
    assert names == {
        DISPATCHER_NAME,
        REAPER_NAME,
        BD_CONFIG_NAME,
        RUNTIME_CONFIG_NAME,
        CODE_NAME,
        VENDOR_NAME,
        SERVICE_ACCOUNT_NAME,
    }
    for resource in default_render.resources:
        if "metadata" in resource.inputs:
            assert resource.inputs["metadata"]["namespace"] == "beads-server"
            assert resource.inputs["metadata"]["labels"]["app.kubernetes.io/name"] == (
                "beads-autodispatch"
            )


def test_cronjobs_follow_the_runbook_defaults(default_render: Recorder) -> None:
    dispatcher = default_render.cronjob(DISPATCHER_NAME)
    reaper = default_render.cronjob(REAPER_NAME)
    assert dispatcher["spec"]["schedule"] == "*/2 * * * *"
    assert reaper["spec"]["schedule"] == "*/10 * * * *"
    for cronjob, command in ((dispatcher, "dispatch"), (reaper, "reap")):
        spec = cronjob["spec"]
        assert spec["suspend"] is False
        assert spec["concurrencyPolicy"] == "Forbid"
        assert spec["startingDeadlineSeconds"] == 60
        assert spec["successfulJobsHistoryLimit"] >= 1
        assert spec["failedJobsHistoryLimit"] >= 1
        job = spec["jobTemplate"]["spec"]
        assert job["backoffLimit"] == 0
        assert "ttlSecondsAfterFinished" not in job  # the history limits decide
        assert job["activeDeadlineSeconds"] > 0
        pod = pod_spec(cronjob)
        assert pod["restartPolicy"] == "Never"
        assert pod["imagePullSecrets"] == [{"name": "registry-credentials"}]
        box = container(cronjob)
        assert box["command"] == ["python3", "-m", "jobs", command]
        assert box["image"] == "claude-agent-service:latest"
        assert box["resources"]["requests"] == {"cpu": "50m", "memory": "128Mi"}
        assert box["resources"]["limits"]["memory"] == "256Mi"
        labels = spec["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
        for key in ("name", "component", "part-of", "managed-by"):
            assert f"app.kubernetes.io/{key}" in labels
    # The dispatcher run must end before the next one is due (schedule is every 2 minutes).
    assert dispatcher["spec"]["jobTemplate"]["spec"]["activeDeadlineSeconds"] < 120


def test_pod_env_points_at_the_mounted_code_and_a_writable_home(default_render: Recorder) -> None:
    box = container(default_render.cronjob(DISPATCHER_NAME))
    env = {item["name"]: item for item in box["env"]}
    mounts = {m["name"]: m for m in box["volumeMounts"]}
    pythonpath = env["PYTHONPATH"]["value"].split(":")
    assert pythonpath[0] == mounts["code"]["mountPath"]
    assert pythonpath[1] == f"{mounts['vendor']['mountPath']}/{VENDOR_ZIP_NAME}"
    scratch = mounts["scratch"]["mountPath"]
    assert env["HOME"]["value"].startswith(scratch)
    assert env["BEADS_DB"]["value"].startswith(scratch)
    assert env["BEADS_METADATA_FILE"]["value"] == (
        f"{mounts['bd-config']['mountPath']}/metadata.json"
    )
    # The kill switch reaches a running window only through the mounted runtime ConfigMap.
    assert env["RUNTIME_CONFIG_DIR"]["value"] == mounts["runtime"]["mountPath"]
    assert all(m.get("readOnly") for name, m in mounts.items() if name != "scratch")
    assert box["envFrom"] == [{"configMapRef": {"name": RUNTIME_CONFIG_NAME}}]


def test_bd_metadata_is_server_mode_with_production_values(default_render: Recorder) -> None:
    text = default_render.configmap(BD_CONFIG_NAME)["data"]["metadata.json"]
    # The dolt harness writes the same file without rendering; the two must agree.
    assert text == bd_metadata_json(settings_from({}))
    data = json.loads(text)
    assert data == {
        "backend": "dolt",
        "database": "dolt",
        "dolt_database": "code",
        "dolt_mode": "server",
        "dolt_server_host": "dolt.beads-server.svc.cluster.local",
        "dolt_server_port": 3306,
        "dolt_server_user": "beads",
    }


def test_runtime_config_carries_the_kill_switch_and_knobs(default_render: Recorder) -> None:
    data = default_render.configmap(RUNTIME_CONFIG_NAME)["data"]
    assert data["DISPATCHER_ENABLED"] == "true"
    assert data["BEADBOARD_URL"] == "http://beadboard.beads-server.svc.cluster.local"
    assert data["AGENT_ASSIGNEE"] == "agent"
    assert data["REAPER_THRESHOLD_MINUTES"] == "30"
    assert data["MAX_DISPATCH_ATTEMPTS"] == "3"
    # Exactly the runtime settings, each under the env name the jobs read.
    assert set(data) == {env_name(field) for field in RuntimeSettings.model_fields}


@pytest.mark.parametrize("enabled", ["false", "true"])
def test_kill_switch_suspends_both_cronjobs(enabled: str) -> None:
    rendered = render_program({"dispatcherEnabled": enabled})
    for name in (DISPATCHER_NAME, REAPER_NAME):
        assert rendered.cronjob(name)["spec"]["suspend"] is (enabled == "false")
    runtime = rendered.configmap(RUNTIME_CONFIG_NAME)["data"]
    assert runtime["DISPATCHER_ENABLED"] == enabled


def test_schedules_come_from_config() -> None:
    rendered = render_program({"dispatcherSchedule": "*/15 * * * *", "reaperSchedule": "@hourly"})
    assert rendered.cronjob(DISPATCHER_NAME)["spec"]["schedule"] == "*/15 * * * *"
    assert rendered.cronjob(REAPER_NAME)["spec"]["schedule"] == "@hourly"


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("dispatcherSchedule", "every 2 minutes", "config key 'dispatcherSchedule'"),
        ("dispatcherSchedule", "*/2 * * *", "needs 5 fields"),
        ("reaperSchedule", "61 * * * *", "minute: 61 is outside 0-59"),
        ("reaperSchedule", "*/0 * * * *", "step must be a positive number"),
        ("reaperThresholdMinutes", "0", "config key 'reaperThresholdMinutes'"),
        ("reaperThresholdMinutes", "-5", "greater than or equal to 1"),
        ("reaperThresholdMinutes", "thirty", "should be a valid integer"),
        ("maxDispatchAttempts", "0", "config key 'maxDispatchAttempts'"),
        ("beadboardUrl", "", "config key 'beadboardUrl'"),
        ("beadboardUrl", "ftp://beadboard", "http:// or https://"),
        ("beadboardUrl", "beadboard.svc", "http:// or https://"),
        ("namespace", "Beads_Server", "config key 'namespace': must be a DNS label"),
        ("namespace", "x" * 64, "must be a DNS label"),
        ("dispatcherEnabled", "maybe", "config key 'dispatcherEnabled': Input should be a valid"),
        ("agentAssignee", "agent OR 1", "config key 'agentAssignee'"),
        ("doltPort", "70000", "config key 'doltPort'"),
        ("doltPasswordSecretName", "Bad Name", "config key 'doltPasswordSecretName'"),
        ("image", "", "config key 'image'"),
    ],
)
def test_bad_config_fails_with_one_line_naming_the_key(key: str, value: str, message: str) -> None:
    with pytest.raises(Exception, match=re.escape(message)) as caught:
        render_program({key: value})
    assert isinstance(caught.value, pulumi.RunError)
    assert "\n" not in str(caught.value)
    assert f"'{key}'" in str(caught.value)


def test_code_configmap_embeds_exactly_the_jobs_package(default_render: Recorder) -> None:
    data = default_render.configmap(CODE_NAME)["data"]
    on_disk = {p.name: p.read_text(encoding="utf-8") for p in (ROOT / "jobs").glob("*.py")}
    assert data == on_disk
    items = pod_spec(default_render.cronjob(DISPATCHER_NAME))["volumes"][0]["configMap"]["items"]
    assert {item["key"]: item["path"] for item in items} == {
        name: f"jobs/{name}" for name in on_disk
    }


def test_vendor_zip_holds_httpx_its_sync_dependencies_and_pymysql(
    default_render: Recorder,
) -> None:
    encoded = default_render.configmap(VENDOR_NAME)["binaryData"][VENDOR_ZIP_NAME]
    names = zipfile.ZipFile(io.BytesIO(base64.b64decode(encoded))).namelist()
    tops = {name.split("/")[0] for name in names} - {"_licenses"}
    # PyMySQL asks the Dolt server for the dispatch lock in server mode.
    assert tops == {"httpx", "httpcore", "h11", "certifi", "idna", "pymysql"}
    assert "certifi/cacert.pem" in names
    assert not any("__pycache__" in name or name.endswith(".pyc") for name in names)


def test_every_configmap_is_under_one_mebibyte(default_render: Recorder) -> None:
    for resource in default_render.of_type(CONFIGMAP):
        size = len(json.dumps(resource.inputs).encode())
        assert size < CONFIGMAP_LIMIT_BYTES, resource.name


def test_two_renders_are_byte_identical() -> None:
    def dump(rendered: Recorder) -> str:
        # The engine registers resources concurrently: their order is not part of the output.
        resources = sorted((r.type, r.name, r.inputs) for r in rendered.resources)
        return json.dumps(resources, sort_keys=True)

    assert dump(render_program()) == dump(render_program())


def test_checksum_annotation_changes_with_code_or_config(default_render: Recorder) -> None:
    def annotation(rendered: Recorder) -> str:
        template = rendered.cronjob(DISPATCHER_NAME)["spec"]["jobTemplate"]["spec"]["template"]
        value: str = template["metadata"]["annotations"][CHECKSUM_ANNOTATION]
        return value

    base = annotation(default_render)
    assert re.fullmatch(r"[0-9a-f]{64}", base)
    assert annotation(render_program()) == base
    assert annotation(render_program({"maxDispatchAttempts": "4"})) != base
    assert annotation(render_program({"doltDatabase": "other"})) != base


def test_no_secret_value_in_any_env_literal() -> None:
    rendered = render_program(
        {"doltPasswordSecretName": "dolt-credentials", "doltPasswordSecretKey": "password"}
    )
    for name in (DISPATCHER_NAME, REAPER_NAME):
        env = container(rendered.cronjob(name))["env"]
        password = [item for item in env if item["name"] == "BEADS_DOLT_PASSWORD"]
        assert password == [
            {
                "name": "BEADS_DOLT_PASSWORD",
                "valueFrom": {"secretKeyRef": {"name": "dolt-credentials", "key": "password"}},
            }
        ]
        for item in env:
            assert not re.search(r"(?i)(password|token|secret)", item.get("value", "")), item
    # The BeadBoard token is not the jobs' business: nothing refers to its Secret.
    everything = json.dumps([r.inputs for r in rendered.resources])
    assert "beadboard-agent-service" not in everything
    assert "api_bearer_token" not in everything


def test_pod_security_is_restricted(default_render: Recorder) -> None:
    for name in (DISPATCHER_NAME, REAPER_NAME):
        pod = pod_spec(default_render.cronjob(name))
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 1000
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        box = container(default_render.cronjob(name))["securityContext"]
        assert box == {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        }


def test_prod_stack_holds_the_production_values() -> None:
    stack = yaml.safe_load((ROOT / "Pulumi.prod.yaml").read_text())["config"]
    values = {
        key.split(":", 1)[1]: str(value).lower() if isinstance(value, bool) else str(value)
        for key, value in stack.items()
        if key.startswith("beads-autodispatch:")
    }
    rendered = render_program(values)
    data = json.loads(rendered.configmap(BD_CONFIG_NAME)["data"]["metadata.json"])
    assert (data["dolt_server_host"], data["dolt_server_port"]) == (
        "dolt.beads-server.svc.cluster.local",
        3306,
    )
    assert (data["dolt_server_user"], data["dolt_database"]) == ("beads", "code")
    assert rendered.cronjob(DISPATCHER_NAME)["metadata"]["namespace"] == "beads-server"


@pytest.mark.parametrize("enabled", ["true", "false"])
def test_outputs_name_schedule_and_suspension(enabled: str) -> None:
    outputs = render_program({"dispatcherEnabled": enabled}).stack_outputs()
    assert outputs == {
        "dispatcherCronJob": DISPATCHER_NAME,
        "reaperCronJob": REAPER_NAME,
        "dispatcherSchedule": "*/2 * * * *",
        "reaperSchedule": "*/10 * * * *",
        "suspended": enabled == "false",
    }


# -- the component as a library: typed args, declared outputs, opts passed through ----------


def render_component(
    args: BeadsAutoDispatchArgs,
    opts: Callable[[], pulumi.ResourceOptions | None] = lambda: None,
    provider_config: dict[str, str] = STACK_PROVIDER_CONFIG,
) -> tuple[Recorder, dict[str, Any]]:
    """The component alone under mocks; also the values of its declared output attributes."""
    values: dict[str, Any] = {}

    def build() -> None:
        component = BeadsAutoDispatch("platform", args, opts())
        for attribute in OUTPUTS:
            getattr(component, attribute).apply(lambda v, a=attribute: values.__setitem__(a, v))

    return render_with_config(build, provider_config), values


OUTPUTS = {
    "namespace": "agents",
    "dispatcher_cron_job_name": DISPATCHER_NAME,
    "reaper_cron_job_name": REAPER_NAME,
    "runtime_config_map_name": RUNTIME_CONFIG_NAME,
    "config_map_names": [BD_CONFIG_NAME, RUNTIME_CONFIG_NAME, CODE_NAME, VENDOR_NAME],
    "service_account_name": SERVICE_ACCOUNT_NAME,
    "dispatcher_schedule": "*/5 * * * *",
    "reaper_schedule": "*/10 * * * *",
    "suspended": True,
}
ARGS = BeadsAutoDispatchArgs(
    namespace="agents", dispatcher_schedule="*/5 * * * *", dispatcher_enabled=False
)


def test_args_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        BeadsAutoDispatchArgs("agents")  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("arguments", "key"),
    [
        ({"namespace": "Agents"}, "namespace"),
        ({"dispatcherSchedule": "*/2 * * *"}, "dispatcherSchedule"),
        ({"max_dispatch_attempts": 0}, "maxDispatchAttempts"),
        ({"dispatcher_deadline_seconds": 130}, "dispatcherDeadlineSeconds"),
        ({"dispatcher_window_seconds": 120}, "dispatcherWindowSeconds"),
    ],
)
def test_bad_args_fail_with_one_line_naming_the_config_key(
    arguments: dict[str, Any], key: str
) -> None:
    with pytest.raises(pulumi.RunError) as caught:
        BeadsAutoDispatchArgs(**arguments)
    assert str(caught.value).startswith(f"config key {key!r}: ")
    assert "\n" not in str(caught.value)


def test_declared_outputs_resolve_and_are_registered() -> None:
    declared = {
        name for name, kind in BeadsAutoDispatch.__annotations__.items() if "Output[" in str(kind)
    }
    assert declared == set(OUTPUTS)
    rendered, values = render_component(ARGS)
    assert values == OUTPUTS
    registered = rendered.registered_outputs["platform"]
    assert registered == {
        re.sub(r"_(.)", lambda m: m[1].upper(), name): value for name, value in OUTPUTS.items()
    }


def test_a_provider_in_opts_is_every_childs_provider() -> None:
    def opts() -> pulumi.ResourceOptions:
        explicit = kubernetes.Provider("explicit", enable_config_map_mutable=True)
        return pulumi.ResourceOptions(provider=explicit)

    # No stack-level flag: the explicit provider is the one that applies.
    rendered, _ = render_component(ARGS, opts, provider_config={})
    children = [r for r in rendered.resources if r.type.startswith("kubernetes:")]
    assert len(children) == 7
    for child in children:
        assert child.provider.endswith("$pulumi:providers:kubernetes::explicit::explicit-id")


def test_a_transform_in_opts_sees_and_can_change_each_child() -> None:
    seen: list[tuple[str, str]] = []

    def label_everything(args: pulumi.ResourceTransformArgs) -> pulumi.ResourceTransformResult:
        seen.append((args.type_, args.name))
        props = dict(args.props)
        if "metadata" in props:
            metadata = cast(dict[str, Any], props["metadata"])
            props["metadata"] = {**metadata, "labels": {"team": "platform"}}
        return pulumi.ResourceTransformResult(props=props, opts=args.opts)

    rendered, _ = render_component(
        ARGS, lambda: pulumi.ResourceOptions(transforms=[label_everything])
    )
    assert sorted(seen) == sorted((r.type, r.name) for r in rendered.resources)
    children = [r for r in rendered.resources if r.type.startswith("kubernetes:")]
    assert len(children) == 7
    assert all(r.inputs["metadata"]["labels"] == {"team": "platform"} for r in children)


@pytest.mark.parametrize("flag", [None, "false"])
def test_without_mutable_configmaps_the_program_refuses_in_one_line(
    flag: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(CONFIG_MAP_MUTABLE_ENV, raising=False)
    provider_config = {} if flag is None else {CONFIG_MAP_MUTABLE_KEY: flag}
    with pytest.raises(pulumi.RunError) as caught:
        render_program(provider_config=provider_config)
    message = str(caught.value)
    assert "\n" not in message
    assert f"pulumi config set {CONFIG_MAP_MUTABLE_KEY} true" in message


@pytest.mark.parametrize(
    ("provider_config", "env"),
    [(STACK_PROVIDER_CONFIG, None), ({}, "true")],
)
def test_with_mutable_configmaps_the_runtime_configmap_is_updated_in_place(
    provider_config: dict[str, str], env: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The provider then updates a changed ConfigMap under its name, and the kubelet copies
    it into the running pods' mounts: the kill switch reaches a running window."""
    if env is None:
        monkeypatch.delenv(CONFIG_MAP_MUTABLE_ENV, raising=False)
    else:
        monkeypatch.setenv(CONFIG_MAP_MUTABLE_ENV, env)
    rendered = render_program({"dispatcherEnabled": "false"}, provider_config=provider_config)
    runtime = rendered.configmap(RUNTIME_CONFIG_NAME)
    assert runtime["data"]["DISPATCHER_ENABLED"] == "false"
    # Neither immutable nor renamed with its content, so the same object is updated.
    assert not any(r.inputs.get("immutable") for r in rendered.of_type(CONFIGMAP))
    volumes = pod_spec(rendered.cronjob(DISPATCHER_NAME))["volumes"]
    assert {
        "name": "runtime",
        "configMap": {"name": RUNTIME_CONFIG_NAME, "defaultMode": 0o444},
    } in [
        {**v, "configMap": {**v["configMap"], "defaultMode": int(v["configMap"]["defaultMode"])}}
        for v in volumes
        if "configMap" in v
    ]
