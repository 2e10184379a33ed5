"""BeadsAutoDispatch: the dispatcher and reaper CronJobs and the ConfigMaps they run from.

    dispatch = BeadsAutoDispatch("beads-autodispatch", BeadsAutoDispatchArgs(namespace="x"))
    pulumi.export("dispatcher", dispatch.dispatcher_cron_job_name)

`opts` passes through: a Kubernetes provider given there is every child's provider, and
`transforms` given there see each child.
"""

from __future__ import annotations

import base64
import json
import os

import pulumi
from pulumi_kubernetes.apiextensions import CustomResource
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
from components.bundle import VENDOR_ZIP_NAME, Bundle, build_bundle, digest_of
from components.config import ArgsError, BeadsAutoDispatchArgs
from components.names import CHECKSUM_ANNOTATION, ObjectNames, labels, selector
from components.network import egress_rules
from components.pod import JobKind, pod_spec
from components.scan import scan_exceptions

COMPONENT_TYPE = "beads:autodispatch:BeadsAutoDispatch"
# The provider setting that makes a ConfigMap change an update in place, and the env var the
# provider falls back to when its config does not set it (pulumi-kubernetes 4.25,
# provider/pkg/provider/provider.go).
CONFIG_MAP_MUTABLE_KEY = "kubernetes:enableConfigMapMutable"
CONFIG_MAP_MUTABLE_ENV = "PULUMI_K8S_ENABLE_CONFIGMAP_MUTABLE"


def bd_metadata(settings: BeadsAutoDispatchArgs) -> dict[str, object]:
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


def bd_metadata_json(settings: BeadsAutoDispatchArgs) -> str:
    """The metadata.json file exactly as the ConfigMap carries it."""
    return json.dumps(bd_metadata(settings), indent=2, sort_keys=True) + "\n"


def require_mutable_config_maps(opts: pulumi.ResourceOptions | None) -> None:
    """Refuse to go on when the stack's default Kubernetes provider would replace a changed
    ConfigMap.

    Without enableConfigMapMutable the provider replaces a ConfigMap whose data changed:
    delete, then create under the same name (pulumi/pulumi-kubernetes#1567). A pod starting
    in between finds no ConfigMap, and the runtime one, which a running window re-reads the
    kill switch from, is gone for a moment. With it, the same change is an update in place,
    which the kubelet then copies into every running pod's mount.

    A provider passed in `opts` (or inherited from a parent) keeps its settings to itself:
    whoever creates it sets enable_config_map_mutable=True (README, Component). Checked
    before the component registers, so a refused run leaves nothing in the stack.
    """
    if opts is not None and (
        opts.provider is not None
        or opts.providers
        or (opts.parent is not None and opts.parent.get_provider("kubernetes::ConfigMap"))
    ):
        return
    package, key = CONFIG_MAP_MUTABLE_KEY.split(":")
    value = pulumi.Config(package).get(key)
    if value is None:
        value = os.environ.get(CONFIG_MAP_MUTABLE_ENV)
    if value != "true":
        raise ArgsError(
            f"{CONFIG_MAP_MUTABLE_KEY} must be true (got {value or 'unset'}), or a changed "
            "ConfigMap is deleted and created again and the kill switch can miss a running "
            f"window: run `pulumi config set {CONFIG_MAP_MUTABLE_KEY} true`"
        )


