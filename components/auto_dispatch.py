"""BeadsAutoDispatch: the dispatcher and reaper CronJobs and the ConfigMaps they run from."""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
from dataclasses import dataclass
from urllib.parse import urlsplit

import pulumi
from pulumi_kubernetes.batch.v1 import (
    CronJob,
    CronJobSpecArgs,
    JobSpecArgs,
    JobTemplateSpecArgs,
)
from pulumi_kubernetes.core.v1 import (
    CapabilitiesArgs,
    ConfigMap,
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
    PodTemplateSpecArgs,
    ResourceRequirementsArgs,
    SeccompProfileArgs,
    SecretKeySelectorArgs,
    SecurityContextArgs,
    ServiceAccount,
    VolumeArgs,
    VolumeMountArgs,
)
from pulumi_kubernetes.meta.v1 import LabelSelectorArgs, ObjectMetaArgs
from pulumi_kubernetes.networking.v1 import (
    IPBlockArgs,
    NetworkPolicy,
    NetworkPolicyEgressRuleArgs,
    NetworkPolicyPeerArgs,
    NetworkPolicyPortArgs,
    NetworkPolicySpecArgs,
)

from components.bundle import VENDOR_ZIP_NAME, Bundle, build_bundle
from components.config import DeploySettings
from jobs import settings as job_env

COMPONENT_TYPE = "beads:autodispatch:BeadsAutoDispatch"
APP_NAME = "beads-auto-dispatch"
PART_OF = "beads"
DISPATCHER_NAME = "beads-dispatcher"
REAPER_NAME = "beads-reaper"
BD_CONFIG_NAME = "beads-autodispatch-bd-config"
RUNTIME_CONFIG_NAME = "beads-autodispatch-runtime"
CODE_NAME = "beads-autodispatch-code"
VENDOR_NAME = "beads-autodispatch-vendor"
CHECKSUM_ANNOTATION = "beads.autodispatch/checksum"
# One identity for both CronJobs, with no API token: the jobs never call the Kubernetes API.
SERVICE_ACCOUNT_NAME = "beads-autodispatch"
NETWORK_POLICY_NAME = "beads-autodispatch"

# Where the pod sees things. /tmp is the one writable path (an emptyDir).
CODE_MOUNT = "/opt/beads-autodispatch/code"
VENDOR_MOUNT = "/opt/beads-autodispatch/vendor"
BD_CONFIG_MOUNT = "/etc/beads-autodispatch/bd"
# The runtime ConfigMap again, as files: a mounted ConfigMap is refreshed by the kubelet
# while the pod runs (env is not), so the kill switch reaches a running watch window.
RUNTIME_MOUNT = "/etc/beads-autodispatch/runtime"
SCRATCH_MOUNT = "/tmp"  # noqa: S108
POD_HOME = "/tmp"  # noqa: S108
POD_BEADS_DB = "/tmp/.beads"  # noqa: S108
PYTHONPATH = f"{CODE_MOUNT}:{VENDOR_MOUNT}/{VENDOR_ZIP_NAME}"
AGENT_UID = 1000  # the image's `agent` user
# bd reads the Dolt password only from this env var (a name, not a secret).
DOLT_PASSWORD_ENV = "BEADS_DOLT_PASSWORD"  # noqa: S105


# BeadBoard's Service listens on 80 and forwards to the Next.js server on 3000. A
# NetworkPolicy is enforced after the Service's address translation, on the packet as it
# reaches the pod, so it must name the pod's port (3000); naming 80 would block BeadBoard.
BEADBOARD_POD_PORT = 3000
# Every namespace carries this label (Kubernetes >= 1.21), so it can select one by name.
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
DNS_NAMESPACE = "kube-system"


@dataclass(frozen=True)
class JobKind:
    name: str
    component: str
    command: str
    schedule: str
    deadline_seconds: int


