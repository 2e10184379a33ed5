"""Pulumi program: stack config -> BeadsAutoDispatchArgs -> BeadsAutoDispatch -> exports."""

from __future__ import annotations

import pulumi

from components.auto_dispatch import BeadsAutoDispatch
from components.config import CONFIG_KEYS, BeadsAutoDispatchArgs, settings_from


def read_args() -> BeadsAutoDispatchArgs:
    """The component's args from this stack's config; a bad value stops the program with one
    line naming its key (an ArgsError is a RunError: no traceback in `pulumi preview`)."""
    config = pulumi.Config()
    return settings_from(
        {key.name: value for key in CONFIG_KEYS if (value := config.get(key.name)) is not None}
    )


dispatch = BeadsAutoDispatch("beads-autodispatch", read_args())

pulumi.export("dispatcherCronJob", dispatch.dispatcher_cron_job_name)
pulumi.export("reaperCronJob", dispatch.reaper_cron_job_name)
pulumi.export("dispatcherSchedule", dispatch.dispatcher_schedule)
pulumi.export("reaperSchedule", dispatch.reaper_schedule)
pulumi.export("suspended", dispatch.suspended)
