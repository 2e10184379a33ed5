"""Every setting, declared once: name, type, default, bounds and meaning.

A setting is a pydantic field. Its other spellings are derived, never written twice:
- the Pulumi config key is the field name in camelCase (`max_dispatch_attempts` ->
  `maxDispatchAttempts`), and Pulumi.yaml's `config:` block is generated from these fields;
- the env var the jobs read is the field name in upper case (`MAX_DISPATCH_ATTEMPTS`), and
  the runtime ConfigMap is keyed by it.

`RuntimeSettings` are the knobs a stack sets and the jobs read at run time; `JobSettings`
adds what the pod spec itself sets (where bd and its database are). The deploy-only keys
extend `RuntimeSettings` in components/config.py, so deploy time and run time validate a
value with the same field.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel


class ConfigError(Exception):
    """A setting a user can fix; the message is the one line to show them."""


_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_URL = re.compile(
    rf"https?://(?P<host>{_LABEL}(?:\.{_LABEL})*)(?::(?P<port>[0-9]{{1,5}}))?(?P<path>/[!-~]*)?"
)


def http_url(value: str) -> str:
    """Normalise a base URL: http(s), an ASCII host name or IPv4, a port 1-65535, no trailing /."""
    text = value.strip()
    match = _URL.fullmatch(text)
    port = match.group("port") if match else None
    if match is None or (port is not None and not 1 <= int(port) <= 65535):
        raise ValueError(f"must be an http:// or https:// URL with a host, got {value!r}")
    return text.rstrip("/")


def optional_http_url(value: str) -> str:
    return http_url(value) if value.strip() else ""


# Quoted in bd queries (jobs/protocol.py), so `@` and `.` are safe; kept to one plain token
# so a typo with spaces or quotes is caught before anything runs.
ASSIGNEE_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]*$")
# bd's query language reads these assignee values as "unassigned".
_UNASSIGNED_WORDS = frozenset({"none", "null"})


def assignee_name(value: str) -> str:
    if value.lower() in _UNASSIGNED_WORDS:
        raise ValueError(f"must name a user; bd reads {value!r} as 'unassigned'")
    if not ASSIGNEE_PATTERN.fullmatch(value):
        raise ValueError(
            f"must be one word of letters, digits and . _ @ - (a bd assignee), got {value!r}"
        )
    return value


HttpUrl = Annotated[str, AfterValidator(http_url)]
OptionalHttpUrl = Annotated[str, AfterValidator(optional_http_url)]
Assignee = Annotated[str, AfterValidator(assignee_name)]


def env_name(field_name: str) -> str:
    """The env var (and runtime ConfigMap key) of a setting."""
    return field_name.upper()


def config_key(field_name: str) -> str:
    """The Pulumi config key of a setting."""
    return to_camel(field_name)


class RuntimeSettings(BaseModel):
    """Set per stack (`pulumi config set <key>`), delivered by the runtime ConfigMap."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", alias_generator=to_camel, populate_by_name=True
    )

    dispatcher_enabled: bool = Field(
        default=True,
        description="Kill switch for both jobs. false suspends both CronJobs, and a run that "
        "starts anyway (or a watch window already running) does nothing more.",
    )
    beadboard_url: HttpUrl = Field(
        default="http://beadboard.beads-server.svc.cluster.local",
        description="BeadBoard base URL (its /api/agent-status and /api/agent-dispatch).",
    )
    agent_assignee: Assignee = Field(
        default="agent", description="The sentinel assignee that hands a bead to the agent."
    )
    reaper_threshold_minutes: int = Field(
        default=30,
        ge=1,
        le=7 * 24 * 60,
        description="An agent bead in_progress with no activity (field change, note or "
        "comment) for longer than this is blocked.",
    )
    max_dispatch_attempts: int = Field(
        default=3, ge=1, le=100, description="Failed dispatches of one bead before it is blocked."
    )
    http_timeout_seconds: int = Field(
        default=10,
        ge=1,
        le=600,
        description="Time limit of each HTTP request (BeadBoard, agentHealthUrl), whole: "
        "from connecting to the last byte read.",
    )
    bd_timeout_seconds: int = Field(
        default=60,
        ge=1,
        le=3600,
        description="Timeout of each bd call; a hung bd is killed and the run fails cleanly.",
    )
    dispatcher_window_seconds: int = Field(
        default=0,
        ge=0,
        le=86400,
        description="How long one dispatcher run keeps polling; 0 = one pass (the original "
        "behaviour). Must fit in dispatcherDeadlineSeconds (window + poll interval + 30 s), "
        "which must stay below the schedule's interval.",
    )
    poll_interval_seconds: int = Field(
        default=1,
        ge=1,
        le=3600,
        description="Seconds between polls inside a window. An idle poll asks the database "
        "whether anything was written since bd last read (no process, no HTTP); bd reads "
        "after a write, on a run's first poll and at least every 60 s.",
    )
    change_detection: bool = Field(
        default=True,
        description="Between bd reads, and before reading again under the lock, ask the "
        "database whether anything was written (DOLT_HASHOF_DB() in server mode, the store's "
        "manifest in embedded mode). false: bd reads every poll, and again under the lock.",
    )
    agent_health_url: OptionalHttpUrl = Field(
        default="",
        description="claude-agent-service /health URL; set it to fill every free agent slot "
        "per poll. Empty: one slot, through BeadBoard's busy flag.",
    )
    max_in_flight: int = Field(
        default=10,
        ge=1,
        le=1000,
        description="With agentHealthUrl: at most this many agent jobs running or queued at once.",
    )

    def as_env(self) -> dict[str, str]:
        """These settings as the runtime ConfigMap carries them: env name -> text."""
        return {
            env_name(name): _env_text(getattr(self, name)) for name in RuntimeSettings.model_fields
        }


