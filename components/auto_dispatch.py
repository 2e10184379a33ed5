"""BeadsAutoDispatch: the dispatcher and reaper CronJobs and the ConfigMaps they run from."""

from __future__ import annotations

import base64
import hashlib
import json

import pulumi
from pulumi_kubernetes.batch.v1 import (
    CronJob,
    CronJobSpecArgs,
    JobSpecArgs,
    JobTemplateSpecArgs,
)
from pulumi_kubernetes.core.v1 import ConfigMap, PodTemplateSpecArgs, ServiceAccount
from pulumi_kubernetes.meta.v1 import LabelSelectorArgs, ObjectMetaArgs
from pulumi_kubernetes.networking.v1 import NetworkPolicy, NetworkPolicySpecArgs

from components.alerts import WatchedCronJob, prometheus_rule
from components.bundle import VENDOR_ZIP_NAME, Bundle, build_bundle
from components.config import DeploySettings
from components.names import (
    APP_NAME,
    BD_CONFIG_NAME,
    CHECKSUM_ANNOTATION,
    CODE_NAME,
    DISPATCHER_NAME,
    NETWORK_POLICY_NAME,
    REAPER_NAME,
    RUNTIME_CONFIG_NAME,
    SERVICE_ACCOUNT_NAME,
    VENDOR_NAME,
    labels,
)
from components.network import egress_rules
from components.pod import JobKind, pod_spec
from components.scan import scan_exceptions

COMPONENT_TYPE = "beads:autodispatch:BeadsAutoDispatch"


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
        runtime = settings.as_env()
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
        # Opt-in: the PrometheusRule kind exists only where prometheus-operator is installed.
        self.alerts = (
            prometheus_rule(
                f"{name}-alerts",
                name=APP_NAME,
                namespace=ns,
                cronjobs=[WatchedCronJob(k.component, k.name, k.schedule) for k in kinds],
                labels=labels(),
                opts=child,
            )
            if settings.alerts_enabled
            else None
        )

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
                            spec=pod_spec(settings, kind, list(self.bundle.sources)),
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
