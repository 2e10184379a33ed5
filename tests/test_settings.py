"""The jobs' environment and the stack config: defaults, one clear line per mistake, and the
spellings of a setting that are derived from its field (env var, config key)."""

from __future__ import annotations

from pathlib import Path

import pytest

from components.config import CONFIG_KEYS, settings_from
from components.cron import CronError, parse_schedule
from jobs.settings import ConfigError, RuntimeSettings, config_key, env_name, load_settings


def test_defaults_match_the_documented_contract() -> None:
    settings = load_settings({})
    assert settings.dispatcher_enabled is True
    assert settings.beadboard_url == "http://beadboard.beads-server.svc.cluster.local"
    assert settings.agent_assignee == "agent"
    assert settings.reaper_threshold_minutes == 30
    assert settings.max_dispatch_attempts == 3
    assert (settings.http_timeout_seconds, settings.bd_timeout_seconds) == (10, 60)
    assert (settings.dispatcher_window_seconds, settings.poll_interval_seconds) == (0, 1)
    assert (settings.agent_health_url, settings.max_in_flight) == ("", 10)
    assert settings.bd_bin == "bd"
    assert settings.beads_db == Path("/tmp/.beads")
    assert settings.beads_metadata_file is None
    assert settings.runtime_config_dir is None


# (env var, as set, field, as read)
READ_AND_NORMALISED: list[tuple[str, str, str, object]] = [
    (
        "BEADBOARD_URL",
        " http://beadboard.beads-server.svc.cluster.local/ ",
        "beadboard_url",
        "http://beadboard.beads-server.svc.cluster.local",
    ),
    ("DISPATCHER_ENABLED", "FALSE", "dispatcher_enabled", False),
    ("REAPER_THRESHOLD_MINUTES", "45", "reaper_threshold_minutes", 45),
    ("MAX_DISPATCH_ATTEMPTS", " 5 ", "max_dispatch_attempts", 5),
    (
        "BEADS_METADATA_FILE",
        "/etc/bd/metadata.json",
        "beads_metadata_file",
        Path("/etc/bd/metadata.json"),
    ),
    (
        "RUNTIME_CONFIG_DIR",
        "/etc/beads-autodispatch/runtime",
        "runtime_config_dir",
        Path("/etc/beads-autodispatch/runtime"),
    ),
    # Blank is unset: the default stands.
    ("POLL_INTERVAL_SECONDS", "  ", "poll_interval_seconds", 1),
]


@pytest.mark.parametrize(
    ("name", "value", "field", "expected"),
    READ_AND_NORMALISED,
    ids=[row[0] for row in READ_AND_NORMALISED],
)
def test_values_are_read_and_normalised(
    name: str, value: str, field: str, expected: object
) -> None:
    assert getattr(load_settings({name: value}), field) == expected


