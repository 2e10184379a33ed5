"""The Kubernetes object names and labels, shared by the component and its pod spec."""

from __future__ import annotations

APP_NAME = "beads-autodispatch"
PART_OF = "beads"
DISPATCHER_NAME = "beads-dispatcher"
REAPER_NAME = "beads-reaper"
BD_CONFIG_NAME = "beads-autodispatch-bd-config"
RUNTIME_CONFIG_NAME = "beads-autodispatch-runtime"
CODE_NAME = "beads-autodispatch-code"
VENDOR_NAME = "beads-autodispatch-vendor"
# One identity for both CronJobs, with no API token: the jobs never call the Kubernetes API.
SERVICE_ACCOUNT_NAME = "beads-autodispatch"
NETWORK_POLICY_NAME = "beads-autodispatch"
CHECKSUM_ANNOTATION = "beads-autodispatch/checksum"


def labels(component: str | None = None) -> dict[str, str]:
    result = {
        "app.kubernetes.io/name": APP_NAME,
        "app.kubernetes.io/part-of": PART_OF,
        "app.kubernetes.io/managed-by": "pulumi",
    }
    if component:
        result["app.kubernetes.io/component"] = component
    return result
