"""The Kubernetes object names and labels of one instance, derived from its name alone.

Several instances can share a namespace (a coding agent and a reviewer agent, a staging
copy): each one's objects are named after its instance name. The default instance,
`beads`, keeps the names the production stack has always had (beads-dispatcher,
beads-autodispatch-runtime, ...), so deploying this version over it renames nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

APP_NAME = "beads-autodispatch"
PART_OF = "beads"
DEFAULT_INSTANCE = "beads"
CHECKSUM_ANNOTATION = "beads-autodispatch/checksum"
INSTANCE_LABEL = "app.kubernetes.io/instance"
VERSION_LABEL = "app.kubernetes.io/version"
# The CronJob controller appends an 11-character suffix to a Job's name and Job names are
# DNS labels (63), so the API server refuses a CronJob name past 52.
CRONJOB_NAME_LIMIT = 52
# The digest prefix a version label carries: short enough to read, long enough to tell apart.
VERSION_DIGITS = 12
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@dataclass(frozen=True)
class ObjectNames:
    """Every object name of one instance."""

    instance: str

    @property
    def dispatcher(self) -> str:
        return f"{self.instance}-dispatcher"

    @property
    def reaper(self) -> str:
        return f"{self.instance}-reaper"

    @property
    def base(self) -> str:
        """The ServiceAccount's and NetworkPolicy's name, and the ConfigMaps' prefix."""
        return f"{self.instance}-autodispatch"

    @property
    def bd_config(self) -> str:
        return f"{self.base}-bd-config"

    @property
    def runtime_config(self) -> str:
        return f"{self.base}-runtime"

    @property
    def code(self) -> str:
        return f"{self.base}-code"

    @property
    def vendor(self) -> str:
        return f"{self.base}-vendor"

    @property
    def service_account(self) -> str:
        # One identity for both CronJobs, with no API token: the jobs never call the API.
        return self.base

    @property
    def network_policy(self) -> str:
        return self.base


def instance_name(value: str) -> str:
    """An instance name every derived object name accepts; ValueError says what to change."""
    if not _DNS_LABEL.fullmatch(value):
        raise ValueError(f"must be a DNS label (lowercase letters, digits, '-'), got {value!r}")
    longest = ObjectNames(value).dispatcher
    if len(longest) > CRONJOB_NAME_LIMIT:
        allowed = CRONJOB_NAME_LIMIT - len(longest) + len(value)
        raise ValueError(
            f"makes the CronJob name {longest!r} {len(longest)} characters long, over "
            f"Kubernetes' {CRONJOB_NAME_LIMIT}; use at most {allowed} characters"
        )
    return value


DEFAULT_NAMES = ObjectNames(DEFAULT_INSTANCE)
# The default instance's names, as the production stack and the tooling know them.
DISPATCHER_NAME = DEFAULT_NAMES.dispatcher
REAPER_NAME = DEFAULT_NAMES.reaper
BD_CONFIG_NAME = DEFAULT_NAMES.bd_config
RUNTIME_CONFIG_NAME = DEFAULT_NAMES.runtime_config
CODE_NAME = DEFAULT_NAMES.code
VENDOR_NAME = DEFAULT_NAMES.vendor
SERVICE_ACCOUNT_NAME = DEFAULT_NAMES.service_account
NETWORK_POLICY_NAME = DEFAULT_NAMES.network_policy


def selector(instance: str) -> dict[str, str]:
    """The labels that pick out one instance's objects and pods, and nothing else."""
    return {"app.kubernetes.io/name": APP_NAME, INSTANCE_LABEL: instance}


def labels(
    component: str | None = None, *, instance: str = DEFAULT_INSTANCE, version: str | None = None
) -> dict[str, str]:
    result = {
        **selector(instance),
        "app.kubernetes.io/part-of": PART_OF,
        "app.kubernetes.io/managed-by": "pulumi",
    }
    if version:
        result[VERSION_LABEL] = version[:VERSION_DIGITS]
    if component:
        result["app.kubernetes.io/component"] = component
    return result
