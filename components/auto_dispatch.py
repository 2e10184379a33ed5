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

from components.bundle import VENDOR_ZIP_NAME, Bundle, build_bundle
from components.config import DeploySettings
from components.names import CHECKSUM_ANNOTATION, ObjectNames, labels, selector
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
        names = ObjectNames(settings.instance)

        metadata_json = bd_metadata_json(settings)
        runtime = settings.as_env()
        self.bd_config = ConfigMap(
            f"{name}-bd-config",
            metadata=self._meta(names.bd_config, ns),
            data={"metadata.json": metadata_json},
            opts=child,
        )
        self.runtime_config = ConfigMap(
            f"{name}-runtime",
            metadata=self._meta(names.runtime_config, ns),
            data=runtime,
            opts=child,
        )
        self.code = ConfigMap(
            f"{name}-code",
            metadata=self._meta(names.code, ns),
            data=dict(sorted(self.bundle.sources.items())),
            opts=child,
        )
        self.vendor = ConfigMap(
            f"{name}-vendor",
            metadata=self._meta(names.vendor, ns, self.bundle.vendored_versions),
            binary_data={VENDOR_ZIP_NAME: base64.b64encode(self.bundle.vendor_zip).decode()},
            opts=child,
        )

        self.service_account = ServiceAccount(
            f"{name}-service-account",
            metadata=self._meta(names.service_account, ns),
            # No token anywhere: the jobs talk to bd and BeadBoard, never to the API server.
            automount_service_account_token=False,
            opts=child,
        )
        self.network_policy = (
            NetworkPolicy(
                f"{name}-network-policy",
                metadata=self._meta(names.network_policy, ns),
                spec=NetworkPolicySpecArgs(
                    # This instance's pods only: another instance has its own policy.
                    pod_selector=LabelSelectorArgs(match_labels=selector(settings.instance)),
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
                names.dispatcher,
                "dispatcher",
                "dispatch",
                settings.dispatcher_schedule,
                settings.dispatcher_deadline_seconds,
            ),
            JobKind(
                names.reaper,
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

    def _meta(
        self, name: str, namespace: str, annotations: dict[str, str] | None = None
    ) -> ObjectMetaArgs:
        return ObjectMetaArgs(
            name=name,
            namespace=namespace,
            labels=labels(instance=self.settings.instance),
            annotations=annotations,
        )

    def _cronjob(self, name: str, kind: JobKind) -> CronJob:
        settings = self.settings
        # The version (the jobs bundle's digest) only on what runs the code: a code change
        # then updates the code ConfigMap and the CronJobs, not every object.
        pod_labels = labels(
            kind.component, instance=settings.instance, version=self.bundle.digest()
        )
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
                # The limits alone decide which finished runs stay (no TTL undercuts them):
                # a failed run's Job and pod log wait for whoever looks into it.
                successful_jobs_history_limit=settings.successful_jobs_history_limit,
                failed_jobs_history_limit=settings.failed_jobs_history_limit,
                job_template=JobTemplateSpecArgs(
                    metadata=ObjectMetaArgs(labels=pod_labels),
                    spec=JobSpecArgs(
                        backoff_limit=0,
                        active_deadline_seconds=kind.deadline_seconds,
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
