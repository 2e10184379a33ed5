"""Pulumi program: stack config -> DeploySettings -> BeadsAutoDispatch -> exports."""

from __future__ import annotations

import pulumi

from components.auto_dispatch import BeadsAutoDispatch
from components.config import CONFIG_KEYS, DeploySettings, settings_from
from jobs.settings import ConfigError


def read_settings() -> DeploySettings:
    config = pulumi.Config()
    raw = {key.name: value for key in CONFIG_KEYS if (value := config.get(key.name)) is not None}
    try:
        return settings_from(raw)
    except ConfigError as exc:
        # A RunError prints as one line in `pulumi preview`, without a Python traceback.
        raise pulumi.RunError(str(exc)) from None


settings = read_settings()
dispatch = BeadsAutoDispatch("beads-autodispatch", settings)

pulumi.export("dispatcherCronJob", dispatch.dispatcher.metadata.name)
pulumi.export("reaperCronJob", dispatch.reaper.metadata.name)
pulumi.export("dispatcherSchedule", settings.dispatcher_schedule)
pulumi.export("reaperSchedule", settings.reaper_schedule)
pulumi.export("suspended", not settings.dispatcher_enabled)