class BeadsAutoDispatch(pulumi.ComponentResource):
    """Everything the auto-dispatch needs in one namespace, derived from its args alone."""

    namespace: pulumi.Output[str]
    """The namespace every child is in."""
    dispatcher_cron_job_name: pulumi.Output[str]
    reaper_cron_job_name: pulumi.Output[str]
    runtime_config_map_name: pulumi.Output[str]
    """The ConfigMap holding the kill switch and the other runtime knobs."""
    config_map_names: pulumi.Output[list[str]]
    """Every ConfigMap: bd's metadata.json, the runtime knobs, the jobs' code, the libraries."""
    service_account_name: pulumi.Output[str]
    dispatcher_schedule: pulumi.Output[str]
    reaper_schedule: pulumi.Output[str]
    suspended: pulumi.Output[bool]
    """True while the kill switch is off: both CronJobs are suspended."""

    def __init__(
        self,
        name: str,
        args: BeadsAutoDispatchArgs,
        opts: pulumi.ResourceOptions | None = None,
        *,
        bundle: Bundle | None = None,
    ) -> None:
        require_mutable_config_maps(opts)
        super().__init__(COMPONENT_TYPE, name, None, opts)
        self.args = args
        self.bundle = bundle if bundle is not None else build_bundle()
        self.names = ObjectNames(args.instance)
        self._create_config_maps(name)
        self.service_account = self._service_account(name)
        self.network_policy = self._network_policy(name) if args.network_policy_enabled else None
        # Any change of code or config changes this, so every change shows in a diff.
        self.checksum = digest_of(
            self.bundle.digest(),
            bd_metadata_json(args),
            json.dumps(args.as_env(), sort_keys=True),
        )
        kinds = (self._dispatcher_kind(), self._reaper_kind())
        self.dispatcher, self.reaper = (self._cronjob(name, kind) for kind in kinds)
        self.alerts = self._alerts(name, kinds) if args.alerts_enabled else None
        self._register_outputs()

    def _create_config_maps(self, name: str) -> None:
        self.bd_config = self._config_map(
            f"{name}-bd-config",
            self.names.bd_config,
            data={"metadata.json": bd_metadata_json(self.args)},
        )
        self.runtime_config = self._config_map(
            f"{name}-runtime", self.names.runtime_config, data=self.args.as_env()
        )
        self.code = self._config_map(
            f"{name}-code", self.names.code, data=dict(sorted(self.bundle.sources.items()))
        )
        self.vendor = self._config_map(
            f"{name}-vendor",
            self.names.vendor,
            binary_data={VENDOR_ZIP_NAME: base64.b64encode(self.bundle.vendor_zip).decode()},
            annotations=self.bundle.vendored_versions,
        )

    def _config_map(
        self,
        resource_name: str,
        k8s_name: str,
        *,
        data: dict[str, str] | None = None,
        binary_data: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None,
    ) -> ConfigMap:
        return ConfigMap(
            resource_name,
            metadata=self._meta(k8s_name, annotations),
            data=data,
            binary_data=binary_data,
            opts=pulumi.ResourceOptions(parent=self),
        )

    def _service_account(self, name: str) -> ServiceAccount:
        return ServiceAccount(
            f"{name}-service-account",
            metadata=self._meta(self.names.service_account),
            # No token anywhere: the jobs talk to bd and BeadBoard, never to the API server.
            automount_service_account_token=False,
            opts=pulumi.ResourceOptions(parent=self),
        )

    def _network_policy(self, name: str) -> NetworkPolicy:
        return NetworkPolicy(
            f"{name}-network-policy",
            metadata=self._meta(self.names.network_policy),
            spec=NetworkPolicySpecArgs(
                # This instance's pods only: another instance has its own policy.
                pod_selector=LabelSelectorArgs(match_labels=selector(self.args.instance)),
                # Both types listed and no ingress rule: nothing may connect to the pods.
                policy_types=["Ingress", "Egress"],
                egress=egress_rules(self.args),
            ),
            opts=pulumi.ResourceOptions(parent=self),
        )

    def _alerts(self, name: str, kinds: tuple[JobKind, ...]) -> CustomResource:
        # Opt-in: the PrometheusRule kind exists only where prometheus-operator is installed.
        return prometheus_rule(
            f"{name}-alerts",
            name=self.names.base,
            namespace=self.args.namespace,
            cronjobs=[WatchedCronJob(k.component, k.name, k.schedule) for k in kinds],
            labels=labels(instance=self.args.instance),
            opts=pulumi.ResourceOptions(parent=self),
        )

    def _dispatcher_kind(self) -> JobKind:
        return JobKind(
            self.names.dispatcher,
            "dispatcher",
            "dispatch",
            self.args.dispatcher_schedule,
            self.args.dispatcher_deadline_seconds,
        )

    def _reaper_kind(self) -> JobKind:
        return JobKind(
            self.names.reaper,
            "reaper",
            "reap",
            self.args.reaper_schedule,
            self.args.reaper_deadline_seconds,
        )

    def _meta(self, name: str, annotations: dict[str, str] | None = None) -> ObjectMetaArgs:
        return ObjectMetaArgs(
            name=name,
            namespace=self.args.namespace,
            labels=labels(instance=self.args.instance),
            annotations=annotations,
        )

    def _cronjob(self, name: str, kind: JobKind) -> CronJob:
        args = self.args
        # The version (the jobs bundle's digest) only on what runs the code: a code change
        # then updates the code ConfigMap and the CronJobs, not every object.
        pod_labels = labels(kind.component, instance=args.instance, version=self.bundle.digest())
        return CronJob(
            f"{name}-{kind.component}",
            metadata=ObjectMetaArgs(
                name=kind.name,
                namespace=args.namespace,
                labels=pod_labels,
                annotations=scan_exceptions(args),
            ),
            spec=CronJobSpecArgs(
                schedule=kind.schedule,
                time_zone="Etc/UTC",
                suspend=not args.dispatcher_enabled,
                concurrency_policy="Forbid",
                starting_deadline_seconds=60,
                # The limits alone decide which finished runs stay (no TTL undercuts them):
                # a failed run's Job and pod log wait for whoever looks into it.
                successful_jobs_history_limit=args.successful_jobs_history_limit,
                failed_jobs_history_limit=args.failed_jobs_history_limit,
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
                            spec=pod_spec(args, kind, list(self.bundle.sources)),
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

    def _register_outputs(self) -> None:
        config_maps = (self.bd_config, self.runtime_config, self.code, self.vendor)
        self.namespace = pulumi.Output.from_input(self.args.namespace)
        self.dispatcher_cron_job_name = self.dispatcher.metadata.name
        self.reaper_cron_job_name = self.reaper.metadata.name
        self.runtime_config_map_name = self.runtime_config.metadata.name
        self.config_map_names = pulumi.Output.all(*(m.metadata.name for m in config_maps))
        self.service_account_name = self.service_account.metadata.name
        self.dispatcher_schedule = pulumi.Output.from_input(self.args.dispatcher_schedule)
        self.reaper_schedule = pulumi.Output.from_input(self.args.reaper_schedule)
        self.suspended = pulumi.Output.from_input(not self.args.dispatcher_enabled)
        self.register_outputs(
            {
                "namespace": self.namespace,
                "dispatcherCronJobName": self.dispatcher_cron_job_name,
                "reaperCronJobName": self.reaper_cron_job_name,
                "runtimeConfigMapName": self.runtime_config_map_name,
                "configMapNames": self.config_map_names,
                "serviceAccountName": self.service_account_name,
                "dispatcherSchedule": self.dispatcher_schedule,
                "reaperSchedule": self.reaper_schedule,
                "suspended": self.suspended,
            }
        )
