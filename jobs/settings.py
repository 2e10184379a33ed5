"""The jobs' environment contract: one validated model, read once per run.

The env var names below are the single source of truth: the Pulumi component
imports them to build the pod spec, so the two halves cannot drift apart.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
)

BEADBOARD_URL = "BEADBOARD_URL"
BD_BIN = "BD_BIN"
BEADS_DB = "BEADS_DB"
BEADS_METADATA_FILE = "BEADS_METADATA_FILE"
AGENT_ASSIGNEE = "AGENT_ASSIGNEE"
REAPER_THRESHOLD_MINUTES = "REAPER_THRESHOLD_MINUTES"
DISPATCH_MAX_ATTEMPTS = "DISPATCH_MAX_ATTEMPTS"
AUTODISPATCH_ENABLED = "AUTODISPATCH_ENABLED"
HTTP_TIMEOUT_SECONDS = "HTTP_TIMEOUT_SECONDS"
BD_TIMEOUT_SECONDS = "BD_TIMEOUT_SECONDS"
DISPATCH_WINDOW_SECONDS = "DISPATCH_WINDOW_SECONDS"
POLL_INTERVAL_SECONDS = "POLL_INTERVAL_SECONDS"
AGENT_HEALTH_URL = "AGENT_HEALTH_URL"
MAX_IN_FLIGHT = "MAX_IN_FLIGHT"
# A directory holding the runtime ConfigMap as files, re-read on every poll (kill switch).
AUTODISPATCH_RUNTIME_DIR = "AUTODISPATCH_RUNTIME_DIR"
# Tests and demos only: run as if the time now were this RFC 3339 instant.
AUTODISPATCH_NOW = "AUTODISPATCH_NOW"

DEFAULT_BD_BIN = "bd"
# The pod mounts an emptyDir at /tmp: the one writable path bd needs.
DEFAULT_BEADS_DB = "/tmp/.beads"  # noqa: S108
DEFAULT_AGENT_ASSIGNEE = "agent"
DEFAULT_REAPER_THRESHOLD_MINUTES = 30
DEFAULT_DISPATCH_MAX_ATTEMPTS = 3
DEFAULT_HTTP_TIMEOUT_SECONDS = 10.0
DEFAULT_BD_TIMEOUT_SECONDS = 60.0
DEFAULT_DISPATCH_WINDOW_SECONDS = 0
DEFAULT_POLL_INTERVAL_SECONDS = 10
DEFAULT_MAX_IN_FLIGHT = 10

# Quoted in bd queries (jobs/protocol.py), so `@` and `.` are safe; kept to one plain token
# so a typo with spaces or quotes is caught at deploy time.
ASSIGNEE_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]*$")
_TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
_FALSE_WORDS = frozenset({"0", "false", "no", "off"})


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


def parse_bool(value: str) -> bool:
    word = value.strip().lower()
    if word in _TRUE_WORDS:
        return True
    if word in _FALSE_WORDS:
        return False
    raise ValueError(f"must be true or false, got {value!r}")


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
Assignee = Annotated[str, AfterValidator(assignee_name)]


class Settings(BaseModel):
    """Everything a dispatch or reap run needs to know, validated at the edge."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    beadboard_url: HttpUrl | None = None
    bd_bin: str = Field(default=DEFAULT_BD_BIN, min_length=1)
    beads_db: Path = Path(DEFAULT_BEADS_DB)
    beads_metadata_file: Path | None = None
    agent_assignee: Assignee = DEFAULT_AGENT_ASSIGNEE
    reaper_threshold_minutes: int = Field(default=DEFAULT_REAPER_THRESHOLD_MINUTES, gt=0)
    dispatch_max_attempts: int = Field(default=DEFAULT_DISPATCH_MAX_ATTEMPTS, ge=1, le=100)
    enabled: bool = True
    http_timeout_seconds: float = Field(default=DEFAULT_HTTP_TIMEOUT_SECONDS, gt=0, le=600)
    bd_timeout_seconds: float = Field(default=DEFAULT_BD_TIMEOUT_SECONDS, gt=0, le=3600)
    dispatch_window_seconds: int = Field(default=DEFAULT_DISPATCH_WINDOW_SECONDS, ge=0, le=86400)
    poll_interval_seconds: float = Field(default=DEFAULT_POLL_INTERVAL_SECONDS, gt=0, le=3600)
    agent_health_url: HttpUrl | None = None
    max_in_flight: int = Field(default=DEFAULT_MAX_IN_FLIGHT, ge=1, le=1000)
    runtime_dir: Path | None = None
    now_override: AwareDatetime | None = None


# field name -> env var name; the order is the order errors are reported in.
ENV_FIELDS: dict[str, str] = {
    "beadboard_url": BEADBOARD_URL,
    "bd_bin": BD_BIN,
    "beads_db": BEADS_DB,
    "beads_metadata_file": BEADS_METADATA_FILE,
    "agent_assignee": AGENT_ASSIGNEE,
    "reaper_threshold_minutes": REAPER_THRESHOLD_MINUTES,
    "dispatch_max_attempts": DISPATCH_MAX_ATTEMPTS,
    "enabled": AUTODISPATCH_ENABLED,
    "http_timeout_seconds": HTTP_TIMEOUT_SECONDS,
    "bd_timeout_seconds": BD_TIMEOUT_SECONDS,
    "dispatch_window_seconds": DISPATCH_WINDOW_SECONDS,
    "poll_interval_seconds": POLL_INTERVAL_SECONDS,
    "agent_health_url": AGENT_HEALTH_URL,
    "max_in_flight": MAX_IN_FLIGHT,
    "runtime_dir": AUTODISPATCH_RUNTIME_DIR,
    "now_override": AUTODISPATCH_NOW,
}


def load_settings(environ: Mapping[str, str]) -> Settings:
    """Build Settings from env; unset or blank variables take the defaults.

    Raises ConfigError naming the first offending variable.
    """
    raw: dict[str, object] = {}
    for field, env_name in ENV_FIELDS.items():
        value = environ.get(env_name)
        if value is None or not value.strip():
            continue
        if field == "enabled":
            try:
                raw[field] = parse_bool(value)
            except ValueError as exc:
                raise ConfigError(f"{env_name} {exc}") from None
        else:
            raw[field] = value.strip()
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, ENV_FIELDS)) from None


def describe_validation_error(exc: ValidationError, names: Mapping[str, str]) -> str:
    """One line: the user-facing name of the first bad field and what is wrong."""
    first = exc.errors()[0]
    field = str(first["loc"][0]) if first["loc"] else "?"
    message = str(first["msg"])
    # pydantic prefixes messages raised from our validators with "Value error, ".
    message = message.removeprefix("Value error, ")
    got = first.get("input")
    suffix = "" if "got " in message or got is None else f", got {got!r}"
    return f"{names.get(field, field)} {message}{suffix}"


def require_beadboard_url(settings: Settings) -> str:
    if settings.beadboard_url is None:
        raise ConfigError(f"{BEADBOARD_URL} is required for dispatch (e.g. http://beadboard)")
    return settings.beadboard_url