@pytest.mark.parametrize(
    ("env", "starts"),
    [
        ({"BEADBOARD_URL": "ftp://x"}, "BEADBOARD_URL must be an http:// or https:// URL"),
        ({"BEADBOARD_URL": "http://bb:99999"}, "BEADBOARD_URL must be an http:// or https:// URL"),
        ({"AGENT_HEALTH_URL": "agent:8080/health"}, "AGENT_HEALTH_URL must be an http"),
        (
            {"REAPER_THRESHOLD_MINUTES": "0"},
            "REAPER_THRESHOLD_MINUTES Input should be greater than or equal to 1, got '0'",
        ),
        ({"MAX_DISPATCH_ATTEMPTS": "1.5"}, "MAX_DISPATCH_ATTEMPTS Input should be a valid integer"),
        ({"MAX_IN_FLIGHT": "1001"}, "MAX_IN_FLIGHT Input should be less than or equal to 1000"),
        ({"AGENT_ASSIGNEE": "a=b"}, "AGENT_ASSIGNEE must be one word"),
        ({"AGENT_ASSIGNEE": 'agent"'}, "AGENT_ASSIGNEE must be one word"),
        # bd's query language reads these as "no assignee": every unassigned bead would match.
        ({"AGENT_ASSIGNEE": "none"}, "AGENT_ASSIGNEE must name a user"),
        ({"AGENT_ASSIGNEE": "Null"}, "AGENT_ASSIGNEE must name a user"),
        ({"DISPATCHER_ENABLED": "2"}, "DISPATCHER_ENABLED Input should be a valid boolean"),
        # Several bad: the first declared is named.
        ({"MAX_IN_FLIGHT": "x", "AGENT_ASSIGNEE": "none"}, "AGENT_ASSIGNEE must name a user"),
    ],
)
def test_bad_env_names_the_variable(env: dict[str, str], starts: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(env)
    assert str(caught.value).startswith(starts), str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("name", ["agent", "bot@corp.example", "claude.agent-2", "nonevent"])
def test_an_assignee_may_be_any_plain_bd_user_name(name: str) -> None:
    # Quoted in bd queries, so `@` and `.` are safe.
    assert load_settings({"AGENT_ASSIGNEE": name}).agent_assignee == name


def test_a_setting_is_spelled_from_its_field() -> None:
    assert env_name("max_dispatch_attempts") == "MAX_DISPATCH_ATTEMPTS"
    assert config_key("max_dispatch_attempts") == "maxDispatchAttempts"
    by_name = {key.name: key for key in CONFIG_KEYS}
    attempts = by_name["maxDispatchAttempts"]
    assert (attempts.field, attempts.type, attempts.default) == (
        "max_dispatch_attempts",
        "integer",
        3,
    )
    assert attempts.env == "MAX_DISPATCH_ATTEMPTS"
    assert attempts.description == "Failed dispatches of one bead before it is blocked."
    # Runtime knobs reach the jobs through the env; deploy-only keys have no env var.
    assert {key.field for key in CONFIG_KEYS if key.env} == set(RuntimeSettings.model_fields)
    assert (by_name["namespace"].env, by_name["doltTls"].type) == (None, "boolean")


def test_the_runtime_configmap_reads_back_as_the_stack_set_it() -> None:
    stack = settings_from(
        {"dispatcherEnabled": "false", "maxInFlight": "7", "agentAssignee": "bot"}
    )
    carried = stack.as_env()
    assert carried["DISPATCHER_ENABLED"] == "false"
    assert set(carried) == {env_name(field) for field in RuntimeSettings.model_fields}
    loaded = load_settings(carried)
    assert (loaded.dispatcher_enabled, loaded.max_in_flight, loaded.agent_assignee) == (
        False,
        7,
        "bot",
    )


def test_stack_config_strings_are_typed_and_validated() -> None:
    settings = settings_from({"doltPort": "3307", "dispatcherEnabled": "false"})
    assert settings.dolt_port == 3307
    assert settings.dispatcher_enabled is False
    with pytest.raises(ConfigError, match="unknown config key 'dispatcherEnabeld'"):
        settings_from({"dispatcherEnabeld": "false"})
    with pytest.raises(ConfigError, match=r"^config key 'doltPort': Input should be less than"):
        settings_from({"doltPort": "70000"})


@pytest.mark.parametrize(
    ("config", "named"),
    [
        ({"dispatcherSchedule": "*/2 * * * *", "dispatcherDeadlineSeconds": "120"}, "Deadline"),
        (
            {"dispatcherWindowSeconds": "90", "pollIntervalSeconds": "10"},
            "dispatcherWindowSeconds': a 90 s window needs dispatcherDeadlineSeconds of at least "
            "130 s",
        ),
    ],
    ids=["deadline-past-the-interval", "window-past-the-deadline"],
)
def test_a_run_must_end_before_the_next_is_due(config: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        settings_from(config)
    assert named in str(caught.value)


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
    ("expression", "days"),
    [
        ("0 0 1 * MON", 7),  # both day fields restricted: the 1st or a Monday, whichever first
        ("0 0 1 * *", 31),  # the 1st alone
        ("0 0 * * MON", 7),
        ("0 0 */2 * *", 2),  # `*/2` restricts: odd days of the month only, 31st -> 1st too
        ("0 0 29 2 *", 4 * 365 + 1),  # leap days only
        ("0 0 1 1,7 *", 184),  # 1 July to 1 January
    ],
)
def test_cron_longest_gap_counts_the_days_a_schedule_skips(expression: str, days: int) -> None:
    assert parse_schedule(expression).longest_gap_minutes() == days * 24 * 60


@pytest.mark.parametrize("expression", ["0 0 30 2 *", "0 0 31 4,6,9,11 *"])
def test_cron_rejects_a_schedule_that_never_runs(expression: str) -> None:
    with pytest.raises(CronError, match="never runs"):
        parse_schedule(expression)


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
