"""The pod spec both CronJobs run: what the container sees, and how it is confined."""

from __future__ import annotations

from dataclasses import dataclass

from pulumi_kubernetes.core.v1 import (
    CapabilitiesArgs,
    ConfigMapEnvSourceArgs,
    ConfigMapVolumeSourceArgs,
    ContainerArgs,
    EmptyDirVolumeSourceArgs,
    EnvFromSourceArgs,
    EnvVarArgs,
    EnvVarSourceArgs,
    KeyToPathArgs,
    LocalObjectReferenceArgs,
    PodSecurityContextArgs,
    PodSpecArgs,
    ResourceRequirementsArgs,
    SeccompProfileArgs,
    SecretKeySelectorArgs,
    SecurityContextArgs,
    VolumeArgs,
    VolumeMountArgs,
)

from components.bundle import VENDOR_ZIP_NAME
from components.config import BeadsAutoDispatchArgs
from components.names import ObjectNames
from jobs.lock import PASSWORD_ENV
from jobs.settings import POD_BEADS_DB, env_name

# Where the pod sees things. /tmp is the one writable path (an emptyDir).
CODE_MOUNT = "/opt/beads-autodispatch/code"
VENDOR_MOUNT = "/opt/beads-autodispatch/vendor"
BD_CONFIG_MOUNT = "/etc/beads-autodispatch/bd"
# The runtime ConfigMap again, as files: a mounted ConfigMap is refreshed by the kubelet
# while the pod runs (env is not), so the kill switch reaches a running watch window.
RUNTIME_MOUNT = "/etc/beads-autodispatch/runtime"
SCRATCH_MOUNT = "/tmp"  # noqa: S108
POD_HOME = "/tmp"  # noqa: S108
PYTHONPATH = f"{CODE_MOUNT}:{VENDOR_MOUNT}/{VENDOR_ZIP_NAME}"
AGENT_UID = 1000  # the image's `agent` user


@dataclass(frozen=True)
class JobKind:
    name: str
    component: str
    command: str
    schedule: str
    deadline_seconds: int


def pod_spec(settings: BeadsAutoDispatchArgs, kind: JobKind, code_files: list[str]) -> PodSpecArgs:
    """The pod both CronJobs run: the reused agent image, restricted, code from ConfigMaps."""
    names = ObjectNames(settings.instance)
    env = [
        EnvVarArgs(name="PYTHONPATH", value=PYTHONPATH),
        EnvVarArgs(name="PYTHONDONTWRITEBYTECODE", value="1"),
        EnvVarArgs(name="PYTHONUNBUFFERED", value="1"),
        EnvVarArgs(name="HOME", value=POD_HOME),
        EnvVarArgs(name=env_name("beads_db"), value=str(POD_BEADS_DB)),
        EnvVarArgs(name=env_name("beads_metadata_file"), value=f"{BD_CONFIG_MOUNT}/metadata.json"),
        # Without it a watch window would only see the kill switch it started with.
        EnvVarArgs(name=env_name("runtime_config_dir"), value=RUNTIME_MOUNT),
        # Notes name their instance's CronJob, not the default one.
        EnvVarArgs(name=env_name("cronjob_name"), value=kind.name),
    ]
    if settings.dolt_password_secret_name:
        # An env var, not a mounted file, because bd reads it only from there (checkov
        # CKV_K8S_35 excepted in scan_exceptions).
        env.append(
            EnvVarArgs(
                name=PASSWORD_ENV,
                value_from=EnvVarSourceArgs(
                    secret_key_ref=SecretKeySelectorArgs(
                        name=settings.dolt_password_secret_name,
                        key=settings.dolt_password_secret_key,
                    )
                ),
            )
        )
    code_items = [
        KeyToPathArgs(key=file_name, path=f"jobs/{file_name}") for file_name in sorted(code_files)
    ]
    return PodSpecArgs(
        restart_policy="Never",
        # SIGTERM lets a run finish the POST in hand and note it, or hand unsent beads back.
        termination_grace_period_seconds=(
            settings.http_timeout_seconds + 2 * settings.bd_timeout_seconds + 10
        ),
        service_account_name=names.service_account,
        automount_service_account_token=False,
        enable_service_links=False,
        image_pull_secrets=(
            [LocalObjectReferenceArgs(name=settings.image_pull_secret)]
            if settings.image_pull_secret
            else None
        ),
        security_context=PodSecurityContextArgs(
            run_as_non_root=True,
            # The image's own user; checkov's "UID above 10000" (CKV_K8S_40) is excepted.
            run_as_user=AGENT_UID,
            run_as_group=AGENT_UID,
            fs_group=AGENT_UID,
            seccomp_profile=SeccompProfileArgs(type="RuntimeDefault"),
        ),
        containers=[
            ContainerArgs(
                name=kind.component,
                image=settings.image,
                # The tag and digest are config (checkov CKV_K8S_14/43 excepted only
                # for `latest` / no digest); IfNotPresent is deliberate (CKV_K8S_15).
                image_pull_policy="IfNotPresent",
                command=["python3", "-m", "jobs", kind.command],
                working_dir=SCRATCH_MOUNT,
                env=env,
                env_from=[
                    EnvFromSourceArgs(
                        config_map_ref=ConfigMapEnvSourceArgs(name=names.runtime_config)
                    )
                ],
                # No CPU limit on purpose (checkov CKV_K8S_11 excepted).
                resources=ResourceRequirementsArgs(
                    requests={"cpu": "50m", "memory": "128Mi"},
                    limits={"memory": "256Mi"},
                ),
                security_context=SecurityContextArgs(
                    allow_privilege_escalation=False,
                    read_only_root_filesystem=True,
                    capabilities=CapabilitiesArgs(drop=["ALL"]),
                ),
                volume_mounts=[
                    VolumeMountArgs(name="code", mount_path=CODE_MOUNT, read_only=True),
                    VolumeMountArgs(name="vendor", mount_path=VENDOR_MOUNT, read_only=True),
                    VolumeMountArgs(name="bd-config", mount_path=BD_CONFIG_MOUNT, read_only=True),
                    VolumeMountArgs(name="runtime", mount_path=RUNTIME_MOUNT, read_only=True),
                    VolumeMountArgs(name="scratch", mount_path=SCRATCH_MOUNT),
                ],
            )
        ],
        volumes=[
            VolumeArgs(
                name="code",
                config_map=ConfigMapVolumeSourceArgs(
                    name=names.code, items=code_items, default_mode=0o444
                ),
            ),
            VolumeArgs(
                name="vendor",
                config_map=ConfigMapVolumeSourceArgs(name=names.vendor, default_mode=0o444),
            ),
            VolumeArgs(
                name="bd-config",
                config_map=ConfigMapVolumeSourceArgs(name=names.bd_config, default_mode=0o444),
            ),
            VolumeArgs(
                name="runtime",
                config_map=ConfigMapVolumeSourceArgs(name=names.runtime_config, default_mode=0o444),
            ),
            VolumeArgs(
                name="scratch",
                empty_dir=EmptyDirVolumeSourceArgs(size_limit="64Mi"),
            ),
        ],
    )
