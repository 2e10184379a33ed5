"""The jobs' environment contract and the stack config: defaults, and one clear line per mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from components.config import ConfigError as StackConfigError
from components.config import settings_from_strings
from components.cron import CronError, parse_schedule
from jobs.settings import ConfigError, load_settings


def test_defaults_match_the_documented_contract() -> None:
    settings = load_settings({})
    assert settings.beadboard_url is None
    assert settings.bd_bin == "bd"
    assert settings.beads_db == Path("/tmp/.beads")
    assert settings.beads_metadata_file is None
    assert settings.agent_assignee == "agent"
    assert settings.reaper_threshold_minutes == 30
    assert settings.dispatch_max_attempts == 3
    assert settings.enabled is True
    assert settings.http_timeout_seconds == 10


def test_values_are_read_and_normalised() -> None:
    settings = load_settings(
        {
            "BEADBOARD_URL": " http://beadboard.beads-server.svc.cluster.local/ ",
            "AUTODISPATCH_ENABLED": "FALSE",
            "REAPER_THRESHOLD_MINUTES": "45",
            "BEADS_METADATA_FILE": "/etc/bd/metadata.json",
        }
    )
    assert settings.beadboard_url == "http://beadboard.beads-server.svc.cluster.local"
    assert settings.enabled is False
    assert settings.reaper_threshold_minutes == 45
    assert settings.beads_metadata_file == Path("/etc/bd/metadata.json")


@pytest.mark.parametrize(
    ("env", "starts"),
    [
        ({"BEADBOARD_URL": "ftp://x"}, "BEADBOARD_URL must be an http"),
        (
            {"REAPER_THRESHOLD_MINUTES": "0"},
            "REAPER_THRESHOLD_MINUTES Input should be greater than 0",
        ),
        ({"DISPATCH_MAX_ATTEMPTS": "1.5"}, "DISPATCH_MAX_ATTEMPTS"),
        ({"AGENT_ASSIGNEE": "a=b"}, "AGENT_ASSIGNEE must be one word"),
        ({"AGENT_ASSIGNEE": 'agent"'}, "AGENT_ASSIGNEE must be one word"),
        # bd's query language reads these as "no assignee": every unassigned bead would match.
        ({"AGENT_ASSIGNEE": "none"}, "AGENT_ASSIGNEE must name a user"),
        ({"AGENT_ASSIGNEE": "Null"}, "AGENT_ASSIGNEE must name a user"),
        ({"AUTODISPATCH_ENABLED": "2"}, "AUTODISPATCH_ENABLED must be true or false"),
        ({"AUTODISPATCH_NOW": "yesterday"}, "AUTODISPATCH_NOW"),
        ({"AUTODISPATCH_NOW": "2026-01-01T00:00:00"}, "AUTODISPATCH_NOW"),
    ],
)
def test_bad_env_names_the_variable(env: dict[str, str], starts: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(env)
    assert str(caught.value).startswith(starts)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("name", ["agent", "bot@corp.example", "claude.agent-2", "nonevent"])
def test_an_assignee_may_be_any_plain_bd_user_name(name: str) -> None:
    # Quoted in bd queries, so `@` and `.` are safe.
    assert load_settings({"AGENT_ASSIGNEE": name}).agent_assignee == name


def test_stack_config_strings_are_typed_and_validated() -> None:
    settings = settings_from_strings({"doltPort": "3307", "dispatcherEnabled": "false"})
    assert settings.dolt_port == 3307
    assert settings.dispatcher_enabled is False
    with pytest.raises(StackConfigError, match="unknown config key 'dispatcherEnabeld'"):
        settings_from_strings({"dispatcherEnabeld": "false"})


@pytest.mark.parametrize(
    ("expression", "per_day", "interval"),
    [
        ("*/2 * * * *", 720, 2),
        ("*/10 * * * *", 144, 10),
        ("*/15 8-17 * * MON-FRI", 40, 15),
        ("0,30 * * * *", 48, 30),
        ("@hourly", 24, 60),
        ("5/20 * * * *", 72, 20),
    ],
)
def test_cron_runs_per_day(expression: str, per_day: int, interval: int) -> None:
    schedule = parse_schedule(expression)
    assert schedule.runs_per_day() == per_day
    assert schedule.min_interval_minutes() == interval


@pytest.mark.parametrize(
    "expression",
    [
        "",
        "* * * *",
        "* * * * * *",
        "60 * * * *",
        "* 24 * * *",
        "* * 0 * *",
        "* * * 13 *",
        "* * * * 8",
        "5-1 * * * *",
        "*/0 * * * *",
        "@every 5m",
        "a * * * *",
        "? * * * *",
        "1,,2 * * * *",
        "CRON_TZ=UTC * * * * *",
    ],
)
def test_cron_rejects(expression: str) -> None:
    with pytest.raises(CronError):
        parse_schedule(expression)
