"""Stack configuration -> one validated DeploySettings, before any resource exists.

Each key's name, type, default and meaning is declared once in CONFIG_KEYS. Pulumi.yaml
repeats them for the CLI (a test keeps the two equal), and the program applies the
defaults itself because Pulumi's unit-test mocks do not.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from components.cron import CronError, parse_schedule
from jobs import settings as job_env


class ConfigError(Exception):
    """One line naming the stack config key to fix."""


@dataclass(frozen=True)
class ConfigKey:
    name: str
    type: str  # Pulumi.yaml type: string | integer | boolean
    default: Any
    description: str


CONFIG_KEYS: tuple[ConfigKey, ...] = (
    ConfigKey(
        "dispatcherEnabled",
        "boolean",
        True,
        "Kill switch. false suspends both CronJobs; a run that starts anyway does nothing.",
    ),
    ConfigKey(
        "namespace", "string", "beads-server", "Namespace for every resource (must already exist)."
    ),
    ConfigKey(
        "image",
        "string",
        "claude-agent-service:latest",
        "The reused claude-agent-service image (python3, pydantic, bd 1.0.2).",
    ),
    ConfigKey(
        "imagePullSecret",
        "string",
        "registry-credentials",
        "Pull secret for the image; empty for none.",
    ),
    ConfigKey(
        "dispatcherSchedule", "string", "*/2 * * * *", "Cron schedule of the dispatcher (UTC)."
    ),
    ConfigKey("reaperSchedule", "string", "*/10 * * * *", "Cron schedule of the reaper (UTC)."),
    ConfigKey(
        "reaperThresholdMinutes",
        "integer",
        job_env.DEFAULT_REAPER_THRESHOLD_MINUTES,
        "An agent bead in_progress with no activity (field change, note or comment) "
        "for longer than this is blocked.",
    ),
    ConfigKey(
        "maxDispatchAttempts",
        "integer",
        job_env.DEFAULT_DISPATCH_MAX_ATTEMPTS,
        "Failed dispatches of one bead before it is blocked.",
    ),
    ConfigKey(
        "agentAssignee",
        "string",
        job_env.DEFAULT_AGENT_ASSIGNEE,
        "The sentinel assignee that hands a bead to the agent.",
    ),
    ConfigKey(
        "beadboardUrl",
        "string",
        "http://beadboard.beads-server.svc.cluster.local",
        "BeadBoard base URL (its /api/agent-status and /api/agent-dispatch).",
    ),
    ConfigKey(
        "doltHost",
        "string",
        "dolt.beads-server.svc.cluster.local",
        "Dolt sql-server host bd connects to (server mode).",
    ),
    ConfigKey("doltPort", "integer", 3306, "Dolt sql-server port."),
    ConfigKey("doltUser", "string", "beads", "Dolt user."),
    ConfigKey("doltDatabase", "string", "code", "Dolt database holding the beads."),
    ConfigKey(
        "doltProjectId",
        "string",
        "",
        "bd project_id of the database; empty leaves it out of metadata.json.",
    ),
    ConfigKey("doltTls", "boolean", False, "Connect to Dolt with TLS."),
    ConfigKey(
        "doltPasswordSecretName",
        "string",
        "",
        "Secret holding the Dolt password; empty for no password.",
    ),
    ConfigKey(
        "doltPasswordSecretKey",
        "string",
        "password",
        "Key of the Dolt password inside that Secret.",
    ),
    ConfigKey(
        "httpTimeoutSeconds",
        "integer",
        int(job_env.DEFAULT_HTTP_TIMEOUT_SECONDS),
        "Timeout of each BeadBoard request.",
    ),
    ConfigKey(
        "bdTimeoutSeconds",
        "integer",
        int(job_env.DEFAULT_BD_TIMEOUT_SECONDS),
        "Timeout of each bd call.",
    ),
    ConfigKey(
        "dispatcherDeadlineSeconds",
        "integer",
        100,
        "activeDeadlineSeconds of a dispatcher run; keep it below the schedule interval.",
    ),
    ConfigKey("reaperDeadlineSeconds", "integer", 300, "activeDeadlineSeconds of a reaper run."),
    ConfigKey(
        "dispatcherWindowSeconds",
        "integer",
        job_env.DEFAULT_DISPATCH_WINDOW_SECONDS,
        "How long one dispatcher run keeps polling; 0 = one pass (the original behaviour).",
    ),
    ConfigKey(
        "pollIntervalSeconds",
        "integer",
        job_env.DEFAULT_POLL_INTERVAL_SECONDS,
        "Seconds between polls inside a window (an idle poll = one bd call, no HTTP).",
    ),
    ConfigKey(
        "agentHealthUrl",
        "string",
        "",
        "claude-agent-service /health URL; set it to fill every free agent slot per poll.",
    ),
    ConfigKey(
        "maxInFlight",
        "integer",
        job_env.DEFAULT_MAX_IN_FLIGHT,
        "With agentHealthUrl: at most this many agent jobs running or queued at once.",
    ),
    ConfigKey(
        "networkPolicyEnabled",
        "boolean",
        False,
        "Add a NetworkPolicy for the jobs' pods: no ingress; egress only to DNS, Dolt, "
        "BeadBoard and (with agentHealthUrl) the agent service.",
    ),
)

_KEY_LABELS = {key.name: f"config key {key.name!r}:" for key in CONFIG_KEYS}

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


def _optional_url(value: str) -> str:
    return job_env.http_url(value) if value.strip() else ""


def _schedule(value: str) -> str:
    try:
        parse_schedule(value)
    except CronError as exc:
        raise ValueError(f"is not a valid cron schedule ({exc}): {value!r}") from None
    return value


Namespace = Annotated[str, AfterValidator(_namespace)]
Schedule = Annotated[str, AfterValidator(_schedule)]
OptionalName = Annotated[str, AfterValidator(_optional_name)]


class DeploySettings(BaseModel):
    """The validated stack config: every resource is derived from this alone."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    dispatcher_enabled: bool = Field(alias="dispatcherEnabled")
    namespace: Namespace = Field(alias="namespace")
    image: Annotated[str, AfterValidator(_pattern(_IMAGE, "an image reference"))] = Field(
        alias="image"
    )
    image_pull_secret: OptionalName = Field(alias="imagePullSecret")
    dispatcher_schedule: Schedule = Field(alias="dispatcherSchedule")
    reaper_schedule: Schedule = Field(alias="reaperSchedule")
    reaper_threshold_minutes: int = Field(alias="reaperThresholdMinutes", gt=0, le=7 * 24 * 60)
    max_dispatch_attempts: int = Field(alias="maxDispatchAttempts", ge=1, le=100)
    agent_assignee: job_env.Assignee = Field(alias="agentAssignee")
    beadboard_url: job_env.HttpUrl = Field(alias="beadboardUrl")
    dolt_host: Annotated[str, AfterValidator(_pattern(_HOST, "a host name"))] = Field(
        alias="doltHost"
    )
    dolt_port: int = Field(alias="doltPort", ge=1, le=65535)
    dolt_user: str = Field(alias="doltUser", min_length=1)
    dolt_database: str = Field(alias="doltDatabase", min_length=1, pattern=r"^[A-Za-z0-9_-]+$")
    dolt_project_id: str = Field(alias="doltProjectId")
    dolt_tls: bool = Field(alias="doltTls")
    dolt_password_secret_name: OptionalName = Field(alias="doltPasswordSecretName")
    dolt_password_secret_key: Annotated[
        str, AfterValidator(_pattern(_SECRET_KEY, "a Secret data key"))
    ] = Field(alias="doltPasswordSecretKey")
    http_timeout_seconds: int = Field(alias="httpTimeoutSeconds", gt=0, le=600)
    bd_timeout_seconds: int = Field(alias="bdTimeoutSeconds", gt=0, le=3600)
    dispatcher_deadline_seconds: int = Field(alias="dispatcherDeadlineSeconds", ge=10)
    reaper_deadline_seconds: int = Field(alias="reaperDeadlineSeconds", ge=10)
    dispatcher_window_seconds: int = Field(alias="dispatcherWindowSeconds", ge=0, le=86400)
    poll_interval_seconds: int = Field(alias="pollIntervalSeconds", ge=1, le=3600)
    agent_health_url: Annotated[str, AfterValidator(_optional_url)] = Field(alias="agentHealthUrl")
    max_in_flight: int = Field(alias="maxInFlight", ge=1, le=1000)
    network_policy_enabled: bool = Field(alias="networkPolicyEnabled")

    @property
    def dispatcher_interval_seconds(self) -> int:
        return parse_schedule(self.dispatcher_schedule).min_interval_minutes() * 60


