"""Two BeadsAutoDispatch instances in one namespace, each with its own assignee and BeadBoard.

Config (Pulumi.dev.yaml): `shared` holds the keys both instances use, `instances` maps each
instance name to its own keys. Removing an instance from `instances` and running `pulumi up`
deletes its objects and nothing else; `dispatcherEnabled: false` on one pauses only it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

# The component lives at the repository root, two levels up: no package to install.
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import pulumi  # noqa: E402

from components.auto_dispatch import BeadsAutoDispatch  # noqa: E402
from components.config import BeadsAutoDispatchArgs, settings_from  # noqa: E402
from jobs.settings import ConfigError  # noqa: E402


def instance_settings(
    shared: dict[str, Any], instances: dict[str, Any]
) -> list[BeadsAutoDispatchArgs]:
    """Each instance's settings (shared keys, then its own); one line naming the key when wrong."""
    result = []
    for instance, own in instances.items():
        try:
            result.append(settings_from({**shared, **(own or {}), "instance": instance}))
        except ConfigError as exc:
            raise pulumi.RunError(f"instances.{instance}: {exc}") from None
    assignees = [s.agent_assignee for s in result]
    for settings in result:
        if assignees.count(settings.agent_assignee) > 1:
            # One queue, two BeadBoards: which agent gets a bead would be a race.
            raise pulumi.RunError(
                f"instances.{settings.instance}: agentAssignee {settings.agent_assignee!r} "
                "is served by another instance too; give each instance its own"
            )
    return result


config = pulumi.Config()
for settings in instance_settings(
    config.get_object("shared") or {}, config.require_object("instances")
):
    dispatch = BeadsAutoDispatch(settings.instance, settings)
    pulumi.export(
        settings.instance,
        {
            "dispatcherCronJob": dispatch.dispatcher_cron_job_name,
            "reaperCronJob": dispatch.reaper_cron_job_name,
            "assignee": settings.agent_assignee,
            "beadboardUrl": settings.beadboard_url,
            "suspended": dispatch.suspended,
        },
    )