# The pod mounts an emptyDir at /tmp: the one writable path bd needs.
POD_BEADS_DB = Path("/tmp/.beads")  # noqa: S108


class JobSettings(RuntimeSettings):
    """Everything a dispatch or reap run reads: the stack's knobs plus what the pod spec sets."""

    bd_bin: str = Field(default="bd", min_length=1, description="bd executable.")
    beads_db: Path = Field(
        default=POD_BEADS_DB,
        description="Beads dir, an absolute path that must exist (unless BEADS_METADATA_FILE "
        "is set). Read by bd's own rules: a dir without metadata.json names the `.beads` "
        "beside or above it, and the jobs lock and run `bd --db` on that one.",
    )
    beads_metadata_file: Path | None = Field(
        default=None,
        description="Copied to BEADS_DB/metadata.json first, BEADS_DB made if missing "
        "(ConfigMap mounts are read-only). Server mode as bd reads it (any case of "
        '`"dolt_mode": "server"`, or the `BEADS_DOLT_*` env) makes the dispatch lock a Dolt '
        "named lock, otherwise a flock on beads-autodispatch.lock in the beads dir.",
    )
    cronjob_name: str = Field(
        default="",
        max_length=52,
        pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?)?$",
        description="The CronJob this run belongs to; every note the run writes on a bead is "
        "signed with it. Empty: beads-dispatcher or beads-reaper, the default instance's.",
    )
    runtime_config_dir: Path | None = Field(
        default=None,
        description="The runtime ConfigMap mounted as files; DISPATCHER_ENABLED is re-read "
        "from it on every poll and before every POST, so the kill switch reaches a running "
        "watch window.",
    )


ModelT = TypeVar("ModelT", bound=BaseModel)


def _env_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def validate_settings(
    model: type[ModelT], raw: Mapping[str, Any], label: Mapping[str, str]
) -> ModelT:
    """Validate raw values keyed by field name; ConfigError names the first bad setting.

    `label` maps a field name to what the user typed (an env var, a config key).
    """
    cleaned = {k: v.strip() if isinstance(v, str) else v for k, v in raw.items()}
    try:
        return model.model_validate(cleaned)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, label)) from None


def describe_validation_error(exc: ValidationError, label: Mapping[str, str]) -> str:
    """One line: the user-facing name of the first bad field and what is wrong."""
    first = exc.errors()[0]
    field = str(first["loc"][0]) if first["loc"] else "?"
    message = str(first["msg"])
    # pydantic prefixes messages raised from our validators with "Value error, ".
    message = message.removeprefix("Value error, ")
    got = first.get("input")
    suffix = "" if "got " in message or got is None else f", got {got!r}"
    return f"{label.get(field, field)} {message}{suffix}"


def load_settings(environ: Mapping[str, str]) -> JobSettings:
    """JobSettings from env; unset or blank variables take the defaults.

    Raises ConfigError naming the first offending variable.
    """
    names = {name: env_name(name) for name in JobSettings.model_fields}
    raw = {
        name: value
        for name, variable in names.items()
        if (value := environ.get(variable)) is not None and value.strip()
    }
    return validate_settings(JobSettings, raw, names)