def bd_metadata(settings: DeploySettings) -> dict[str, object]:
    """bd's server-mode metadata.json (keys as bd 1.0.2 reads them)."""
    data: dict[str, object] = {
        "database": "dolt",
        "backend": "dolt",
        "dolt_mode": "server",
        "dolt_server_host": settings.dolt_host,
        "dolt_server_port": settings.dolt_port,
        "dolt_server_user": settings.dolt_user,
        "dolt_database": settings.dolt_database,
    }
    if settings.dolt_tls:
        data["dolt_server_tls"] = True
    if settings.dolt_project_id:
        data["project_id"] = settings.dolt_project_id
    return data


def bd_metadata_json(settings: DeploySettings) -> str:
    """The metadata.json file exactly as the ConfigMap carries it."""
    return json.dumps(bd_metadata(settings), indent=2, sort_keys=True) + "\n"


def runtime_config(settings: DeploySettings) -> dict[str, str]:
    """The kill switch and runtime knobs, keyed by the env names the jobs read."""
    return {
        job_env.AUTODISPATCH_ENABLED: "true" if settings.dispatcher_enabled else "false",
        job_env.BEADBOARD_URL: settings.beadboard_url,
        job_env.AGENT_ASSIGNEE: settings.agent_assignee,
        job_env.REAPER_THRESHOLD_MINUTES: str(settings.reaper_threshold_minutes),
        job_env.DISPATCH_MAX_ATTEMPTS: str(settings.max_dispatch_attempts),
        job_env.HTTP_TIMEOUT_SECONDS: str(settings.http_timeout_seconds),
        job_env.BD_TIMEOUT_SECONDS: str(settings.bd_timeout_seconds),
        job_env.DISPATCH_WINDOW_SECONDS: str(settings.dispatcher_window_seconds),
        job_env.POLL_INTERVAL_SECONDS: str(settings.poll_interval_seconds),
        job_env.AGENT_HEALTH_URL: settings.agent_health_url,
        job_env.MAX_IN_FLIGHT: str(settings.max_in_flight),
    }


def service_namespace(host: str, own_namespace: str) -> str | None:
    """The namespace of an in-cluster Service name (`svc`, `svc.ns.svc[.cluster.local]`)."""
    parts = host.rstrip(".").split(".")
    if len(parts) == 1:
        return own_namespace
    if len(parts) >= 3 and parts[2] == "svc":
        return parts[1]
    return None


def destination(host: str, own_namespace: str) -> NetworkPolicyPeerArgs:
    """Who a host name reaches, as a NetworkPolicy peer.

    - a Service name: any pod of its namespace. The selector stops at the namespace because
      the pods' labels belong to other deployments (Dolt, BeadBoard, the agent service) and
      are not part of this project's contract; the port rule next to it does the narrowing.
    - an IP address: that address only (useful for out-of-cluster servers; a Service's
      cluster IP never matches, the policy sees the pod behind it).
    - any other name is outside the cluster: any address (on the one port allowed).
    """
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return NetworkPolicyPeerArgs(
            ip_block=IPBlockArgs(cidr=f"{address}/{address.max_prefixlen}")
        )
    namespace = service_namespace(host, own_namespace)
    if namespace is None:
        return NetworkPolicyPeerArgs(ip_block=IPBlockArgs(cidr="0.0.0.0/0"))
    if namespace == own_namespace:
        return NetworkPolicyPeerArgs(pod_selector=LabelSelectorArgs())
    return NetworkPolicyPeerArgs(
        namespace_selector=LabelSelectorArgs(match_labels={NAMESPACE_NAME_LABEL: namespace}),
        pod_selector=LabelSelectorArgs(),
    )


def url_port(url: str) -> int:
    parsed = urlsplit(url)
    return parsed.port or (443 if parsed.scheme == "https" else 80)