def check_timing(settings: DeploySettings) -> None:
    """A run must end before the next one is due, and its window must fit its deadline."""
    interval = settings.dispatcher_interval_seconds
    deadline = settings.dispatcher_deadline_seconds
    window = settings.dispatcher_window_seconds
    if deadline >= interval:
        raise ConfigError(
            f"config key 'dispatcherDeadlineSeconds': {deadline} s must be shorter than the "
            f"dispatcher schedule's interval ({interval} s), so a run ends before the next is due"
        )
    # The last poll starts at most one interval before the window ends and takes a few bd calls.
    needed = window + settings.poll_interval_seconds + 30 if window else 30
    if deadline < needed:
        raise ConfigError(
            f"config key 'dispatcherWindowSeconds': a {window} s window needs "
            f"dispatcherDeadlineSeconds of at least {needed} s (window + poll interval + 30), "
            f"got {deadline}"
        )


def defaults() -> dict[str, Any]:
    return {key.name: key.default for key in CONFIG_KEYS}


def settings_from(values: dict[str, Any]) -> DeploySettings:
    """Validate raw config values (missing keys take defaults) into DeploySettings."""
    unknown = sorted(set(values) - {key.name for key in CONFIG_KEYS})
    if unknown:
        raise ConfigError(f"unknown config key {unknown[0]!r}")
    merged = defaults() | values
    try:
        settings = DeploySettings.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(job_env.describe_validation_error(exc, _KEY_LABELS)) from None
    check_timing(settings)
    return settings


def coerce(key: ConfigKey, raw: str) -> Any:
    """A `pulumi config` string as the declared type, or ConfigError naming the key."""
    if key.type == "boolean":
        try:
            return job_env.parse_bool(raw)
        except ValueError as exc:
            raise ConfigError(f"config key {key.name!r}: {exc}") from None
    if key.type == "integer":
        try:
            return int(raw.strip())
        except ValueError:
            raise ConfigError(
                f"config key {key.name!r}: must be a whole number, got {raw!r}"
            ) from None
    return raw


def settings_from_strings(raw_values: dict[str, str]) -> DeploySettings:
    """What `pulumi config get` returns is text; type it per CONFIG_KEYS, then validate."""
    by_name = {key.name: key for key in CONFIG_KEYS}
    typed: dict[str, Any] = {}
    for name, raw in raw_values.items():
        if name not in by_name:
            raise ConfigError(f"unknown config key {name!r}")
        typed[name] = coerce(by_name[name], raw)
    return settings_from(typed)
