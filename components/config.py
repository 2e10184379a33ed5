"""BeadsAutoDispatchArgs: the component's typed, documented arguments, validated at once.

Each argument is a field and each field is a stack config key: the runtime knobs are the
jobs' own fields (jobs/settings.py), the deploy-only ones are declared here. CONFIG_KEYS is
derived from those fields; Pulumi.yaml and the README's table must equal it
(tests/test_config.py). The program applies the defaults itself because Pulumi's unit-test
mocks do not.

Built from keywords (`BeadsAutoDispatchArgs(namespace="agents")`, by field name or config
key) or from stack config (`settings_from`), a bad value ends in one ArgsError line naming
the config key, the cross-field timing check included.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Self

import pulumi
from pydantic import (
    AfterValidator,
    Field,
    ModelWrapValidatorHandler,
    ValidationError,
    model_validator,
)
from pydantic.fields import FieldInfo

from components.cron import CronError, parse_schedule
from components.names import DEFAULT_INSTANCE, instance_name
from jobs.settings import (
    ConfigError,
    RuntimeSettings,
    config_key,
    describe_validation_error,
    env_name,
)


class ArgsError(ConfigError, pulumi.RunError):
    """A bad argument, as one line naming its config key. A RunError too, so that
    `pulumi preview` prints the line without a Python traceback."""


_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_RESOURCE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
_IMAGE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._/:@-]*$")
_HOST = re.compile(r"^[a-zA-Z0-9]([-a-zA-Z0-9.]*[a-zA-Z0-9])?$")


def _pattern(regex: re.Pattern[str], what: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        if not regex.fullmatch(value):
            raise ValueError(f"must be {what}, got {value!r}")
        return value

    return check


def _namespace(value: str) -> str:
    if len(value) > 63 or not _NAMESPACE.fullmatch(value):
        raise ValueError(
            f"must be a DNS label (lowercase letters, digits, '-', at most 63), got {value!r}"
        )
    return value


def _optional_name(value: str) -> str:
    if value and (len(value) > 253 or not _RESOURCE_NAME.fullmatch(value)):
        raise ValueError(f"must be empty or a Kubernetes object name, got {value!r}")
    return value


def _schedule(value: str) -> str:
    try:
        parse_schedule(value)
    except CronError as exc:
        raise ValueError(f"is not a valid cron schedule ({exc}): {value!r}") from None
    return value


Namespace = Annotated[str, AfterValidator(_namespace)]
# The text of a schedule; components.cron.Schedule is what it parses into.
CronExpression = Annotated[str, AfterValidator(_schedule)]
OptionalName = Annotated[str, AfterValidator(_optional_name)]


class BeadsAutoDispatchArgs(RuntimeSettings):
    """The arguments of BeadsAutoDispatch: every resource is derived from these alone.

    Keyword-only (a pydantic model). Each field's description is its documentation; the
    README's configuration table and Pulumi.yaml are generated from them. The runtime knobs
    are inherited from RuntimeSettings (the same fields the jobs validate with); these are
    the ones only the deployment reads.
    """

    namespace: Namespace = Field(
        default="beads-server", description="Namespace for every resource (must already exist)."
    )
    image: Annotated[str, AfterValidator(_pattern(_IMAGE, "an image reference"))] = Field(
        default="claude-agent-service:latest",
        description="The reused claude-agent-service image (python3, pydantic, bd 1.0.2). "
        "See README, Image tag.",
    )
    image_pull_secret: OptionalName = Field(
        default="registry-credentials", description="Pull secret for the image; empty for none."
    )
    dispatcher_schedule: CronExpression = Field(
        default="*/2 * * * *", description="Cron schedule of the dispatcher (UTC)."
    )
    reaper_schedule: CronExpression = Field(
        default="*/10 * * * *", description="Cron schedule of the reaper (UTC)."
    )
    dolt_host: Annotated[str, AfterValidator(_pattern(_HOST, "a host name"))] = Field(
        default="dolt.beads-server.svc.cluster.local",
        description="Dolt sql-server host bd connects to (server mode).",
    )
    dolt_port: int = Field(default=3306, ge=1, le=65535, description="Dolt sql-server port.")
    dolt_user: str = Field(default="beads", min_length=1, description="Dolt user.")
    dolt_database: str = Field(
        default="code",
        min_length=1,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="Dolt database holding the beads.",
    )
    dolt_project_id: str = Field(
        default="",
        description="bd project_id of the database; empty leaves it out of metadata.json.",
    )
    dolt_tls: bool = Field(default=False, description="Connect to Dolt with TLS.")
    dolt_password_secret_name: OptionalName = Field(
        default="", description="Secret holding the Dolt password; empty for no password."
    )
    dolt_password_secret_key: Annotated[
        str, AfterValidator(_pattern(_SECRET_KEY, "a Secret data key"))
    ] = Field(default="password", description="Key of the Dolt password inside that Secret.")
    dispatcher_deadline_seconds: int = Field(
        default=100,
        ge=10,
        description="activeDeadlineSeconds of a dispatcher run; keep it below the schedule "
        "interval.",
    )
    reaper_deadline_seconds: int = Field(
        default=300, ge=10, description="activeDeadlineSeconds of a reaper run."
    )
    network_policy_enabled: bool = Field(
        default=False,
        description="Add a NetworkPolicy for the jobs' pods: no ingress; egress only to DNS "
        "(any pod in kube-system, UDP/TCP 53), Dolt (doltPort), BeadBoard (pod port 3000: a "
        "policy sees the pod behind the Service's port 80) and, with agentHealthUrl, the agent "
        "service (its URL's port, assumed equal to its pod's). See README, NetworkPolicy.",
    )
    instance: Annotated[str, AfterValidator(instance_name)] = Field(
        default=DEFAULT_INSTANCE,
        description="Instance name: every object is named after it (reviewer: "
        "reviewer-dispatcher, reviewer-autodispatch-runtime, ...), so instances with their own "
        "assignee share a namespace. The default keeps the production names. See "
        "docs/runbook.md, Several instances.",
    )
    successful_jobs_history_limit: int = Field(
        default=1,
        ge=0,
        le=100,
        description="Succeeded Jobs (and their pods' logs) each CronJob keeps; older ones are "
        "deleted.",
    )
    failed_jobs_history_limit: int = Field(
        default=3,
        ge=0,
        le=100,
        description="Failed Jobs each CronJob keeps for `kubectl logs job/...`, however old; "
        "no TTL removes them earlier.",
    )

    alerts_enabled: bool = Field(
        default=False,
        description="Add a PrometheusRule (needs the prometheus-operator CRDs and "
        "kube-state-metrics): alerts when a CronJob has not succeeded for twice its schedule's "
        "longest gap, or a run failed; neither while paused. See docs/runbook.md, Alerts.",
    )

    @model_validator(mode="wrap")
    @classmethod
    def _one_line_errors(cls, data: Any, handler: ModelWrapValidatorHandler[Self]) -> Self:
        try:
            args = handler(data)
        except ValidationError as exc:
            first = exc.errors()[0]
            if first["type"] == "extra_forbidden":
                raise ArgsError(f"unknown argument {first['loc'][0]!r}") from None
            raise ArgsError(describe_validation_error(exc, _LABELS)) from None
        check_timing(args)
        return args

    @property
    def dispatcher_interval_seconds(self) -> int:
        return parse_schedule(self.dispatcher_schedule).min_interval_minutes() * 60


def check_timing(settings: BeadsAutoDispatchArgs) -> None:
    """A run must end before the next one is due, and its window must fit its deadline."""
    interval = settings.dispatcher_interval_seconds
    deadline = settings.dispatcher_deadline_seconds
    window = settings.dispatcher_window_seconds
    if deadline >= interval:
        raise ArgsError(
            f"config key 'dispatcherDeadlineSeconds': {deadline} s must be shorter than the "
            f"dispatcher schedule's interval ({interval} s), so a run ends before the next is due"
        )
    # The last poll starts at most one interval before the window ends and takes a few bd calls.
    needed = window + settings.poll_interval_seconds + 30 if window else 30
    if deadline < needed:
        raise ArgsError(
            f"config key 'dispatcherWindowSeconds': a {window} s window needs "
            f"dispatcherDeadlineSeconds of at least {needed} s (window + poll interval + 30), "
            f"got {deadline}"
        )


# Pulumi.yaml's type for each Python type a setting may have.
_PULUMI_TYPES = {bool: "boolean", int: "integer", str: "string"}


@dataclass(frozen=True)
class ConfigKey:
    """One stack config key as Pulumi.yaml and the README declare it, derived from a field."""

    name: str
    field: str
    type: str  # Pulumi.yaml type: string | integer | boolean
    default: Any
    description: str
    env: str | None  # the env var the jobs read it as, for runtime settings


def _config_key(field: str, info: FieldInfo) -> ConfigKey:
    annotation = info.annotation
    type_name = next((name for kind, name in _PULUMI_TYPES.items() if annotation is kind), None)
    if type_name is None:
        raise TypeError(f"setting {field!r}: no Pulumi config type for {annotation!r}")
    return ConfigKey(
        name=config_key(field),
        field=field,
        type=type_name,
        default=info.default,
        description=info.description or "",
        env=env_name(field) if field in RuntimeSettings.model_fields else None,
    )


CONFIG_KEYS: tuple[ConfigKey, ...] = tuple(
    _config_key(field, info) for field, info in BeadsAutoDispatchArgs.model_fields.items()
)
_BY_KEY = {key.name: key for key in CONFIG_KEYS}
# pydantic names a bad field by its alias (the config key) or by its field name.
_LABELS = {
    spelling: f"config key {key.name!r}:"
    for key in CONFIG_KEYS
    for spelling in (key.field, key.name)
}


def settings_from(values: Mapping[str, Any]) -> BeadsAutoDispatchArgs:
    """The args from config values keyed by config key (text or typed; missing keys take
    the defaults).

    Pulumi hands every value over as text; the fields' own types parse it, exactly as the
    jobs parse the same text from their env.
    """
    unknown = sorted(set(values) - set(_BY_KEY))
    if unknown:
        raise ArgsError(f"unknown config key {unknown[0]!r}")
    cleaned = {
        _BY_KEY[name].field: value.strip() if isinstance(value, str) else value
        for name, value in values.items()
    }
    return BeadsAutoDispatchArgs.model_validate(cleaned)