def egress_rules(settings: DeploySettings) -> list[NetworkPolicyEgressRuleArgs]:
    """DNS, Dolt, BeadBoard and (when its URL is set) the agent service; nothing else."""
    ns = settings.namespace
    rules = [
        NetworkPolicyEgressRuleArgs(
            to=[
                NetworkPolicyPeerArgs(
                    namespace_selector=LabelSelectorArgs(
                        match_labels={NAMESPACE_NAME_LABEL: DNS_NAMESPACE}
                    )
                )
            ],
            ports=[
                NetworkPolicyPortArgs(protocol="UDP", port=53),
                NetworkPolicyPortArgs(protocol="TCP", port=53),
            ],
        ),
        # Assumes Dolt's pod listens on the port its Service exposes (3306 in production).
        NetworkPolicyEgressRuleArgs(
            to=[destination(settings.dolt_host, ns)],
            ports=[NetworkPolicyPortArgs(protocol="TCP", port=settings.dolt_port)],
        ),
    ]
    board_host = urlsplit(settings.beadboard_url).hostname or ""
    rules.append(
        NetworkPolicyEgressRuleArgs(
            to=[destination(board_host, ns)],
            ports=[
                NetworkPolicyPortArgs(
                    protocol="TCP",
                    # Outside the cluster there is no Service in between: the URL's port.
                    port=BEADBOARD_POD_PORT
                    if service_namespace(board_host, ns) is not None
                    else url_port(settings.beadboard_url),
                )
            ],
        )
    )
    if settings.agent_health_url:
        # Assumes the agent Service's port equals its pod's (the URL names the Service's).
        rules.append(
            NetworkPolicyEgressRuleArgs(
                to=[destination(urlsplit(settings.agent_health_url).hostname or "", ns)],
                ports=[
                    NetworkPolicyPortArgs(protocol="TCP", port=url_port(settings.agent_health_url))
                ],
            )
        )
    return rules


def image_tag(image: str) -> str:
    """The tag of an image reference ("" when untagged or pinned by digest only)."""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return last.rsplit(":", 1)[1] if ":" in last else ""


def scan_exceptions(settings: DeploySettings) -> dict[str, str]:
    """The checkov findings this design accepts, as annotations on each CronJob.

    checkov reads `checkov.io/skip<N>: <check>=<reason>`, so the reason travels with the
    manifest (tools/scan-manifests.sh fails on anything else). Config-dependent findings
    are excepted only when the config produces them: a digest-pinned image is checked.
    Each setting concerned carries a comment pointing here.
    """
    reasons = [
        (
            "CKV_K8S_15",
            "imagePullPolicy IfNotPresent on purpose: a heavy image, a pod every 2 minutes, "
            "and a registry outage must not fail every run (README, Image tag)",
        ),
        (
            "CKV_K8S_11",
            "no CPU limit on purpose: a short job would only be throttled; the CPU request "
            "reserves what it needs and memory is limited",
        ),
        (
            "CKV_K8S_40",
            "runs as the image's own non-root user, uid 1000 (owner of its HOME and tools); "
            "runAsNonRoot, no privilege escalation and no capabilities hold",
        ),
    ]
    if "@sha256:" not in settings.image:
        reasons.append(
            (
                "CKV_K8S_43",
                "the image is the stack's `image` config value; pin a digest there to pass "
                "this check (README, Image tag, says what each choice costs)",
            )
        )
    if "@" not in settings.image and image_tag(settings.image) in ("", "latest"):
        reasons.append(
            (
                "CKV_K8S_14",
                "`latest` is the default `image` config value because registry retention "
                "pruned the pinned tag the original used (README, Image tag)",
            )
        )
    if settings.dolt_password_secret_name:
        reasons.append(
            (
                "CKV_K8S_35",
                "bd 1.0.2 reads the Dolt password only from the env var BEADS_DOLT_PASSWORD; "
                "it comes from the Secret by secretKeyRef, never as a literal",
            )
        )
    return {
        f"checkov.io/skip{number}": f"{check}={reason}"
        for number, (check, reason) in enumerate(reasons, start=1)
    }


def labels(component: str | None = None) -> dict[str, str]:
    result = {
        "app.kubernetes.io/name": APP_NAME,
        "app.kubernetes.io/part-of": PART_OF,
        "app.kubernetes.io/managed-by": "pulumi",
    }
    if component:
        result["app.kubernetes.io/component"] = component
    return result


def checksum(*parts: str | bytes) -> str:
    hasher = hashlib.sha256()
    for part in parts:
        hasher.update(part.encode() if isinstance(part, str) else part)
        hasher.update(b"\0")
    return hasher.hexdigest()


class BeadsAutoDispatch(pulumi.ComponentResource):
    """Everything the auto-dispatch needs in one namespace, derived from DeploySettings."""

    def __init__(
        self,
        name: str,
        settings: DeploySettings,
        bundle: Bundle | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__(COMPONENT_TYPE, name, None, opts)
        self.settings = settings
        self.bundle = bundle if bundle is not None else build_bundle()
        child = pulumi.ResourceOptions(parent=self)
        ns = settings.namespace

        metadata_json = bd_metadata_json(settings)
        runtime = runtime_config(settings)
        self.bd_config = ConfigMap(
            f"{name}-bd-config",
            metadata=self._meta(BD_CONFIG_NAME, ns),
            data={"metadata.json": metadata_json},
            opts=child,
        )
        self.runtime_config = ConfigMap(
            f"{name}-runtime",
            metadata=self._meta(RUNTIME_CONFIG_NAME, ns),
            data=runtime,
            opts=child,
        )
        self.code = ConfigMap(
            f"{name}-code",
            metadata=self._meta(CODE_NAME, ns),
            data=dict(sorted(self.bundle.sources.items())),
            opts=child,
        )
        self.vendor = ConfigMap(
            f"{name}-vendor",
            metadata=self._meta(VENDOR_NAME, ns, self.bundle.vendored_versions),
            binary_data={VENDOR_ZIP_NAME: base64.b64encode(self.bundle.vendor_zip).decode()},
            opts=child,
        )

        self.service_account = ServiceAccount(
            f"{name}-service-account",
            metadata=self._meta(SERVICE_ACCOUNT_NAME, ns),
            # No token anywhere: the jobs talk to bd and BeadBoard, never to the API server.
            automount_service_account_token=False,
            opts=child,
        )
        self.network_policy = (
            NetworkPolicy(
                f"{name}-network-policy",
                metadata=self._meta(NETWORK_POLICY_NAME, ns),
                spec=NetworkPolicySpecArgs(
                    pod_selector=LabelSelectorArgs(
                        match_labels={"app.kubernetes.io/name": APP_NAME}
                    ),
                    # Both types listed and no ingress rule: nothing may connect to the pods.
                    policy_types=["Ingress", "Egress"],
                    egress=egress_rules(settings),
                ),
                opts=child,
            )
            if settings.network_policy_enabled
            else None
        )

        # Any change of code or config changes this, so every change shows in a diff.
        self.checksum = checksum(
            self.bundle.digest(), metadata_json, json.dumps(runtime, sort_keys=True)
        )
        kinds = (
            JobKind(
                DISPATCHER_NAME,
                "dispatcher",
                "dispatch",
                settings.dispatcher_schedule,
                settings.dispatcher_deadline_seconds,
            ),
            JobKind(
                REAPER_NAME,
                "reaper",
                "reap",
                settings.reaper_schedule,
                settings.reaper_deadline_seconds,
            ),
        )
        self.dispatcher, self.reaper = (self._cronjob(name, kind) for kind in kinds)

        self.register_outputs(
            {
                "dispatcherName": self.dispatcher.metadata.name,
                "reaperName": self.reaper.metadata.name,
                "dispatcherSchedule": settings.dispatcher_schedule,
                "reaperSchedule": settings.reaper_schedule,
                "suspended": not settings.dispatcher_enabled,
            }
        )

    @staticmethod
    def _meta(
        name: str, namespace: str, annotations: dict[str, str] | None = None
    ) -> ObjectMetaArgs:
        return ObjectMetaArgs(
            name=name, namespace=namespace, labels=labels(), annotations=annotations
        )

    def _cronjob(self, name: str, kind: JobKind) -> CronJob:
        settings = self.settings
        pod_labels = labels(kind.component)
        return CronJob(
            f"{name}-{kind.component}",
            metadata=ObjectMetaArgs(
                name=kind.name,
                namespace=settings.namespace,
                labels=pod_labels,
                annotations=scan_exceptions(settings),
            ),
            spec=CronJobSpecArgs(
                schedule=kind.schedule,
                time_zone="Etc/UTC",
                suspend=not settings.dispatcher_enabled,
                concurrency_policy="Forbid",
                starting_deadline_seconds=60,
                successful_jobs_history_limit=1,
                failed_jobs_history_limit=3,
                job_template=JobTemplateSpecArgs(
                    metadata=ObjectMetaArgs(labels=pod_labels),
                    spec=JobSpecArgs(
                        backoff_limit=0,
                        active_deadline_seconds=kind.deadline_seconds,
                        ttl_seconds_after_finished=600,
                        template=PodTemplateSpecArgs(
                            metadata=ObjectMetaArgs(
                                labels=pod_labels,
                                annotations={CHECKSUM_ANNOTATION: self.checksum},
                            ),
                            spec=self._pod_spec(kind),
                        ),
                    ),
                ),
            ),
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=[
                    self.bd_config,
                    self.runtime_config,
                    self.code,
                    self.vendor,
                    self.service_account,
                ],
            ),
        )

    def _pod_spec(self, kind: JobKind) -> PodSpecArgs:
        settings = self.settings
        env = [
            EnvVarArgs(name="PYTHONPATH", value=PYTHONPATH),
            EnvVarArgs(name="PYTHONDONTWRITEBYTECODE", value="1"),
            EnvVarArgs(name="PYTHONUNBUFFERED", value="1"),
            EnvVarArgs(name="HOME", value=POD_HOME),
            EnvVarArgs(name=job_env.BEADS_DB, value=POD_BEADS_DB),
            EnvVarArgs(name=job_env.BEADS_METADATA_FILE, value=f"{BD_CONFIG_MOUNT}/metadata.json"),
        ]
        if settings.dolt_password_secret_name:
            # An env var, not a mounted file, because bd reads it only from there (checkov
            # CKV_K8S_35 excepted in scan_exceptions).
            env.append(
                EnvVarArgs(
                    name=DOLT_PASSWORD_ENV,
                    value_from=EnvVarSourceArgs(
                        secret_key_ref=SecretKeySelectorArgs(
                            name=settings.dolt_password_secret_name,
                            key=settings.dolt_password_secret_key,
                        )
                    ),
                )
            )
        code_items = [
            KeyToPathArgs(key=file_name, path=f"jobs/{file_name}")
            for file_name in sorted(self.bundle.sources)
        ]
        return PodSpecArgs(
            restart_policy="Never",
            # SIGTERM lets a run finish the POST in hand and note it, or hand unsent beads back.
            termination_grace_period_seconds=(
                settings.http_timeout_seconds + 2 * settings.bd_timeout_seconds + 10
            ),
            service_account_name=SERVICE_ACCOUNT_NAME,
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
                            config_map_ref=ConfigMapEnvSourceArgs(name=RUNTIME_CONFIG_NAME)
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
                        VolumeMountArgs(
                            name="bd-config", mount_path=BD_CONFIG_MOUNT, read_only=True
                        ),
                        VolumeMountArgs(name="runtime", mount_path=RUNTIME_MOUNT, read_only=True),
                        VolumeMountArgs(name="scratch", mount_path=SCRATCH_MOUNT),
                    ],
                )
            ],
            volumes=[
                VolumeArgs(
                    name="code",
                    config_map=ConfigMapVolumeSourceArgs(
                        name=CODE_NAME, items=code_items, default_mode=0o444
                    ),
                ),
                VolumeArgs(
                    name="vendor",
                    config_map=ConfigMapVolumeSourceArgs(name=VENDOR_NAME, default_mode=0o444),
                ),
                VolumeArgs(
                    name="bd-config",
                    config_map=ConfigMapVolumeSourceArgs(name=BD_CONFIG_NAME, default_mode=0o444),
                ),
                VolumeArgs(
                    name="runtime",
                    config_map=ConfigMapVolumeSourceArgs(
                        name=RUNTIME_CONFIG_NAME, default_mode=0o444
                    ),
                ),
                VolumeArgs(
                    name="scratch",
                    empty_dir=EmptyDirVolumeSourceArgs(size_limit="64Mi"),
                ),
            ],
        )
